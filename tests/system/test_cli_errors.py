"""A user's mistake on the command line is one line on stderr and exit status 2, never a traceback (ovseg/cli.py).

The commands run in-process (``main(argv)``); one test runs the real entry point as a subprocess.
"""

import functools
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ovseg.checkpoint import FORMAT
from ovseg.cli import command
from ovseg.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def _main(script: str):
    spec = importlib.util.spec_from_file_location(f"cli_{Path(script).stem}", ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _bad_checkpoint(tmp: Path) -> Path:
    """An ovseg checkpoint whose stored config has a value its key does not allow."""
    path = tmp / "bad.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={"format": FORMAT, "step": "0",
                                                           "config": json.dumps({"train": {"log_every": 0}})})
    return path


CASES = [  # (script, argv ({tmp} is a fresh folder), the one line's start)
    ("platform/pretrain.py", ["train.log_every=0"],
     "pretrain: error: config key 'train.log_every' must be an integer >= 1, got 0"),
    ("platform/pretrain.py", ["loss.no_such_weight=1"], "pretrain: error: unknown config key(s) ['loss.no_such_weight']"),
    ("platform/pretrain.py", ["seed=abc"], "pretrain: error: config key 'seed' expects an integer, got 'abc'"),
    ("platform/pretrain.py", ["--config", "no-such"], "pretrain: error: unknown config 'no-such'; available:"),
    ("platform/pretrain.py", ["--config-file", "{tmp}/none.yaml"], "pretrain: error: config file {tmp}/none.yaml does not"),
    ("platform/pretrain.py", ["--config-file", "{tmp}/broken.yaml"], "pretrain: error: {tmp}/broken.yaml: not valid YAML"),
    ("platform/pretrain.py", ["model.vision.depths=[1"], "pretrain: error: override 'model.vision.depths=[1': the value"),
    ("platform/simulate.py", ["--config", "debug", "fed.strategy=bogus"],
     "simulate: error: config key 'fed.strategy' must be one of 'fedavg'"),
    ("platform/demo.py", ["--config", "no-such"], "demo: error: unknown config 'no-such'"),
    ("platform/make_sites.py", ["--out", "{tmp}/sites", "--world", "{tmp}/none"], "make_sites: error: {tmp}/none is not"),
    ("platform/make_synthetic.py", ["--out", "{tmp}/w", "--image-size", "3"], "make_synthetic: error: image_size"),
    ("platform/prepare_captions.py", ["{tmp}/none", "{tmp}/out"], "prepare_captions: error: caption shard not found"),
    ("platform/evaluate.py", ["{tmp}/bad.safetensors"],
     "evaluate: error: {tmp}/bad.safetensors: the checkpoint's stored config is not valid: config key 'train.log_every'"),
    ("platform/predict.py", ["{tmp}/bad.safetensors", "{tmp}/a.png", "--classes", "cat"],
     "predict: error: {tmp}/bad.safetensors: the checkpoint's stored config is not valid"),
]


@pytest.mark.parametrize("script, argv, line", CASES, ids=[f"{Path(s).stem}:{' '.join(a)}" for s, a, _ in CASES])
def test_a_mistake_is_one_line_and_exit_code_2(tmp_path, capsys, script, argv, line):
    (tmp_path / "broken.yaml").write_text("train: {lr: [\n")
    _bad_checkpoint(tmp_path)
    main = _main(script)
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(line.format(tmp=tmp_path)), err


def test_debug_shows_the_traceback():
    with pytest.raises(ConfigError, match="'train.log_every'"):
        _main("platform/pretrain.py")(["--debug", "train.log_every=0"])


def test_only_user_errors_become_one_line(capsys):
    @command("tool")
    def main(argv=None):
        raise {"value": ValueError("a bad\n  value"), "missing": FileNotFoundError("no such file"),
               "bug": KeyError("a bug")}[argv[0]]

    assert main(["value"]) == 2 and main(["missing"]) == 2
    assert capsys.readouterr().err.splitlines() == ["tool: error: a bad value", "tool: error: no such file"]
    with pytest.raises(KeyError):  # anything else is a bug: it keeps its traceback
        main(["bug"])


def test_the_real_entry_point_prints_one_line():
    r = subprocess.run([sys.executable, "platform/pretrain.py", "fed.max_update_norm=nan"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    line = "pretrain: error: config key 'fed.max_update_norm' must be a finite number > 0, got nan"
    assert r.stderr.strip().splitlines() == [line]
