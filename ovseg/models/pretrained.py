"""Pretrained vision weights from local files: a DINO or timm ViT checkpoint mapped onto the GroupViT stages.

OVSegmentor starts from DINO ViT-B/16 (reference section 2.5): ViT blocks 0-5 become stage 0's blocks, 6-11
stage 1's; the patch embedding, the positional embedding (its [CLS] slot dropped, resized to this grid) and the
final norm load as they are. Everything else is new (group tokens, grouping block, projectors). Every key is
accounted for: loaded, new (in the model, not in the file) or unused (in the file, not in the model).
Files are read without unpickling arbitrary objects (safetensors, or ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from timm.layers import resample_abs_pos_embed

from .vision import GroupViT

_WRAPPERS = ("state_dict", "model", "teacher", "module")
_PREFIXES = ("module.", "backbone.", "visual.", "encoder.")


@dataclass
class LoadReport:
    source: str
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (f"{self.source}: {len(self.loaded)} tensors loaded, {len(self.new)} new in the model "
                f"({', '.join(sorted({k.split('.')[0] + '.' + k.split('.')[1] for k in self.new if '.' in k})[:8])}...), "
                f"{len(self.unused)} unused in the file ({', '.join(self.unused[:6])})")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights {path} do not exist (weights are never downloaded)")
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a full pickle (optimizer objects, argparse) is refused, not executed
            raise ValueError(f"{path}: cannot be read as plain tensors ({e.__class__.__name__}: {e})") from e
    for key in _WRAPPERS:  # training checkpoints nest the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a mapping of tensor names to tensors")
    out = {}
    for k, v in state.items():
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


def map_vit_to_groupvit(state: dict[str, torch.Tensor], model: GroupViT) -> tuple[dict, list[str]]:
    """Rename a plain ViT state dict onto the GroupViT stages; returns (mapped, unused keys)."""
    depths = model.cfg.depths
    stage_of = [(s, j) for s, d in enumerate(depths) for j in range(d)]
    mapped, unused = {}, []
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "blocks" and int(parts[1]) < len(stage_of):
            s, j = stage_of[int(parts[1])]
            mapped[f"layers.{s}.blocks.{j}." + ".".join(parts[2:])] = value
        elif key.startswith(("patch_embed.proj.", "norm.")):
            mapped[key] = value
        elif key == "pos_embed":
            mapped[key] = _fit_pos_embed(value, model)
        else:
            unused.append(key)
    return mapped, unused


def _fit_pos_embed(pos: torch.Tensor, model: GroupViT) -> torch.Tensor:
    pos = pos.reshape(1, -1, pos.shape[-1])
    n = pos.shape[1]
    side = math.isqrt(n)
    prefix = n - side * side  # DINO / timm keep a [CLS] slot in front
    if prefix not in (0, 1):
        raise ValueError(f"positional embedding with {n} tokens is not a square grid (+ [CLS])")
    pos = pos[:, prefix:]
    if (side, side) != model.grid:
        pos = resample_abs_pos_embed(pos, list(model.grid), [side, side], num_prefix_tokens=0,
                                     interpolation="bicubic", antialias=False)
    return pos


def load_vision_weights(model: GroupViT, path: str | Path) -> LoadReport:
    mapped, unused = map_vit_to_groupvit(read_state_dict(path), model)
    own = model.state_dict()
    for key, value in mapped.items():
        if key not in own:
            unused.append(key)
        elif own[key].shape != value.shape:
            raise ValueError(f"{path}: '{key}' has shape {tuple(value.shape)}, the model expects "
                             f"{tuple(own[key].shape)} (embed_dim / patch_size / mlp_ratio must match)")
    loadable = {k: v for k, v in mapped.items() if k in own}
    model.load_state_dict(loadable, strict=False)
    return LoadReport(str(path), loaded=sorted(loadable), new=sorted(set(own) - set(loadable)),
                      unused=sorted(unused))
