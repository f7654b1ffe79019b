"""The one training step and loop. Ray Train workers, Flower clients and Tune trials all call these.

No framework imports here: distributed code passes an all-gather (``gather``) and its ``rank``; callers
observe progress through hooks (callables that receive each step's metrics).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from ..config import LossConfig
from ..losses import Gather, compute_losses

Hook = Callable[[int, dict[str, float]], None]
_NO_DECAY_NAMES = ("logit_scale", "pos_embed", "group_token")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay on norms, biases, the temperature, positional embeddings and group tokens."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or any(n in name for n in _NO_DECAY_NAMES):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float = 0.05,
                    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps)


def train_step(model: torch.nn.Module, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
               loss_cfg: LossConfig, *, gather: Gather | None = None, rank: int = 0, clip_grad: float | None = 5.0,
               autocast_dtype: torch.dtype | None = None,
               extra_loss: Callable[[torch.nn.Module], torch.Tensor] | None = None) -> dict[str, float]:
    """Forward, losses, backward, clip, step (and the momentum encoder's EMA when it exists).

    ``extra_loss(model)`` adds a term that depends on the weights alone (FedProx's proximal term); it is
    reported as ``loss_extra``.
    """
    model.train()
    device_type = batch["image"].device.type
    with torch.autocast(device_type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        out = model(batch)
        total, parts = compute_losses(out, loss_cfg, batch, gather=gather, rank=rank)
    if extra_loss is not None:
        parts["loss_extra"] = extra_loss(model)
        total = total + parts["loss_extra"]
    if not torch.isfinite(total):
        raise FloatingPointError(f"non-finite loss {total.item()} ({ {k: v.item() for k, v in parts.items()} })")
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_grad if clip_grad else float("inf"))
    optimizer.step()
    core = getattr(model, "module", model)  # DDP wraps the model
    if core.momentum_vision is not None:
        core.momentum_update()
    metrics = {"loss": total.item(), "grad_norm": float(grad_norm), "logit_scale": out["logit_scale"].detach().item()}
    metrics.update({k: v.item() for k, v in parts.items()})
    return metrics


def train_steps(model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                optimizer: torch.optim.Optimizer, n: int, loss_cfg: LossConfig, hooks: Iterable[Hook] = (),
                start_step: int = 0, **step_kwargs) -> int:
    """Run up to ``n`` steps from ``batches``; every hook sees (global step, metrics). Returns the next step."""
    step = start_step
    for batch in batches:
        if step - start_step >= n:
            break
        metrics = train_step(model, batch, optimizer, loss_cfg, **step_kwargs)
        step += 1
        for hook in hooks:
            hook(step, metrics)
    return step
