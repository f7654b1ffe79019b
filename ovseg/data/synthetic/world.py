"""Write a synthetic world to disk: caption shards, segmentation shards, a VOC-layout val split, a manifest.

Layout (``out_dir``)::

    train/shard-000000.tar ...   img2dataset layout: {key}.jpg, {key}.txt (caption),
                                 {key}.json {"key", "caption", "status": "success", "width", "height"}
                                 -- never a mask or any object information: masks must not reach the
                                 caption-training path
    seg/shard-000000.tar ...     segmentation shards (``segmentation/shards.py`` format), a separate draw
    val/VOCdevkit/VOC2012/{JPEGImages/*.jpg, SegmentationClass/*.png, ImageSets/Segmentation/val.txt}
    val/class_names.txt          background first; read by ``build_benchmark("synthetic", out_dir/"val")``
    manifest.json                seed, parameters, class list and styles, per-split counts, per-class pixel
                                 frequencies, foreground fraction, a few example captions
    ovseg-world.json             the files the generator wrote (itself included): what ``overwrite`` may delete

Val labels are VOC palette PNGs with 0 = background and i = class i. Unlike VOC there is no 255 band at
object boundaries: the masks are exact, so no pixel needs to be excused.

The whole world is built in a temporary sibling folder and renamed into place at the end, so a
half-written world never appears under ``out_dir``. The bytes depend only on the seed and the
parameters (tar headers fixed, images drawn per index), not on ``num_workers``.

``overwrite`` replaces only an earlier world: a folder whose ``ovseg-world.json`` is present and valid. It
deletes the files listed there and nothing else; what else the folder holds (a text cache, a user's file)
stays, and the new world's files are moved in beside it. Any other non-empty folder is refused untouched.

Where a config's world lives also belongs here (``synthetic_root``, ``world_config``,
``ensure_synthetic_world``): the trainer, the Ray/Flower integrations and the platform scripts all find and,
on first use, generate the same world from ``cfg.data.synthetic_*`` without importing each other.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import multiprocessing
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np

from ovseg.data.codecs import encode_jpeg, encode_label_png
from ovseg.data.segmentation.shards import SegSample, write_seg_shards
from ovseg.data.shardio import atomic_write_bytes, write_tar
from ovseg.data.synthetic.scene import UNSEEN_NAMES, Scene, SyntheticConfig, render_scene
from ovseg.data.synthetic.shapes import CLASS_STYLES

FORMAT = "ovseg-synthetic-world/1"
WRITTEN = "ovseg-world.json"  # the list of files the generator wrote, so overwrite deletes only those
WRITTEN_FORMAT = "ovseg-world-files/1"


def _render(job: tuple[SyntheticConfig, int, str, int]) -> tuple[Scene, bytes]:
    cfg, seed, split, index = job
    scene = render_scene(cfg, seed, split, index)
    return scene, encode_jpeg(scene.image, cfg.jpeg_quality)


def _scenes(cfg: SyntheticConfig, seed: int, split: str, count: int, pool) -> Iterator[tuple[Scene, bytes]]:
    jobs = ((cfg, seed, split, i) for i in range(count))
    # imap keeps index order, so the output does not depend on the number of workers.
    return pool.imap(_render, jobs, chunksize=64) if pool is not None else map(_render, jobs)


class _Stats:
    """Per-split pixel and object counts for the manifest."""

    def __init__(self, num_classes: int):
        self.pixels = np.zeros(num_classes + 1, dtype=np.int64)
        self.objects = np.zeros(num_classes, dtype=np.int64)
        self.images = self.unmentioned = 0

    def add(self, scene: Scene) -> None:
        self.pixels += np.bincount(scene.label.ravel(), minlength=len(self.pixels))
        self.objects += np.bincount(scene.object_classes, minlength=len(self.objects)).astype(np.int64)
        self.images += 1
        self.unmentioned += int(scene.unmentioned)

    def summary(self, names: list[str], shards: int) -> dict:
        total = max(int(self.pixels.sum()), 1)
        return {"images": self.images, "shards": shards,
                "objects_per_class": dict(zip(names[1:], self.objects.tolist())),
                "pixel_frequency": {n: round(float(p) / total, 6) for n, p in zip(names, self.pixels)},
                "foreground_fraction": round(1 - float(self.pixels[0]) / total, 6),
                "captions_with_unmentioned_object": self.unmentioned}


def _write_train(out: Path, cfg, seed, count, shard_size, pool, stats: _Stats, examples: list[str]) -> int:
    members, shards = [], 0
    for index, (scene, jpeg) in enumerate(_scenes(cfg, seed, "train", count, pool)):
        key = f"{index:09d}"
        meta = {"key": key, "caption": scene.caption, "status": "success",
                "width": cfg.image_size, "height": cfg.image_size}
        members += [(f"{key}.jpg", jpeg), (f"{key}.txt", scene.caption.encode()),
                    (f"{key}.json", json.dumps(meta, sort_keys=True).encode())]
        stats.add(scene)
        if len(examples) < 8:
            examples.append(scene.caption)
        if (index + 1) % shard_size == 0 or index + 1 == count:
            write_tar(out / "train" / f"shard-{shards:06d}.tar", members)
            members, shards = [], shards + 1
    return shards


def _write_val(out: Path, cfg, seed, count, pool, stats: _Stats, names: list[str]) -> None:
    base = out / "val" / "VOCdevkit" / "VOC2012"
    ids = []
    for index, (scene, jpeg) in enumerate(_scenes(cfg, seed, "val", count, pool)):
        sample_id = f"{index:06d}"
        atomic_write_bytes(base / "JPEGImages" / f"{sample_id}.jpg", jpeg)
        atomic_write_bytes(base / "SegmentationClass" / f"{sample_id}.png", encode_label_png(scene.label, palette=True))
        stats.add(scene)
        ids.append(sample_id)
    atomic_write_bytes(base / "ImageSets" / "Segmentation" / "val.txt", ("\n".join(ids) + "\n").encode())
    atomic_write_bytes(out / "val" / "class_names.txt", ("\n".join(names) + "\n").encode())


def generate_world(out_dir: str | Path, seed: int = 0, num_train: int = 10000, num_val: int = 500,
                   num_seg: int = 0, config: SyntheticConfig | None = None, shard_size: int = 1000,
                   num_workers: int = 1, overwrite: bool = False) -> dict:
    """Generate a world into ``out_dir``; return its manifest. See the module docstring for the layout."""
    cfg = config or SyntheticConfig()
    if min(num_train, num_val, num_seg) < 0 or num_train + num_val + num_seg == 0:
        raise ValueError(f"image counts must be >= 0 and not all 0, got {num_train}, {num_val}, {num_seg}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    out = Path(os.path.abspath(out_dir))  # "." and ".." get a name and a parent
    owned = _owned_files(out, overwrite)  # checked before any work: a refused folder costs nothing
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))  # ours alone, removed below
    names = ["background", *cfg.classes]
    splits, examples = {}, []
    pool = multiprocessing.get_context("fork").Pool(num_workers) if num_workers > 1 else None
    try:
        if num_train:
            stats = _Stats(len(cfg.classes))
            shards = _write_train(tmp, cfg, seed, num_train, shard_size, pool, stats, examples)
            splits["train"] = stats.summary(names, shards)
        if num_seg:
            stats = _Stats(len(cfg.classes))

            def seg_samples():
                for index, (scene, jpeg) in enumerate(_scenes(cfg, seed, "seg", num_seg, pool)):
                    stats.add(scene)
                    yield SegSample(key=f"{index:09d}", label=scene.label, class_names=names, image_bytes=jpeg)
            shards = len(write_seg_shards(seg_samples(), tmp / "seg", shard_size))
            splits["seg"] = stats.summary(names, shards)
        if num_val:
            stats = _Stats(len(cfg.classes))
            _write_val(tmp, cfg, seed, num_val, pool, stats, names)
            splits["val"] = stats.summary(names, 0)
        manifest = {"format": FORMAT, "seed": seed,
                    "config": {**dataclasses.asdict(cfg), "classes": list(cfg.classes)}, "classes": names,
                    "class_styles": {c: list(CLASS_STYLES[c]) for c in cfg.classes}, "splits": splits,
                    "unseen_names": {c: UNSEEN_NAMES[c] for c in cfg.classes if c in UNSEEN_NAMES},
                    "example_captions": examples}
        atomic_write_bytes(tmp / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True).encode())
        files = sorted({p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file()} | {WRITTEN})
        atomic_write_bytes(tmp / WRITTEN, json.dumps({"format": WRITTEN_FORMAT, "files": files}, indent=1).encode())
        _put_in_place(tmp, out, owned, files)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


# ------------------------------------------------------------------ replacing only what the generator wrote


def _owned_files(out: Path, overwrite: bool) -> set[str]:
    """The files of ``out`` that an overwrite may delete: none for a missing or empty folder, else those its
    ``ovseg-world.json`` lists; a folder that is not an earlier world raises FileExistsError, untouched."""
    if not out.exists():
        return set()
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if not any(out.iterdir()):
        return set()
    if not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True (--overwrite) to replace "
                              "an earlier synthetic world there")
    record = out / WRITTEN
    try:
        data = json.loads(record.read_text())
        files = data["files"]
        ok = data.get("format") == WRITTEN_FORMAT and isinstance(files, list) and WRITTEN in files
        ok = ok and all(isinstance(f, str) and _inside(out, f) for f in files)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise FileExistsError(f"{out} is not empty and holds no valid {WRITTEN} (the list of files a synthetic "
                              "world's generator wrote), so --overwrite deletes nothing there: choose an empty "
                              "or new folder")
    return set(files)


def _inside(out: Path, rel: str) -> bool:
    """``rel`` names a file below ``out``: relative, no ``..``, no symbolic link on the way out of ``out``."""
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or ".." in parts or "." in parts:
        return False
    return (out / rel).parent.resolve() == out.resolve().joinpath(*parts[:-1])


def _put_in_place(tmp: Path, out: Path, owned: set[str], files: list[str]) -> None:
    """Delete the files of the earlier world (``owned``), then move the new one (``tmp``) into ``out``."""
    for rel in files:  # a new file may replace an old one of ours, never anything else
        folder = (out / rel).parent
        clash = (rel not in owned and os.path.lexists(out / rel)) or not _inside(out, rel) or \
            (os.path.lexists(folder) and not folder.is_dir())
        if clash:
            raise FileExistsError(f"{out / rel} is in the way: {out} holds something there that the world "
                                  "generator did not write; nothing was deleted")
    for rel in sorted(owned):
        path = out / rel
        if path.is_symlink() or path.is_file():
            path.unlink()
    for rel in sorted(owned, key=lambda r: -len(PurePosixPath(r).parts)):  # emptied folders, deepest first
        for parent in PurePosixPath(rel).parents[:-1]:
            folder = out / parent
            if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
                folder.rmdir()
    if out.exists() and not out.is_symlink() and not any(out.iterdir()) and not out.samefile(Path.cwd()):
        out.rmdir()
    if not out.exists():
        os.replace(tmp, out)
        return
    # out keeps files of its own (or is the working folder): move the new files in beside them, the file
    # list first (it lists all of them: an interrupted move stays replaceable), the manifest last
    order = [WRITTEN, *(f for f in files if f not in (WRITTEN, "manifest.json")), "manifest.json"]
    for rel in order:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / rel, out / rel)


# ------------------------------------------------------------------ where a config's world lives


def synthetic_root(cfg) -> Path:
    d = cfg.data
    if d.synthetic_dir:
        return Path(d.synthetic_dir).expanduser()
    size = cfg.model.vision.img_size
    name = f"seed{d.synthetic_seed}-{size}px-{d.synthetic_train}-{d.synthetic_val}-{d.synthetic_seg}"
    if d.synthetic_background != "cluttered":
        name += f"-{d.synthetic_background}"
    if (d.synthetic_min_scale, d.synthetic_max_scale, d.synthetic_max_objects) != (0.3, 0.6, 4):
        name += f"-scale{d.synthetic_min_scale:g}-{d.synthetic_max_scale:g}-obj{d.synthetic_max_objects}"
    return Path.home() / ".cache" / "ovseg" / "synthetic" / name


def world_config(cfg):
    """The synthetic world that ``cfg`` trains and evaluates on (``data.synthetic_*``)."""
    d = cfg.data
    return SyntheticConfig(image_size=cfg.model.vision.img_size, background=d.synthetic_background,
                           min_scale=d.synthetic_min_scale, max_scale=d.synthetic_max_scale,
                           max_objects=d.synthetic_max_objects)


def ensure_synthetic_world(cfg) -> Path:
    """Generate the embedded world on first use (atomic: a half-written world never appears).

    Processes that start together on a fresh machine (parallel trials, several local runs) would each generate
    the same world and all but the first would find the others' files in the way: the first takes an exclusive
    lock on ``.<name>.lock`` beside the world and generates it, the others wait on the lock and then find it.
    """
    root = synthetic_root(cfg)
    if (root / "manifest.json").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"[ovseg] waiting for another process generating the synthetic world into {root}", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "manifest.json").is_file():  # the process we waited for may have written it
            print(f"[ovseg] generating the synthetic world into {root} (first use)", flush=True)
            d = cfg.data
            generate_world(root, seed=d.synthetic_seed, num_train=d.synthetic_train, num_val=d.synthetic_val,
                           num_seg=d.synthetic_seg, config=world_config(cfg), num_workers=2,
                           overwrite=root.exists())
    return root
