"""Pretrained vision weights from local files: a DINO / timm ViT, DINOv2, or CLIP checkpoint onto the GroupViT stages.

OVSegmentor starts from DINO ViT-B/16 (reference section 2.5): ViT blocks 0-5 become stage 0's blocks, 6-11
stage 1's; the patch embedding, the positional embedding (its [CLS] slot dropped, resized to this grid) and the
final norm load as they are. Everything else is new (group tokens, grouping block, projectors). The other
sources map the same way (docs/pretrained.md):

- timm / DINO / DINOv2 (timm ``vit_*_dinov2`` or the facebookresearch hub layout): the block names are this
  model's already; DINOv2's LayerScale (``ls1/ls2.gamma``) needs ``model.vision.layer_scale``, its register
  tokens load into ``model.vision.num_registers`` of them, or are dropped when that is 0.
- CLIP (an OpenCLIP state dict, or a Hugging Face CLIP folder): renamed by ``clipweights.py``; its ``ln_pre``
  needs ``model.vision.pre_norm``, its conv has no bias (ours is set to zero), its class token and projection
  have no counterpart. timm's CLIP ViTs (``vit_*_clip_*``) use timm's names and ``norm_pre``.

Every key is accounted for: loaded (into a model key; ``origin`` says from which file keys), new (in the
model, not in the file), unused (this tower's file keys the model has no place for) or other (another tower's
keys in the same file, such as a CLIP file's text transformer). Files are read without unpickling arbitrary
objects (safetensors, or ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from timm.layers import resample_abs_pos_embed

from .vision import GroupViT

SOURCES = ("auto", "vit", "dinov2", "clip")  # model.vision.pretrained_kind
_WRAPPERS = ("state_dict", "model", "teacher", "module")
_PREFIXES = ("module.", "backbone.", "visual.", "encoder.")
# the weights file inside a folder: Hugging Face save_pretrained names, then OpenCLIP's hub names
# (open_clip src/open_clip/constants.py: HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME)
_FOLDER_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors",
                 "open_clip_pytorch_model.bin")
_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass
class LoadReport:
    source: str
    loaded: list[str] = field(default_factory=list)  # model keys set from the file
    new: list[str] = field(default_factory=list)  # model keys the file has nothing for (they keep their init)
    unused: list[str] = field(default_factory=list)  # this tower's file keys with no place in the model
    other: list[str] = field(default_factory=list)  # file keys of another tower (read by that tower's loader)
    origin: dict[str, list[str]] = field(default_factory=dict)  # loaded model key -> the file keys it came from
    notes: list[str] = field(default_factory=list)
    layout: str = ""  # what the file was read as: vit, dinov2, timm-clip, openclip, hf-clip

    def __str__(self) -> str:
        heads = sorted({".".join(k.split(".")[:2]) for k in self.new})
        text = (f"{self.source} ({self.layout}): {len(self.loaded)} tensors loaded, {len(self.new)} new in the "
                f"model ({', '.join(heads[:8])}{'...' if len(heads) > 8 else ''}), {len(self.unused)} unused in "
                f"the file ({', '.join(self.unused[:6])}{'...' if len(self.unused) > 6 else ''})")
        if self.other:
            text += f", {len(self.other)} of another tower"
        return text + "".join(f"; {n}" for n in self.notes)


@dataclass
class Weights:
    """The tensors of one file (wrappers and a ``module.`` prefix removed) and the config beside it, if any."""

    path: Path  # the file the tensors came from (a folder's weights file)
    tensors: dict[str, torch.Tensor]
    config: dict | None = None  # a Hugging Face config.json, or OpenCLIP's open_clip_config.json
    config_name: str = ""


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            state = load_file(str(path))
        except Exception as e:
            raise ValueError(f"{path}: not a readable safetensors file ({e.__class__.__name__}: {e})") from e
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
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def read_weights(path: str | Path) -> Weights:
    """A weights file, or a folder holding one (Hugging Face ``save_pretrained``, sharded or not; OpenCLIP's)."""
    path = Path(path).expanduser()
    if path.is_file():
        return Weights(path, _read_file(path))
    if not path.is_dir():
        raise FileNotFoundError(f"pretrained weights {path} do not exist (weights are never downloaded)")
    config, config_name = None, ""
    for name in ("config.json", "open_clip_config.json"):
        if (path / name).is_file():
            try:
                config, config_name = json.loads((path / name).read_text()), name
            except ValueError as e:
                raise ValueError(f"{path / name}: not valid JSON ({e})") from e
            break
    for name in _INDEXES:  # sharded: {"weight_map": {tensor name: shard file}}
        if (path / name).is_file():
            shards = sorted(set(json.loads((path / name).read_text()).get("weight_map", {}).values()))
            tensors: dict[str, torch.Tensor] = {}
            for shard in shards:
                if not (path / shard).is_file():
                    raise FileNotFoundError(f"{path / name} names the shard {shard}, which is not in {path}")
                tensors.update(_read_file(path / shard))
            return Weights(path / name, tensors, config, config_name)
    for name in _FOLDER_FILES:
        if (path / name).is_file():
            return Weights(path / name, _read_file(path / name), config, config_name)
    raise FileNotFoundError(f"{path} is a folder without a weights file (looked for {', '.join(_FOLDER_FILES)} "
                            f"and sharded indexes {', '.join(_INDEXES)})")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A timm / DINO-style state dict with its wrapper prefixes (``backbone.``, ``visual.``...) removed."""
    return _strip_prefixes(read_weights(path).tensors)


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


# --------------------------------------------------------------------------------------------- timm / DINO(v2)
_REGISTERS = ("register_tokens", "reg_token")  # DINOv2 hub (dinov2/models/vision_transformer.py), timm
_DINOV2_ONLY = ("mask_token", *_REGISTERS)


def stage_of(model: GroupViT) -> list[tuple[int, int]]:
    """ViT block index -> (stage, block within the stage)."""
    return [(s, j) for s, d in enumerate(model.cfg.depths) for j in range(d)]


def map_vit_to_groupvit(state: dict[str, torch.Tensor], model: GroupViT) -> tuple[list, list[str]]:
    """A timm / DINO / DINOv2 ViT state dict (prefixes stripped) -> ([(model key, tensor, [file keys])], unused)."""
    where = stage_of(model)
    entries, unused = [], []
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "blocks" and len(parts) > 2 and parts[2].isdigit():  # DINOv2 chunked: blocks.<chunk>.<i>.
            parts = parts[:1] + parts[2:]
        if parts[0] == "blocks" and parts[1].isdigit():
            if int(parts[1]) < len(where):
                s, j = where[int(parts[1])]
                entries.append((f"layers.{s}.blocks.{j}." + ".".join(parts[2:]), value, [key]))
            else:
                unused.append(key)
        elif key.startswith(("patch_embed.proj.", "norm.")):
            entries.append((key, value, [key]))
        elif key.startswith("norm_pre."):  # timm's CLIP ViTs: the pre-LayerNorm
            entries.append(("pre_norm." + key[len("norm_pre."):], value, [key]))
        elif key == "pos_embed":
            entries.append(("pos_embed", fit_pos_embed(value, model), [key]))
        elif key in _REGISTERS and model.register_tokens is not None:
            entries.append(("register_tokens", value.reshape(1, -1, value.shape[-1]), [key]))
        else:
            unused.append(key)
    return entries, unused


def fit_pos_embed(pos: torch.Tensor, model: GroupViT) -> torch.Tensor:
    """A ViT positional embedding ((1,) n, D), with or without a [CLS] slot in front -> (1, h*w, D) on this grid."""
    pos = pos.reshape(1, -1, pos.shape[-1])
    n = pos.shape[1]
    side = math.isqrt(n)
    prefix = n - side * side  # DINO / timm / CLIP keep a [CLS] slot in front
    if prefix not in (0, 1):
        raise ValueError(f"positional embedding with {n} tokens is not a square grid (+ [CLS])")
    pos = pos[:, prefix:]
    if (side, side) != model.grid:
        pos = resample_abs_pos_embed(pos, list(model.grid), [side, side], num_prefix_tokens=0,
                                     interpolation="bicubic", antialias=False)
    return pos


# --------------------------------------------------------------------------------------------- loading
def detect_layout(tensors: dict[str, torch.Tensor]) -> str:
    from .clipweights import clip_vision_layout

    clip = clip_vision_layout(tensors)
    if clip:
        return clip
    keys = _strip_prefixes(tensors)
    if any(k in keys for k in _DINOV2_ONLY) or any(k.endswith(".ls1.gamma") for k in keys):
        return "dinov2"
    if "norm_pre.weight" in keys:  # timm's CLIP ViTs (vit_*_clip_*): timm names, CLIP's pre-LayerNorm
        return "timm-clip"
    return "vit"


_KIND_OF_LAYOUT = {"vit": "vit", "dinov2": "dinov2", "openclip": "clip", "hf-clip": "clip", "timm-clip": "clip"}
_KIND_NAMES = {"vit": "a DINO / timm ViT", "dinov2": "a DINOv2 ViT", "clip": "a CLIP image tower"}


def load_vision_weights(model: GroupViT, path: str | Path, kind: str = "auto") -> LoadReport:
    """Load a pretrained ViT (any layout above) into ``model``; ``kind`` (model.vision.pretrained_kind) other
    than "auto" requires that kind of file."""
    from .clipweights import check_clip_vision_config, map_clip_vision

    if kind not in SOURCES:
        raise ValueError(f"model.vision.pretrained_kind must be one of {SOURCES}, got {kind!r}")
    weights = read_weights(path)
    layout = detect_layout(weights.tensors)
    if kind != "auto" and _KIND_OF_LAYOUT[layout] != kind:
        raise ValueError(f"{path}: holds a {layout} checkpoint, but model.vision.pretrained_kind={kind} expects "
                         f"{_KIND_NAMES[kind]}")
    other: list[str] = []
    if layout in ("openclip", "hf-clip"):
        check_clip_vision_config(weights, model.cfg)
        entries, unused, other = map_clip_vision(weights.tensors, model, layout)
    else:
        entries, unused = map_vit_to_groupvit(_strip_prefixes(weights.tensors), model)
    return apply_entries(model, entries, unused, other, str(path), layout)


def apply_entries(model: GroupViT, entries: list, unused: list[str], other: list[str], source: str,
                  layout: str) -> LoadReport:
    """Check and load mapped (model key, tensor, file keys) entries; the report of what happened to every key."""
    own = model.state_dict()
    cfg = model.cfg
    mapped = {k for k, _, _ in entries}
    if any(k.startswith("pre_norm.") for k in mapped) and model.pre_norm is None:
        raise ValueError(f"{source}: the checkpoint has a LayerNorm before its first block (CLIP's ln_pre); "
                         "set model.vision.pre_norm=true so that the blocks see what they were trained on")
    if any(k.endswith((".ls1.gamma", ".ls2.gamma")) for k in mapped) and cfg.layer_scale is None:
        raise ValueError(f"{source}: the checkpoint's blocks have LayerScale (ls1/ls2.gamma, DINOv2); set "
                         "model.vision.layer_scale=1e-5 (its value is then loaded from the file)")
    notes: list[str] = []
    loadable, origin = {}, {}
    for key, value, sources in entries:
        if key not in own:
            unused.extend(sources)
            continue
        if own[key].shape != value.shape:
            hint = ("model.vision.num_registers must equal the file's register count" if key == "register_tokens"
                    else "embed_dim / patch_size / mlp_ratio must match")
            raise ValueError(f"{source}: '{sources[0]}' has shape {tuple(value.shape)}, the model's '{key}' is "
                             f"{tuple(own[key].shape)} ({hint})")
        loadable[key], origin[key] = value, list(sources)
    if "patch_embed.proj.weight" in loadable and "patch_embed.proj.bias" in own and \
            "patch_embed.proj.bias" not in loadable:
        # a bias-free patch conv (CLIP's conv1): a zero bias computes the same function and trains from there
        with torch.no_grad():
            model.patch_embed.proj.bias.zero_()
        notes.append("patch_embed.proj.bias set to zero (the file's patch embedding has no bias)")
    if model.register_tokens is None and any(k in _REGISTERS for k in unused):
        notes.append("the file's register tokens are dropped (model.vision.num_registers=0)")
    model.load_state_dict(loadable, strict=False)
    return LoadReport(source, loaded=sorted(loadable), new=sorted(set(own) - set(loadable)),
                      unused=sorted(unused), other=sorted(other), origin=origin, notes=notes, layout=layout)
