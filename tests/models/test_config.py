import dataclasses
import math

import pytest
import torch
import yaml
from safetensors.torch import save_file

from ovseg.checkpoint import FORMAT, read_checkpoint
from ovseg.config import (
    CONFIG_DIR,
    Config,
    ConfigError,
    TrainConfig,
    available_configs,
    flatten,
    from_dict,
    load_config,
    merge_dicts,
    nest_overrides,
    parse_overrides,
    save_config,
    to_dict,
    tree,
)


def test_named_configs_load():
    assert {"tiny", "debug", "vit-s16-cc4m", "vit-b16-cc4m"} <= set(available_configs())  # the default and the tests'
    for name in available_configs():
        cfg = load_config(name)
        assert cfg.name == name
        assert len(cfg.model.vision.num_output_groups) == len(cfg.model.vision.depths) - 1


def test_defaults_are_the_paper_model():
    paper, default = load_config("vit-b16-cc4m"), Config()
    assert paper.model == default.model
    assert default.model.vision.num_group_tokens == (64, 0) and default.model.vision.num_output_groups == (8,)


def test_dotted_overrides_are_typed():
    cfg = load_config("debug", ["model.vision.num_output_groups=[5]", "loss.entity_weight=0.5", "seed=3",
                               "model.text.pretrained_dir=null", "eval.templates=['a {}.', 'the {}.']"])
    assert cfg.model.vision.num_output_groups == (5,)
    assert cfg.loss.entity_weight == 0.5 and isinstance(cfg.loss.entity_weight, float)
    assert cfg.seed == 3 and cfg.eval.templates == ("a {}.", "the {}.")


@pytest.mark.parametrize("override, message", [
    ("model.vision.nope=1", "unknown config key"),
    ("seed=abc", "expects an integer"),
    ("model.vision.hard_assignment=3", "expects true/false"),
    ("seed", "dotted.key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        load_config("debug", [override])


def test_unknown_config_lists_available():
    with pytest.raises(ValueError, match="available"):
        load_config("no-such-config")


def test_yaml_round_trip(tmp_path):
    cfg = load_config("debug", ["loss.mask_weight=0.3"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(str(tmp_path / "c.yaml")) == cfg
    assert not list(tmp_path.glob("*.tmp"))


def test_flatten_gives_dotted_params():
    flat = flatten(load_config("debug"))
    assert flat["model.vision.patch_size"] == 8
    assert parse_overrides(["a.b=1"]) == {"a": {"b": 1}}
    assert "model.vision.depths" in flat and isinstance(yaml.safe_dump(flat), str)


# (overrides on debug, the message expected): each class of mistake, with the key, the value and what is allowed
BAD = [
    (["train.batch_size=0"], "config key 'train.batch_size' must be an integer >= 1, got 0"),
    (["train.log_every=0"], "config key 'train.log_every' must be an integer >= 1, got 0"),
    (["eval.stride=0"], "config key 'eval.stride' must be an integer >= 1, got 0"),
    (["train.stage1_steps=-1"], "config key 'train.stage1_steps' must be an integer >= 0, got -1"),
    (["fed.local_steps=-3"], "config key 'fed.local_steps' must be an integer >= 1, got -3"),
    (["train.stop_after=0"], "config key 'train.stop_after' must be an integer >= 1, got 0"),
    (["eval.bg_thresh=.nan"], "config key 'eval.bg_thresh' must be a finite number in [0, 1], got nan"),
    (["fed.max_update_norm=nan"], "config key 'fed.max_update_norm' must be a finite number > 0, got nan"),
    (["fed.max_update_norm=.inf"], "config key 'fed.max_update_norm' must be a finite number > 0, got inf"),
    (["loss.mask_weight=-0.1"], "config key 'loss.mask_weight' must be a finite number >= 0, got -0.1"),
    (["loss.group_ratio=1.5"], "config key 'loss.group_ratio' must be a finite number in [0, 1], got 1.5"),
    (["fed.fraction_train=0"], "config key 'fed.fraction_train' must be a finite number in (0, 1], got 0.0"),
    (["fed.dp.delta=1"], "config key 'fed.dp.delta' must be a finite number in (0, 1), got 1.0"),
    (["fed.strategy=bogus"], ("config key 'fed.strategy' must be one of 'fedavg', 'fedprox', 'fedadam', "
                              "'fedtrimmedavg', 'fedmedian', 'krum', 'multikrum', 'bulyan', got 'bogus'")),
    (["data.augment=bogus"], "config key 'data.augment' must be one of 'paper', 'light', 'flip', got 'bogus'"),
    (["loss.mosaic_layout=grid"], "config key 'loss.mosaic_layout' must be one of 'paste', 'side', got 'grid'"),
    (["model.vision.num_heads=[2,0]"], "config key 'model.vision.num_heads[1]' must be an integer >= 1, got 0"),
    (["model.vision.depths=[1,-1]"], "config key 'model.vision.depths[1]' must be an integer >= 0, got -1"),
    (["eval.templates=['a photo']"], "config key 'eval.templates[0]' must be a string containing '{}', got 'a photo'"),
    (["train.output_dir="], "config key 'train.output_dir' must be a non-empty string, got ''"),
    (["train.batch_size=2.5"], "config key 'train.batch_size' expects an integer, got 2.5"),
    (["model.vision.depths=[1,x]"], "config key 'model.vision.depths[1]' expects an integer, got 'x'"),
    (["train.nope=1"], "unknown config key(s) ['train.nope']"),
    (["seed=[1"], "override 'seed=[1': the value is not valid YAML"),
    (["model=3", "model.vision.depths=[1,1]"], "override 'model.vision.depths': 'model' is given a value and sub-keys"),
    # constraints between fields
    (["train.stage1_steps=0", "train.stage2_steps=0"], "are both 0: nothing would be trained"),
    (["model.vision.depths=[1,1,1]"], "config key 'model.vision.num_heads' needs one entry per stage (3"),
    (["model.vision.num_output_groups=[4,2]"], "'model.vision.num_output_groups' needs one entry per grouping block"),
    (["model.vision.num_group_tokens=[8,4]"], "must be > 0 for every stage but the last and 0 for the last"),
    (["model.vision.img_size=36"], "config key 'model.vision.img_size' (36) must be a multiple of"),
    (["model.vision.embed_dim=49"], "config key 'model.vision.embed_dim' (49) must be divisible by every entry"),
    (["model.vision.img_size=36", "model.vision.patch_size=6"], "must be a power of two >= 2 with model.vision.stem"),
    (["model.text.width=33"], "config key 'model.text.width' (33) must be divisible by model.text.num_heads (2)"),
    (["model.decoder_heads=3"], "config key 'model.decoder_heads' (3) must divide the text features' width (32"),
    (["eval.stride=64"], "config key 'eval.stride' (64) must be at most eval.crop_size (32)"),
    (["data.synthetic_min_scale=0.8"], "config key 'data.synthetic_min_scale' (0.8) must be at most"),
    (["fed.dp.noise_multiplier=1", "fed.dp.mode=client", "fed.transport=bfloat16"],
     "config key 'fed.transport' must be float32 with client-side DP clipping"),
]


@pytest.mark.parametrize("overrides, message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_a_value_its_key_does_not_allow_is_one_clear_error(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config("debug", overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("overrides", [["eval.bg_thresh=0", "eval.stride=32"], ["eval.bg_thresh=1"],
                                       ["fed.fraction_evaluate=0", "fed.trim_beta=0"], ["train.stage2_steps=0"],
                                       ["train.max_failures=-1", "train.clip_grad=0", "data.shuffle_buffer=0"],
                                       ["model.vision.depths=[0,0]", "model.text.dropout=0.0"]])
def test_the_edges_of_each_range_are_allowed(overrides):
    load_config("debug", overrides)


def test_every_way_of_building_a_config_is_checked(tmp_path):
    base = load_config("debug")
    with pytest.raises(ConfigError, match="'train.log_every'"):
        TrainConfig(log_every=0)
    with pytest.raises(ConfigError, match="'train.batch_size'"):
        dataclasses.replace(base.train, batch_size=-1)
    with pytest.raises(ConfigError, match="'fed.dp.clipping_norm'"):
        from_dict(Config, merge_dicts(to_dict(base), {"fed": {"dp": {"clipping_norm": 0.0}}}))
    with pytest.raises(ConfigError, match="'fed.max_update_norm'"):  # a Flower run config's raw strings
        from_dict(Config, merge_dicts(to_dict(base), nest_overrides({"fed.max_update_norm": "nan"})))
    (tmp_path / "c.yaml").write_text("train: {lr: .nan}\n")
    with pytest.raises(ConfigError, match="config key 'train.lr' must be a finite number >= 0, got nan"):
        load_config(str(tmp_path / "c.yaml"))


@pytest.mark.parametrize("stored, message", [
    ("5", "config tree must be a mapping"),
    ("[1]", "config tree must be a mapping"),
    ('{"train": {"log_every": 0}}', "'train.log_every' must be an integer >= 1"),
    ('{"model": {"vision": 3}}', "'model.vision' is a section"),
    ("{not json", "Expecting property name"),
])
def test_a_checkpoint_with_a_malformed_stored_config_names_the_file(tmp_path, stored, message):
    path = tmp_path / "ckpt.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={"format": FORMAT, "config": stored, "step": "0"})
    with pytest.raises(ValueError) as err:
        read_checkpoint(path)
    assert str(err.value).startswith(f"{path}: the checkpoint's stored config is not valid") and message in str(err.value)


def _sections(cls=Config, key=""):
    """(dotted key, field) of every field of the tree, sections included."""
    for f in dataclasses.fields(cls):
        yield key + f.name, f
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            yield from _sections(f.default_factory, key + f.name + ".")


def test_every_field_declares_what_it_allows():
    undeclared = [k for k, f in _sections() if "rule" not in f.metadata and f.type not in ("bool",)
                  and not (f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory))]
    assert undeclared == []
    defaults = Config()  # and every default meets its own rule (the float ones are finite)
    assert all(math.isfinite(v) for v in flatten(defaults).values() if isinstance(v, float))


def test_the_choices_are_those_their_consumers_accept():
    from ovseg.data.captions.transforms import AUGMENTS
    from ovseg.data.synthetic.shapes import BACKGROUNDS
    from ovseg.federated.wire import TRANSPORTS
    from ovseg.models.mosaic import LAYOUTS

    assert (tree.AUGMENTS, tree.BACKGROUNDS, tree.TRANSPORTS, tree.MOSAIC_LAYOUTS) == (AUGMENTS, BACKGROUNDS,
                                                                                       TRANSPORTS, LAYOUTS)


def test_every_sweep_space_value_loads():
    """Each shipped space's fixed overrides with every choice and both ends of every range, on tiny."""
    for path in sorted((CONFIG_DIR / "spaces").glob("*.yaml")):
        space = yaml.safe_load(path.read_text())
        base = merge_dicts(to_dict(load_config("tiny")), nest_overrides(space.get("fixed", {})))
        for key, sampler in space["search"].items():
            ((_kind, values),) = sampler.items()
            for value in values:  # choice: each option; uniform / loguniform / randint: both ends
                from_dict(Config, merge_dicts(base, nest_overrides({key: value})))
