"""ovseg: train open-vocabulary semantic segmentation models from captions (OVSegmentor, CVPR 2023).

Public API:
    build_model(name_or_config)        -> OVSegmentor (with its own tokenizer)
    load_checkpoint(path)              -> (model, config)
    segment(model, image, class_names) -> H x W label map
The core never imports Ray, Flower or MLflow; those live in ``ovseg.integrations`` and ``ovseg.tracking``.
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config, load_config
from .eval.metrics import ConfusionMatrix
from .eval.segment import segment
from .models import build_model

__all__ = ["Config", "ConfusionMatrix", "build_model", "load_checkpoint", "load_config", "save_checkpoint", "segment"]
__version__ = "0.1.0"
