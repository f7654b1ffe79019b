"""The site's ClientApp: train and evaluate actions on the site's own shards.

Node config (each SuperNode's ``--node-config``): ``data-path`` (the site's folder), ``data-kind`` (a kind of
``ovseg.federated.kinds``), optional ``base-checkpoint`` (the site's copy of the starting checkpoint, for the
frozen towers), optional ``audit-log`` (a JSON-lines file describing every outgoing message). In a
simulation, virtual node ``partition-id`` i uses the i-th site of ``fed.sites_dir``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from typing import TYPE_CHECKING

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from .config import ARRAYS, CONFIG, FINGERPRINT, METRICS, config_from_run
from .guard import dp_clipping_mod, privacy_guard_mod
from .secagg import secagg_mod

if TYPE_CHECKING:
    from ...config import Config
    from ...federated.sites import Site

# The model, the site's data and the tensor records are imported inside the actions that use them: the SuperNode
# starts one ClientApp process per message, and SecAgg+'s key-exchange and unmasking stages need no torch.


def _site_of(context: Context, cfg: Config) -> tuple[Site, str | None]:
    from ...federated.sites import Site

    node = context.node_config
    if "data-path" in node:
        return Site.open(str(node["data-path"]), node.get("data-kind") or None), node.get("base-checkpoint")
    if "partition-id" in node:  # a simulation's virtual node
        if not cfg.fed.sites_dir:
            raise ValueError("simulation nodes need fed.sites_dir (a folder made by platform/make_sites.py)")
        sites = sorted(p for p in Path(cfg.fed.sites_dir).expanduser().glob("site-*") if p.is_dir())
        pid = int(node["partition-id"])
        if pid >= len(sites):
            raise ValueError(f"virtual node {pid}: {cfg.fed.sites_dir} holds only {len(sites)} sites")
        return Site.open(sites[pid]), None
    raise ValueError("this SuperNode has no data-path in its --node-config (data-path=/site data-kind=caption)")


def _client_model(msg: Message, context: Context, run_config: dict):
    from ...federated.exchange import build_site_model, exchange_keys, frozen_fingerprint, set_tensors
    from .records import record_to_tensors

    cfg = config_from_run(run_config)
    site, base = _site_of(context, cfg)
    model, cfg = build_site_model(cfg, base or cfg.fed.init_checkpoint)
    keys = exchange_keys(model, cfg)
    expected = msg.content[CONFIG].get(FINGERPRINT)
    if expected is not None and expected != frozen_fingerprint(model, cfg):
        raise ValueError("this site's frozen towers differ from the server's (fingerprint mismatch): give the node "
                         "the federation's starting checkpoint as base-checkpoint")
    set_tensors(model, record_to_tensors(msg.content[ARRAYS]), keys)
    return model, cfg, site, keys


def _train(msg: Message, context: Context, run_config: dict) -> Message:
    from ...federated.exchange import get_tensors
    from ...federated.sites import local_train, site_metric_names
    from .records import to_record

    model, cfg, site, keys = _client_model(msg, context, run_config)
    conf = msg.content[CONFIG]
    rnd = int(conf.get("server-round", 0))
    mu = float(conf.get("proximal-mu", cfg.fed.proximal_mu))
    # a simulation's virtual site is its partition (node ids are drawn anew in every simulation), so a rerun draws
    # the same batches; a deployed site is its node
    site_id = int(context.node_config.get("partition-id", context.node_id))
    seed = cfg.seed * 1_000_003 + rnd * 7919 + site_id % 1_000_000
    t0 = time.perf_counter()
    metrics = local_train(model, cfg, site, steps=cfg.fed.local_steps, seed=seed, proximal_mu=mu)
    arrays = to_record(get_tensors(model, keys), cfg.fed.transport)
    metrics.update({"bytes-sent": float(arrays.count_bytes()), "train-seconds": time.perf_counter() - t0})
    # Flower aggregates only replies whose metrics have identical keys: every site reports the same set
    # (a loss a site's data does not have is 0).
    metrics = {k: float(metrics.get(k, 0.0)) for k in site_metric_names()}
    return Message(RecordDict({ARRAYS: arrays, METRICS: MetricRecord(metrics)}), reply_to=msg)


def _evaluate(msg: Message, context: Context, run_config: dict) -> Message:
    from ...federated.sites import site_evaluate

    model, cfg, site, _ = _client_model(msg, context, run_config)
    result = site_evaluate(model, cfg, site)
    metrics = {"num-examples": 0.0, "site-miou": 0.0}  # the same keys from every site (Flower checks)
    if result is not None:
        metrics = {"num-examples": float(result.num_images), "site-miou": float(result.miou)}
    return Message(RecordDict({METRICS: MetricRecord(metrics)}), reply_to=msg)


def make_client_app(extra_mods: Iterable = (), run_config: dict | None = None) -> ClientApp:
    """The site's ClientApp. ``extra_mods`` run inside the privacy guard (tests inject faults with them);
    ``run_config`` gives defaults under the run's own config (``flwr.simulation.run_simulation`` has none)."""
    app = ClientApp(mods=[privacy_guard_mod, secagg_mod, *extra_mods, dp_clipping_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return _train(msg, context, {**(run_config or {}), **dict(context.run_config)})

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return _evaluate(msg, context, {**(run_config or {}), **dict(context.run_config)})

    return app
