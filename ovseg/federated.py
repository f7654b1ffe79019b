"""Federated hybrid training, framework-free: what travels, how updates are checked, what a site does locally.

The Flower glue (``integrations/flower.py``) and the Flower app (``clients/``) call these; nothing here
imports Flower, so every rule is unit-tested on plain tensors.

- What travels: the *exchange set*, every floating-point tensor of the model's state except the frozen
  towers (the text tower unless ``fed.train_text``; the momentum encoder always). That is each trainable
  parameter plus the running statistics of the projectors' BatchNorm. Frozen towers stay at the sites, which
  load them from their own copy of the starting checkpoint; a fingerprint of them travels in the server's
  config so a site with a different copy refuses to train instead of silently averaging incompatible models.
- Transport: float32, or bfloat16 (half the bytes; bit patterns carried as uint16, restored exactly).
- Checks before aggregation (``check_update``): exactly the expected keys, shapes and dtype, only finite
  values, and an update norm ||w_site - w_global|| within ``fed.max_update_norm``.
- A site's round (``local_train``): the shared engine for ``fed.local_steps`` steps on its caption shards
  (contrastive + entity completion) or segmentation shards (supervised mask loss + the same text losses on
  captions made from the class names), with the FedProx term when mu > 0.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import Config
from .engine import build_optimizer, train_steps

SITE_FILE = "site.json"
KINDS = ("caption", "segmentation")
TRANSPORTS = ("float32", "bfloat16")
BF16_WIRE = "bfloat16"  # the Array dtype string of a bf16 tensor carried as uint16 bits


# ---------------------------------------------------------------------------------------------- model


def frozen_prefixes(cfg: Config) -> tuple[str, ...]:
    return ("momentum_vision.",) + (() if cfg.fed.train_text else ("text.",))


def exchange_keys(model: torch.nn.Module, cfg: Config) -> list[str]:
    """Names of the tensors that travel between the server and the sites, in state-dict order.

    With differential privacy on, only trainable parameters travel: Gaussian noise on BatchNorm running
    variances can make them negative (NaN at evaluation), so those statistics stay as in the starting model.
    """
    frozen = frozen_prefixes(cfg)
    keys = [k for k, v in model.state_dict().items() if v.dtype.is_floating_point and not k.startswith(frozen)]
    if cfg.fed.dp.noise_multiplier > 0:
        params = {n for n, p in model.named_parameters() if p.requires_grad}
        keys = [k for k in keys if k in params]
    return keys


def frozen_fingerprint(model: torch.nn.Module, cfg: Config) -> str:
    """sha256 over the frozen towers' floating-point tensors (names, shapes and bytes)."""
    frozen = tuple(p for p in frozen_prefixes(cfg) if p != "momentum_vision.")
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        if v.dtype.is_floating_point and k.startswith(frozen):
            h.update(k.encode())
            h.update(str(tuple(v.shape)).encode())
            h.update(v.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def build_site_model(cfg: Config, checkpoint: str | Path | None = None):
    """The model a federation trains, identical on the server and every site.

    From ``checkpoint`` (a pretraining checkpoint: its model section and weights win over ``cfg.model``),
    else freshly initialised from ``cfg.seed`` (so every party draws the same frozen towers).
    Returns (model, cfg) with the text tower frozen unless ``fed.train_text``.
    """
    from .checkpoint import read_checkpoint
    from .models import build_model

    if checkpoint:
        ckpt = read_checkpoint(checkpoint)
        cfg = dataclasses.replace(cfg, model=ckpt.config.model)
        model = build_model(cfg, text_hf_config=ckpt.text_hf_config, load_pretrained=False)
        weights = {k: v for k, v in ckpt.weights.items() if not k.startswith("momentum_vision.")}
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise ValueError(f"{checkpoint}: weights do not fit its config: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
    else:
        torch.manual_seed(cfg.seed)
        model = build_model(cfg)
    model.set_text_trainable(cfg.fed.train_text)
    return model, cfg


def get_tensors(model: torch.nn.Module, keys: list[str]) -> dict[str, torch.Tensor]:
    sd = model.state_dict()
    return {k: sd[k].detach().to("cpu", torch.float32, copy=True) for k in keys}


def set_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor], keys: list[str]) -> None:
    """Copy ``tensors`` (exactly ``keys``) into the model; a wrong key set or shape is an error."""
    if set(tensors) != set(keys):
        missing, extra = sorted(set(keys) - set(tensors)), sorted(set(tensors) - set(keys))
        raise ValueError(f"weights do not match the exchange set: missing {missing[:5]}, unexpected {extra[:5]}")
    sd = model.state_dict()
    with torch.no_grad():
        for k in keys:
            if tuple(tensors[k].shape) != tuple(sd[k].shape):
                raise ValueError(f"weight {k}: shape {tuple(tensors[k].shape)}, the model has {tuple(sd[k].shape)}")
            sd[k].copy_(tensors[k].to(sd[k].dtype))
    if hasattr(model, "text_bank_cache"):
        model.text_bank_cache.clear()


# ---------------------------------------------------------------------------------------------- wire


def encode_tensor(t: torch.Tensor, transport: str) -> tuple[np.ndarray, str]:
    """-> (numpy array to ship, dtype name). bfloat16 travels as its uint16 bit pattern."""
    if transport == "float32":
        return t.detach().to("cpu", torch.float32).contiguous().numpy(), "float32"
    if transport == "bfloat16":
        bits = t.detach().to("cpu", torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint16)
        return bits, BF16_WIRE
    raise ValueError(f"fed.transport must be one of {TRANSPORTS}, got {transport!r}")


def decode_tensor(array: np.ndarray, dtype: str) -> np.ndarray:
    """The float32 values of a shipped array (see ``encode_tensor``); unknown dtypes are errors."""
    if dtype == BF16_WIRE:
        if array.dtype != np.uint16:
            raise ValueError(f"a bfloat16 array must arrive as uint16 bits, got {array.dtype}")
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16).float().numpy()
    if dtype == "float32" and array.dtype == np.float32:
        return array
    raise ValueError(f"unexpected array dtype {dtype!r} ({array.dtype}); expected float32 or bfloat16")


def check_update(update: dict[str, np.ndarray], wire_dtypes: dict[str, str], reference: dict[str, np.ndarray],
                 transport: str, max_norm: float) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """Validate one site's update against the global weights it started from.

    Returns (float32 arrays, None) when it may be aggregated, else (None, the reason it is refused).
    """
    missing, extra = sorted(set(reference) - set(update)), sorted(set(update) - set(reference))
    if missing or extra:
        return None, f"wrong keys: missing {missing[:3]}{'...' if len(missing) > 3 else ''}, extra {extra[:3]}"
    out, sq = {}, 0.0
    for k, ref in reference.items():
        arr, dtype = update[k], wire_dtypes.get(k, "")
        if dtype != transport:
            return None, f"{k}: dtype {dtype!r}, the federation ships {transport}"
        if tuple(arr.shape) != tuple(ref.shape):
            return None, f"{k}: shape {tuple(arr.shape)}, expected {tuple(ref.shape)}"
        try:
            values = decode_tensor(arr, dtype)
        except ValueError as e:
            return None, f"{k}: {e}"
        if not np.isfinite(values).all():
            return None, f"{k}: {int((~np.isfinite(values)).sum())} non-finite values (NaN or Inf)"
        sq += float(np.sum((values.astype(np.float64) - ref) ** 2))
        out[k] = values
    norm = math.sqrt(sq)
    if norm > max_norm:
        return None, f"update norm {norm:.4g} exceeds fed.max_update_norm {max_norm:.4g}"
    return out, None


def proximal_term(model: torch.nn.Module, global_tensors: dict[str, torch.Tensor], mu: float):
    """FedProx: mu / 2 * sum ||w - w_global||^2 over the trainable parameters of the exchange set."""
    named = dict(model.named_parameters())
    pairs = [(named[k], g.to(named[k].device)) for k, g in global_tensors.items()
             if k in named and named[k].requires_grad]

    def term(_model) -> torch.Tensor:
        return 0.5 * mu * sum(((p - g) ** 2).sum() for p, g in pairs)

    return term


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
            raise ValueError(f"site {path}: data-kind must be one of {KINDS}, got {kind!r}")
        if meta_kind and kind != meta_kind:
            raise ValueError(f"site {path}: node config says data-kind={kind} but {SITE_FILE} says {meta_kind}")
        site = cls(path, kind)
        if not site.train_shards():
            raise FileNotFoundError(f"site {path}: no training shards in {site.train_dir}/*.tar")
        return site

    @property
    def train_dir(self) -> Path:
        return self.path / ("captions" if self.kind == "caption" else "seg")

    def train_shards(self) -> list[str]:
        return sorted(str(p) for p in self.train_dir.glob("*.tar"))

    def val_shards(self) -> list[str]:
        return sorted(str(p) for p in (self.path / "val").glob("*.tar"))


def _batches(cfg: Config, model, site: Site, seed: int):
    """Endless training batches for the site's kind."""
    batch = cfg.fed.local_batch
    size = cfg.model.vision.img_size
    if site.kind == "segmentation":
        from .data.segbatch import SegBatchLoader

        loader = SegBatchLoader(site.train_shards(), model.tokenizer.hf, image_size=size, batch_size=batch,
                                seed=seed, max_length=cfg.model.text.max_length,
                                shuffle=min(cfg.data.shuffle_buffer, 256))
        return loader, iter(loader)
    from .data.caption_sample import transform_kind
    from .data.captions import build_caption_loader

    augment = transform_kind(cfg.data.augment, stage=1)
    loader = build_caption_loader(site.train_shards(), model.tokenizer.hf, batch_size=batch, image_size=size,
                                  stage=augment, num_workers=0, seed=seed,
                                  shuffle_buffer=min(cfg.data.shuffle_buffer, 256),
                                  max_length=cfg.model.text.max_length, rank=0, world_size=1,
                                  entity_prompts=cfg.loss.multilabel_weight > 0)

    def endless():
        epoch = 0
        while True:
            loader.set_epoch(epoch)
            produced = 0
            for b in loader:
                produced += 1
                yield b
            if produced == 0:
                raise ValueError(f"site {site.path}: its caption shards hold fewer readable samples than one batch "
                                 f"of {batch} (counts: {loader.counts.as_dict()})")
            epoch += 1

    return loader, endless()


def local_train(model: torch.nn.Module, cfg: Config, site: Site, *, steps: int, seed: int,
                proximal_mu: float = 0.0) -> dict[str, float]:
    """One round at a site: ``steps`` engine steps from the current (global) weights. Returns mean losses,
    the example count and the skip count; the model is updated in place."""
    keys = exchange_keys(model, cfg)
    start = get_tensors(model, keys)
    optimizer = build_optimizer(model, cfg.fed.lr, cfg.train.weight_decay)
    loader, batches = _batches(cfg, model, site, seed)
    sums: dict[str, float] = {}

    def record(_step, metrics):
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v)

    extra = proximal_term(model, start, proximal_mu) if proximal_mu > 0 else None
    done = train_steps(model, batches, optimizer, steps, cfg.loss, hooks=[record], clip_grad=cfg.train.clip_grad,
                       extra_loss=extra)
    out = {k: v / max(done, 1) for k, v in sums.items()}
    counts = loader.counter.as_dict() if hasattr(loader, "counter") else loader.counts.as_dict().get("skipped", {})
    out.update({"steps": float(done), "num-examples": float(done * cfg.fed.local_batch),
                "skipped": float(sum(counts.values()))})
    return out


def site_evaluate(model: torch.nn.Module, cfg: Config, site: Site):
    """mIoU on the site's own labelled split (``val/``), or None when it has none."""
    from .data.benchmarks import BG_THRESH
    from .data.segbatch import SegShardBenchmark
    from .evaluate import evaluate

    shards = site.val_shards()
    if not shards:
        return None
    thr = cfg.eval.bg_thresh if cfg.eval.bg_thresh is not None else BG_THRESH["synthetic"]
    bench = SegShardBenchmark(shards, name="site", bg_thresh=thr)
    return evaluate(model, bench, max_images=cfg.eval.max_images)
