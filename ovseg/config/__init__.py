"""The one configuration tree: frozen dataclasses, YAML files and dotted overrides.

Every entry point (pretraining, Flower, Tune, the tests) speaks the same dotted keys, e.g.
``model.vision.num_output_groups=[8]`` or ``loss.entity_weight=0.5``. A named configuration is a YAML
file in ``ovseg/configs/`` holding only what differs from the defaults; the defaults are the paper's
ViT-B/16 model (OVSegmentor, CVPR 2023; reference: ovsegmentor.md sections 2, 4, 6, 7).

    tree.py   the frozen dataclasses (model, loss, eval, data, train, fed), each field's allowed values beside it
    rules.py  those declarations (positive, at_least, unit, choice...) and the check every section runs when built
    io.py     from_dict / load_config / parse_overrides / flatten
"""

from .io import (
                 CONFIG_DIR,
                 available_configs,
                 flat_overrides,
                 flatten,
                 from_dict,
                 load_config,
                 merge_dicts,
                 nest_overrides,
                 parse_overrides,
                 save_config,
                 to_dict,
)
from .rules import ConfigError
from .tree import (
                 Config,
                 DataConfig,
                 DPConfig,
                 EvalConfig,
                 FedConfig,
                 LossConfig,
                 ModelConfig,
                 TextConfig,
                 TrainConfig,
                 VisionConfig,
)

__all__ = ["CONFIG_DIR", "Config", "ConfigError", "DPConfig", "DataConfig", "EvalConfig", "FedConfig", "LossConfig",
           "ModelConfig", "TextConfig", "TrainConfig", "VisionConfig", "available_configs", "flat_overrides", "flatten",
           "from_dict", "load_config", "merge_dicts", "nest_overrides", "parse_overrides", "save_config", "to_dict"]
