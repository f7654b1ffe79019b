"""Checkpoints: one safetensors file holding the weights, the config, the step and the metrics.

Loading never unpickles: safetensors stores raw tensors plus a string header, so a checkpoint from an
untrusted partner site cannot run code. A checkpoint is written to a temporary name in the same folder and
renamed into place, so a crash mid-write never leaves a truncated file under the real name.
Extra tensors (optimizer state, for instance) can ride along under their own prefix.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import Config, from_dict, to_dict

FORMAT = "ovseg-checkpoint/1"
EXTRA = "extra/"


@dataclass
class Checkpoint:
    weights: dict[str, torch.Tensor]
    config: Config
    step: int
    metrics: dict = field(default_factory=dict)
    text_hf_config: dict | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    state: dict = field(default_factory=dict)  # training state: stage, data position, tracking run id...
    source: str = ""  # the file it was read from (error messages)


def save_checkpoint(path: str | Path, model: torch.nn.Module, config: Config, step: int = 0,
                    metrics: dict | None = None, extra: dict[str, torch.Tensor] | None = None,
                    state: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # clone: safetensors refuses tensors that share storage, and a later in-place update must not race the write
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    for k, v in (extra or {}).items():
        tensors[EXTRA + k] = v.detach().to("cpu", copy=True).contiguous()
    text = getattr(model, "text", None)
    meta = {
        "format": FORMAT,
        "config": json.dumps(to_dict(config)),
        "step": str(int(step)),
        "metrics": json.dumps(metrics or {}),
        "text_hf_config": json.dumps(text.model.config.to_dict()) if text is not None else "null",
        "state": json.dumps(state or {}),
    }
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable ovseg checkpoint (safetensors): {e}") from e
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is a safetensors file but not an ovseg checkpoint (format {meta.get('format')!r})")
    if "config" not in meta:
        raise ValueError(f"{path}: damaged checkpoint header (no stored config)")
    try:
        config = from_dict(Config, json.loads(meta["config"]))
    except (TypeError, ValueError) as e:  # not JSON, or a tree whose keys do not allow its values
        raise ValueError(f"{path}: the checkpoint's stored config is not valid: {e}") from e
    try:
        text_cfg = json.loads(meta.get("text_hf_config", "null"))
        metrics = json.loads(meta.get("metrics", "{}"))
        step = int(meta["step"])
        state = json.loads(meta.get("state", "{}"))
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: damaged checkpoint header ({e})") from e
    weights = {k: v for k, v in tensors.items() if not k.startswith(EXTRA)}
    extra = {k[len(EXTRA):]: v for k, v in tensors.items() if k.startswith(EXTRA)}
    return Checkpoint(weights, config, step, metrics, text_cfg, extra, state, str(path))


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state as flat named tensors (for safetensors) plus its JSON-able hyperparameters."""
    sd = optimizer.state_dict()
    tensors = {f"optim/{pid}/{name}": torch.as_tensor(value)
               for pid, st in sd["state"].items() for name, value in st.items()}
    return tensors, {"param_groups": sd["param_groups"]}


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, extra: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in extra.items():
        if key.startswith("optim/"):
            _, pid, name = key.split("/", 2)
            state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, a folder holding one, or a run folder (``<train.output_dir>/<run>``, where Ray Train
    keeps ``checkpoint_*/checkpoint.safetensors``) -> the file; in a run folder, the one with the highest step."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    own = path / "checkpoint.safetensors"
    if own.is_file():
        return own
    found = sorted(path.glob("checkpoint_*/checkpoint.safetensors")) or sorted(path.glob("*.safetensors"))
    if not found:
        raise FileNotFoundError(f"{path} is a folder with no checkpoint (looked for checkpoint.safetensors, "
                                "checkpoint_*/checkpoint.safetensors and *.safetensors)")
    return max(found, key=lambda p: (_stored_step(p), str(p)))


def _stored_step(path: Path) -> int:
    """The step in a checkpoint's header, without reading its tensors (-1 if it is not an ovseg checkpoint)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return int(meta["step"]) if meta.get("format") == FORMAT else -1
    except (SafetensorError, OSError, ValueError, KeyError):
        return -1


def model_from_checkpoint(ckpt: Checkpoint, *, momentum: bool = True):
    """The model rebuilt from a checkpoint's stored config, its weights loaded (every key must fit).

    ``momentum=False`` leaves the momentum encoder out (a federation never trains or ships it)."""
    from .models import build_model

    model = build_model(ckpt.config, text_hf_config=ckpt.text_hf_config, load_pretrained=False)
    weights = ckpt.weights
    if not momentum:
        weights = {k: v for k, v in weights.items() if not k.startswith("momentum_vision.")}
    elif any(k.startswith("momentum_vision.") for k in weights):
        model.init_momentum()
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(f"{ckpt.source}: weights do not fit the stored config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return model


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"):
    """-> (model, config): the model rebuilt from the stored config, weights loaded strictly. For the step,
    metrics and state as well, use ``read_checkpoint`` and ``model_from_checkpoint``."""
    ckpt = read_checkpoint(path)
    return model_from_checkpoint(ckpt).to(map_location), ckpt.config
