"""Split a synthetic world into federated partner sites, non-IID (for simulations and local tests).

Some sites hold captions only (the world's ``train`` caption shards), some hold labelled masks only (its
``seg`` shards). Classes are skewed across the sites of each kind by a Dirichlet draw: for every class, a
share vector ~ Dir(alpha) over those sites, and each sample of that class goes to a site drawn from it
(small alpha = each site sees few classes; large alpha = nearly IID). A sample's class is its first named
class (captions) or its largest labelled class (masks). Segmentation sites keep ``val_fraction`` of their
samples as their own labelled split (``val/``), used by the evaluate action.

Output::

    out_dir/federation.json        sites, kinds, per-site per-class sample counts, the split parameters
    out_dir/site-00/site.json      {"kind": "caption" | "segmentation"}
    out_dir/site-00/captions/*.tar (caption sites)   or   seg/*.tar + val/*.tar (segmentation sites)

Members are copied byte for byte; every file is written atomically; the whole tree is built in a temporary
sibling folder and renamed into place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from ..data.shardio import atomic_write_bytes, read_tar, write_tar
from .kinds import KINDS


def _assign(labels: list[int | None], num_sites: int, num_classes: int, alpha: float,
            rng: np.random.Generator) -> list[int]:
    shares = rng.dirichlet([alpha] * num_sites, size=num_classes + 1)  # last row: samples with no class
    return [int(rng.choice(num_sites, p=shares[num_classes if c is None else c])) for c in labels]


def split_world(world: str | Path, out_dir: str | Path, kinds: list[str], *, alpha: float = 0.5, seed: int = 0,
                val_fraction: float = 0.1, shard_size: int = 1000, max_per_kind: int | None = None,
                overwrite: bool = False) -> dict:
    """Write one folder per site (see the module docstring); return the federation manifest."""
    world, out = Path(world), Path(out_dir)
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"site kinds must be a non-empty list of {tuple(KINDS)}, got {kinds}")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    manifest_path = world / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{world} is not a synthetic world (no manifest.json); make one with "
                                "platform/make_synthetic.py")
    classes = [c for c in json.loads(manifest_path.read_text())["classes"] if c != "background"]
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True (--overwrite)")
        earlier_split(out)  # refuses anything but what an earlier split wrote, before any work
    rng = np.random.default_rng(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))  # ours alone to delete
    sites = [{"name": f"site-{i:02d}", "kind": k} for i, k in enumerate(kinds)]
    try:
        for kind, spec in KINDS.items():
            split, classify = spec.world_split, spec.classify
            members_of = [i for i, s in enumerate(sites) if s["kind"] == kind]
            if not members_of:
                continue
            shards = sorted((world / split).glob("*.tar"))
            if not shards:
                raise FileNotFoundError(f"{world / split}: no shards for the {kind} sites")
            samples = [(key, [(name, data) for name, _, data in members])
                       for shard in shards for key, members in read_tar(str(shard))]
            if max_per_kind is not None:
                samples = samples[:max_per_kind]
            labels = [classify(m, classes) for _, m in samples]
            owner = _assign(labels, len(members_of), len(classes), alpha, rng)
            for j, site_index in enumerate(members_of):
                site = sites[site_index]
                mine = [(s, c) for s, c, o in zip(samples, labels, owner) if o == j]
                if not mine:
                    raise ValueError(f"{site['name']} ({kind}) received no samples: raise alpha or the number of "
                                     f"{kind} samples, or use fewer {kind} sites")
                folder = tmp / site["name"]
                n_val = int(round(len(mine) * val_fraction)) if spec.has_val else 0
                parts = {spec.train_dir: mine[n_val:], "val": mine[:n_val]}
                for sub, items in parts.items():
                    for start in range(0, len(items), shard_size):
                        chunk = items[start:start + shard_size]
                        write_tar(folder / sub / f"shard-{start // shard_size:06d}.tar",
                                  [m for (_, members), _ in chunk for m in members])
                counts = Counter(classes[c] if c is not None else "none" for _, c in mine[n_val:])
                site.update(train=len(mine) - n_val, val=n_val, classes=dict(sorted(counts.items())))
                atomic_write_bytes(folder / "site.json", json.dumps({"kind": kind}).encode())
        manifest = {"world": str(world.resolve()), "alpha": alpha, "seed": seed, "val_fraction": val_fraction,
                    "sites": sites}
        atomic_write_bytes(tmp / "federation.json", json.dumps(manifest, indent=2).encode())
        old = None
        if out.exists():
            if any(out.iterdir()):
                entries = earlier_split(out)  # checked again: the folder may have changed meanwhile
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
                for entry in entries:
                    os.replace(entry, old / entry.name)
            out.rmdir()  # empty now: what it held was the earlier split's
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def earlier_split(out: Path) -> list[Path]:
    """The entries of an earlier ``split_world`` in ``out`` (its federation.json and the site folders it lists),
    or a FileExistsError when ``out`` holds anything else: ``--overwrite`` replaces only what this command wrote."""
    fed = out / "federation.json"
    try:
        names = {str(s["name"]) for s in json.loads(fed.read_text())["sites"]}
    except (OSError, ValueError, KeyError, TypeError):
        raise FileExistsError(f"{out} is not empty and holds no federation.json written by make_sites: --overwrite "
                              f"replaces only an earlier split; nothing was deleted") from None
    if not all(re.fullmatch(r"site-\d+", n) for n in names):
        raise FileExistsError(f"{fed}: site names other than site-NN; nothing was deleted")
    other = sorted({p.name for p in out.iterdir()} - names - {"federation.json"})
    if other:
        raise FileExistsError(f"{out} holds {other[:3]} beside an earlier split: --overwrite replaces only what "
                              f"make_sites wrote; move them out first (nothing was deleted)")
    entries = [out / n for n in sorted(names) if (out / n).exists() or (out / n).is_symlink()]
    links = [e for e in entries if e.is_symlink() or not e.is_dir()]
    if links:
        raise FileExistsError(f"{links[0]} is not a site folder (a link or a file); nothing was deleted")
    return [*entries, fed]
