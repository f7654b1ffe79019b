"""Checkpoints: round trip, atomic writes, and no unpickling of anything."""

import pickle
import shutil

import pytest
import torch

import ovseg
from ovseg import build_model, load_checkpoint, load_config, save_checkpoint
from ovseg.checkpoint import read_checkpoint
from ovseg.models.text import resolve_dir


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this would create the marker file
        return (open, (str(self.marker), "w"))


def test_round_trip_restores_weights_config_step_and_metrics(tmp_path):
    config = load_config("debug", ["loss.mask_weight=0.1"])
    model = build_model(config)
    model.init_momentum()
    path = save_checkpoint(tmp_path / "ckpt.safetensors", model, config, step=42,
                           metrics={"zeroshot/synthetic/miou": 0.31}, extra={"optim/step": torch.tensor([42.0])})
    loaded, cfg = load_checkpoint(path)
    assert cfg == config and read_checkpoint(path).step == 42
    assert read_checkpoint(path).metrics == {"zeroshot/synthetic/miou": 0.31}
    assert loaded.momentum_vision is not None
    ref = model.state_dict()
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, ref[k]), k
    assert torch.equal(read_checkpoint(path).extra["optim/step"], torch.tensor([42.0]))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]


def test_a_failed_write_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    model = build_model("debug")
    path = save_checkpoint(tmp_path / "c.safetensors", model, load_config("debug"), step=1)
    before = path.read_bytes()

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ovseg.checkpoint, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, load_config("debug"), step=2)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


def test_a_pickle_is_refused_without_being_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.safetensors"
    bad.write_bytes(pickle.dumps({"weights": _Exploit(marker)}))
    with pytest.raises(ValueError, match="not a readable ovseg checkpoint"):
        load_checkpoint(bad)
    assert not marker.exists()


def test_truncated_and_foreign_files_get_clear_errors(tmp_path):
    from safetensors.torch import save_file

    model = build_model("debug")
    path = save_checkpoint(tmp_path / "c.safetensors", model, load_config("debug"))
    (tmp_path / "cut.safetensors").write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="cut.safetensors"):
        read_checkpoint(tmp_path / "cut.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not an ovseg checkpoint"):
        read_checkpoint(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "missing.safetensors")


def test_checkpoint_of_a_pretrained_text_tower_loads_without_its_directory(tmp_path):
    src = resolve_dir("builtin:minilm")
    text_dir = tmp_path / "minilm"
    shutil.copytree(src, text_dir)
    cfg = load_config("debug", [f"model.text.pretrained_dir={text_dir}", "model.text.tokenizer_dir=builtin:minilm"])
    model = build_model(cfg).eval()
    path = save_checkpoint(tmp_path / "c.safetensors", model, cfg)
    shutil.rmtree(text_dir)
    loaded, _ = load_checkpoint(path)
    loaded.eval()
    ids, mask = model.tokenizer(["a cat"])
    with torch.no_grad():
        assert torch.allclose(loaded.encode_text(ids, mask), model.encode_text(ids, mask), atol=1e-6)
