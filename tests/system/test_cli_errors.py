"""A user's mistake on the command line is one line on stderr and exit status 2, never a traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("argv, message", [
    (["platform/pretrain.py", "loss.no_such_weight=1"], "pretrain: error: unknown config key(s) ['loss.no_such_weight']"),
    (["platform/pretrain.py", "loss.mosaic_layout=grid"], "pretrain: error: loss.mosaic_layout must be"),
    (["tuning/sweep.py", "--space", "no-such-space"], "sweep: error: search space"),
])
def test_config_mistakes_are_one_line(argv, message):
    r = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), r.stderr
    assert "Traceback" not in r.stderr
