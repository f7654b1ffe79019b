"""Model construction: a named config (or a Config) -> an OVSegmentor (with its tokenizer)."""

from __future__ import annotations

import logging

from ..config import Config, ConfigError, load_config
from .ovsegmentor import OVSegmentor
from .pretrained import LoadReport
from .text import Tokenizer, build_tokenizer

log = logging.getLogger(__name__)

__all__ = ["OVSegmentor", "Tokenizer", "LoadReport", "build_model"]


def build_model(name_or_config: str | Config = "tiny", overrides: tuple[str, ...] | list[str] = (),
                text_hf_config: dict | None = None, load_pretrained: bool = True) -> OVSegmentor:
    """Build the model of a named config (``tiny``, ``vit-b16-cc4m``...), a YAML path or a ``Config``.

    Pretrained weights named in the config (a DINO / timm / DINOv2 / CLIP vision file or folder, a BERT-family
    or CLIP text source) are loaded from local files; ``model.load_reports`` lists what was loaded, what is new
    and what was left unused (docs/pretrained.md).
    ``text_hf_config`` rebuilds a text tower's architecture without its directory (checkpoint loading), and
    ``load_pretrained=False`` skips the vision weights file (the checkpoint brings the weights).
    """
    cfg = name_or_config if isinstance(name_or_config, Config) else load_config(name_or_config, overrides)
    vision, text = cfg.model.vision, cfg.model.text
    if load_pretrained:
        required_weights(cfg, text_from_checkpoint=text_hf_config is not None)
    model = OVSegmentor(cfg.model, build_tokenizer(text), text_hf_config)
    if text.kind == "clip" and model.load_reports:
        log.info("%s", model.load_reports[0])
    if load_pretrained and vision.pretrained:
        log.info("%s", model.load_vision_weights(vision.pretrained, vision.pretrained_kind))
    return model


def required_weights(cfg: Config, text_from_checkpoint: bool = False) -> None:
    """A config that starts from pretrained weights (``model.vision.pretrained_kind``, ``model.text.
    pretrained_required``) names them; nothing has a default that downloads."""
    vision, text = cfg.model.vision, cfg.model.text
    what = {"vit": "a DINO / timm ViT checkpoint (.pth / .safetensors)",
            "dinov2": "a DINOv2 checkpoint (timm vit_*_dinov2 or the facebookresearch hub .pth)",
            "clip": "an OpenCLIP .bin / .safetensors file or a Hugging Face CLIP folder"}
    if vision.pretrained_kind != "auto" and not vision.pretrained:
        raise ConfigError(f"config '{cfg.name}' starts its vision tower from {vision.pretrained_kind} weights: set "
                          f"model.vision.pretrained to {what[vision.pretrained_kind]} on this machine (nothing is "
                          "downloaded; docs/pretrained.md)")
    if text.pretrained_required and not text.pretrained_dir and not text_from_checkpoint:
        kind = ("a Hugging Face CLIP folder or an OpenCLIP file (with model.text.tokenizer_dir for its tokenizer)"
                if text.kind == "clip" else "a local Hugging Face BERT-family folder")
        raise ConfigError(f"config '{cfg.name}' starts its text tower from pretrained weights: set "
                          f"model.text.pretrained_dir to {kind} (nothing is downloaded; docs/pretrained.md)")

