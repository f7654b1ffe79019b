"""ovseg: train open-vocabulary semantic segmentation models from captions (OVSegmentor, CVPR 2023).

Public API:
    build_model(name_or_config)        -> OVSegmentor (with its own tokenizer)
    load_checkpoint(path)              -> (model, config)
    segment(model, image, class_names) -> H x W label map
The core never imports Ray, Flower or MLflow; those live in ``ovseg.integrations`` and ``ovseg.tracking``.
"""

from .lazy import lazy_exports

# imported on first use (ovseg/lazy.py): ``import ovseg.config`` alone must not import torch
__getattr__, __dir__ = lazy_exports(__name__, {
    "load_checkpoint": ".checkpoint", "save_checkpoint": ".checkpoint", "Config": ".config",
    "load_config": ".config", "ConfusionMatrix": ".eval.metrics", "segment": ".eval.segment",
    "build_model": ".models"})

__all__ = ["Config", "ConfusionMatrix", "build_model", "load_checkpoint", "load_config", "save_checkpoint", "segment"]
__version__ = "0.1.0"
