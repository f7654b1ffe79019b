"""A Flower run's config -> the ovseg config tree; the names every part of the federation shares.

Run config: ``config`` names the ovseg configuration (``tiny``, a YAML path...); every other key is a dotted
ovseg override (``fed.rounds``, ``fed.strategy``, ``data.synthetic_dir``...) with a YAML-parsed value, the
same keys YAML files, the command line and Tune use. What each key allows (``fed.strategy`` one of
``STRATEGIES``...) is checked where the tree is built (ovseg/config/tree.py).
"""

from __future__ import annotations

from ...config import Config, from_dict, load_config, merge_dicts, nest_overrides, to_dict
from ...config.tree import STRATEGIES

ARRAYS, CONFIG, METRICS = "arrays", "config", "metrics"  # the record names of every message
FINGERPRINT = "frozen-fingerprint"
EVAL_METRICS = ("num-examples", "site-miou")  # the metric keys of every site's evaluate reply, nothing else


def train_metric_keys() -> tuple[str, ...]:
    """The metric keys of every site's train reply, nothing else (the loss table's terms and the round's counts)."""
    from ...federated.sites import site_metric_names

    return site_metric_names()


def max_examples(cfg: Config) -> int:
    """The most examples one site's round can use: ``fed.local_steps`` batches of ``fed.local_batch``. Honest
    sites report exactly the examples they trained on; a larger claim is refused, so no site can outweigh the
    others by the count it claims."""
    return cfg.fed.local_steps * cfg.fed.local_batch
ROUND_FILE = "round-{:04d}.safetensors"

__all__ = ["ARRAYS", "CONFIG", "FINGERPRINT", "METRICS", "ROUND_FILE", "STRATEGIES", "config_from_run"]


def config_from_run(run_config: dict) -> Config:
    """The ovseg config of a Flower run: ``config`` names it, every other key is a dotted override."""
    name = str(run_config.get("config", "tiny"))
    nested = nest_overrides({k: v for k, v in run_config.items() if k != "config"})
    return from_dict(Config, merge_dicts(to_dict(load_config(name)), nested))
