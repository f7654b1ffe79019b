"""A Flower run's config -> the ovseg config tree; the names every part of the federation shares.

Run config: ``config`` names the ovseg configuration (``tiny``, a YAML path...); every other key is a dotted
ovseg override (``fed.rounds``, ``fed.strategy``, ``data.synthetic_dir``...) with a YAML-parsed value, the
same keys YAML files, the command line and Tune use.
"""

from __future__ import annotations

import yaml

from ...config import Config, from_dict, load_config, merge_dicts, to_dict
from ...federated.wire import TRANSPORTS

ARRAYS, CONFIG, METRICS = "arrays", "config", "metrics"  # the record names of every message
FINGERPRINT = "frozen-fingerprint"
STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedtrimmedavg", "fedmedian", "krum", "multikrum", "bulyan")
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


def config_from_run(run_config: dict) -> Config:
    """The ovseg config of a Flower run: ``config`` names it, every other key is a dotted override."""
    name = str(run_config.get("config", "tiny"))
    nested: dict = {}
    for key, value in run_config.items():
        if key == "config":
            continue
        if isinstance(value, str):  # strings are YAML ("[synthetic]" is a list, "null" is None, "" is unset)
            value = yaml.safe_load(value) if value.strip() else ""
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    cfg = from_dict(Config, merge_dicts(to_dict(load_config(name)), nested))
    f = cfg.fed
    if f.strategy not in STRATEGIES:
        raise ValueError(f"fed.strategy must be one of {STRATEGIES}, got {f.strategy!r}")
    if f.transport not in TRANSPORTS:
        raise ValueError(f"fed.transport must be one of {TRANSPORTS}, got {f.transport!r}")
    if f.dp.noise_multiplier > 0 and f.dp.mode == "client" and f.transport != "float32":
        raise ValueError("client-side DP clipping works on float32 updates: set fed.transport=float32")
    if f.secagg and (f.strategy != "fedavg" or f.transport != "float32" or f.dp.noise_multiplier > 0):
        raise ValueError("fed.secagg works with fed.strategy=fedavg, fed.transport=float32 and no DP (the server "
                         "never sees one site's update, so it cannot clip, rank or trim them)")
    if f.dp.mode not in ("server", "client"):
        raise ValueError(f"fed.dp.mode must be 'server' or 'client', got {f.dp.mode!r}")
    return cfg
