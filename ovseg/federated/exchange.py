"""The exchange set: which tensors travel between the server and the sites, and the site model they fit.

Every floating-point tensor of the model's state travels except the frozen towers (the text tower unless
``fed.train_text``; the momentum encoder always): each trainable parameter plus the running statistics of the
projectors' BatchNorm. Frozen towers stay at the sites, which load them from their own copy of the starting
checkpoint; a fingerprint of them travels in the server's config, so a site with a different copy refuses to
train instead of silently averaging incompatible models.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import torch

from ..config import Config


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
    from ..checkpoint import model_from_checkpoint, read_checkpoint
    from ..models import build_model

    if checkpoint:
        ckpt = read_checkpoint(checkpoint)
        cfg = dataclasses.replace(cfg, model=ckpt.config.model)
        model = model_from_checkpoint(dataclasses.replace(ckpt, config=cfg), momentum=False)
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
