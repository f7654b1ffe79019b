"""The one training step and loop. Pretraining, Flower sites and Tune trials all run these.

No framework imports here: a ``Task`` (``ovseg.train.task``) binds the model, its loss terms and the
distributed all-gather; callers observe and steer the loop through hooks. A hook is a callable
``hook(step, metrics)`` called after each step, or an object with ``before_step(step)`` and/or
``after_step(step, metrics)``; an ``after_step`` that returns True stops the loop after that step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from .task import Task

Hook = Callable[[int, dict[str, float]], object]


def train_step(task: Task, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, *,
               clip_grad: float | None = 5.0, autocast_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Forward, losses, backward, clip, step, then the task's post-update work (the momentum encoder's EMA)."""
    model = task.model
    model.train()
    device_type = batch["image"].device.type
    batch = task.prepare(batch)
    with torch.autocast(device_type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        out = model(batch)
    if autocast_dtype is not None:  # the losses (logits at scale up to 100, softmaxes, Dice) in float32
        out = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in out.items()}
    total, parts = task.losses(out, batch)
    if not torch.isfinite(total):
        raise FloatingPointError(f"non-finite loss {total.item()} ({ {k: v.item() for k, v in parts.items()} })")
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_grad if clip_grad else float("inf"))
    optimizer.step()
    task.after_update()
    metrics = {"loss": total.item(), "grad_norm": float(grad_norm), "logit_scale": out["logit_scale"].detach().item()}
    metrics.update({k: v.item() for k, v in parts.items()})
    return metrics


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls natively (AVX512-BF16 or AMX), as oneDNN reports it."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype_for(device: torch.device, bf16: bool, bf16_cpu: bool) -> torch.dtype | None:
    """The autocast dtype of a training step on ``device``: bf16 on a GPU when ``bf16``, on a CPU when
    ``bf16_cpu`` (an error where the CPU would only emulate it), float32 (None) otherwise."""
    if device.type == "cuda":
        return torch.bfloat16 if bf16 else None
    if device.type == "cpu" and bf16_cpu:
        if not cpu_has_native_bf16():
            raise ValueError("train.bf16_cpu=true but this CPU has no native bf16 (AVX512-BF16 or AMX): "
                             "it would be emulated and slower than float32; set train.bf16_cpu=false")
        return torch.bfloat16
    return None


def train_steps(task: Task, batches: Iterable[dict[str, torch.Tensor]], optimizer: torch.optim.Optimizer, n: int,
                hooks: Iterable = (), start_step: int = 0, device: torch.device | None = None,
                clip_grad: float | None = 5.0, autocast_dtype: torch.dtype | None = None) -> int:
    """Run up to ``n`` steps from ``batches`` (never drawing a batch it will not train on). Returns the next step.

    ``device``: batches are moved there (non-blocking) before the step.
    """
    before = [h.before_step for h in hooks if hasattr(h, "before_step")]
    after = [h.after_step if hasattr(h, "after_step") else h for h in hooks
             if hasattr(h, "after_step") or not hasattr(h, "before_step")]
    it = iter(batches)
    step = start_step
    while step - start_step < n:
        batch = next(it, None)
        if batch is None:
            break
        if device is not None:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        for hook in before:
            hook(step)
        metrics = train_step(task, batch, optimizer, clip_grad=clip_grad, autocast_dtype=autocast_dtype)
        step += 1
        stop = False
        for hook in after:
            stop = bool(hook(step, metrics)) or stop
        if stop:
            break
    return step
