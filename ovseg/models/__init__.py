"""Model construction: a named config (or a Config) -> an OVSegmentor (with its tokenizer)."""

from __future__ import annotations

import logging

from ..config import Config, load_config
from .ovsegmentor import OVSegmentor
from .pretrained import LoadReport
from .text import Tokenizer, build_tokenizer

log = logging.getLogger(__name__)

__all__ = ["OVSegmentor", "Tokenizer", "LoadReport", "build_model"]


def build_model(name_or_config: str | Config = "tiny", overrides: tuple[str, ...] | list[str] = (),
                text_hf_config: dict | None = None, load_pretrained: bool = True) -> OVSegmentor:
    """Build the model of a named config (``tiny``, ``vit-b16-cc4m``...), a YAML path or a ``Config``.

    Pretrained weights named in the config (a DINO/timm ViT file, a BERT-family directory) are loaded from
    local files; ``model.load_reports`` lists what was loaded, what is new and what was left unused.
    ``text_hf_config`` rebuilds a text tower's architecture without its directory (checkpoint loading), and
    ``load_pretrained=False`` skips the vision weights file (the checkpoint brings the weights).
    """
    cfg = name_or_config if isinstance(name_or_config, Config) else load_config(name_or_config, overrides)
    model = OVSegmentor(cfg.model, build_tokenizer(cfg.model.text), text_hf_config)
    if load_pretrained and cfg.model.vision.pretrained:
        log.info("%s", model.load_vision_weights(cfg.model.vision.pretrained))
    return model

