import pytest
import yaml

from ovseg.config import Config, available_configs, flatten, load_config, parse_overrides, save_config


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
