"""A partner site: its data folder and its round (the shared engine on its own shards).

``local_train`` runs ``fed.local_steps`` engine steps from the global weights on the site's shards, with the
loss terms its kind trains (``ovseg.federated.kinds``) and the FedProx term when mu > 0; ``site_evaluate``
scores the site's own labelled split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Config
from ..train.engine import train_steps
from ..train.schedule import build_optimizer
from ..train.task import PROXIMAL, Task, metric_names, proximal_term
from .exchange import exchange_keys, get_tensors
from .kinds import KINDS

SITE_FILE = "site.json"


# ---------------------------------------------------------------------------------------------- sites


@dataclass
class Site:
    """A partner's data folder: ``site.json`` ({"kind": ...}), ``captions/`` or ``seg/`` shards, optional
    ``val/`` segmentation shards (the site's own labelled split for the evaluate action)."""

    path: Path
    kind: str

    @classmethod
    def open(cls, path: str | Path, kind: str | None = None) -> "Site":
        path = Path(path).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"site data folder {path} does not exist (node config data-path)")
        meta_kind = None
        if (path / SITE_FILE).is_file():
            try:
                meta_kind = json.loads((path / SITE_FILE).read_text())["kind"]
            except (ValueError, KeyError) as e:
                raise ValueError(f"{path / SITE_FILE}: not a site description with a 'kind' ({e})") from None
        kind = kind or meta_kind
        if kind not in KINDS:
            raise ValueError(f"site {path}: data-kind must be one of {tuple(KINDS)}, got {kind!r}")
        if meta_kind and kind != meta_kind:
            raise ValueError(f"site {path}: node config says data-kind={kind} but {SITE_FILE} says {meta_kind}")
        site = cls(path, kind)
        if not site.train_shards():
            raise FileNotFoundError(f"site {path}: no training shards in {site.train_dir}/*.tar")
        return site

    @property
    def train_dir(self) -> Path:
        return self.path / KINDS[self.kind].train_dir

    def train_shards(self) -> list[str]:
        return sorted(str(p) for p in self.train_dir.glob("*.tar"))

    def val_shards(self) -> list[str]:
        return sorted(str(p) for p in (self.path / "val").glob("*.tar"))

def local_train(model: torch.nn.Module, cfg: Config, site: Site, *, steps: int, seed: int,
                proximal_mu: float = 0.0) -> dict[str, float]:
    """One round at a site: ``steps`` engine steps from the current (global) weights. Returns the mean of each
    reported metric, the example count and the skip count; the model is updated in place."""
    keys = exchange_keys(model, cfg)
    model.set_frozen_norms(cfg.fed.frozen_norms)
    optimizer = build_optimizer(model, cfg.fed.lr, cfg.train.weight_decay, fused=cfg.train.fused_adamw)
    batches, skipped = KINDS[site.kind].batches(cfg, model, site.train_shards(), seed)
    extra = (proximal_term(model, get_tensors(model, keys), proximal_mu),) if proximal_mu > 0 else ()
    task = Task(model, cfg.loss, extra_terms=extra)
    sums: dict[str, float] = {}

    def record(_step, metrics):
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v)

    done = train_steps(task, batches, optimizer, steps, hooks=[record], clip_grad=cfg.train.clip_grad)
    out = {k: v / max(done, 1) for k, v in sums.items()}
    out.update({"steps": float(done), "num-examples": float(done * cfg.fed.local_batch),
                "skipped": float(sum(skipped().values()))})
    return out


def site_metric_names() -> tuple[str, ...]:
    """The metric keys of every site's train reply, the same for every kind (Flower aggregates only replies
    with identical keys; a term a site's data does not have is reported as 0): derived from the loss table."""
    return ("num-examples", "steps", *metric_names(), f"loss_{PROXIMAL}", "grad_norm", "skipped", "bytes-sent",
            "train-seconds")


def site_evaluate(model: torch.nn.Module, cfg: Config, site: Site):
    """mIoU on the site's own labelled split (``val/``), or None when it has none."""
    from ..data.benchmarks.registry import BG_THRESH
    from ..data.segmentation.batches import SegShardBenchmark
    from ..eval.evaluate import evaluate

    shards = site.val_shards()
    if not shards:
        return None
    thr = cfg.eval.bg_thresh if cfg.eval.bg_thresh is not None else BG_THRESH["synthetic"]
    bench = SegShardBenchmark(shards, name="site", bg_thresh=thr)
    return evaluate(model, bench, protocol=cfg.eval, max_images=cfg.eval.max_images)
