"""Flower glue for the hybrid federation: the only package that imports Flower.

``clients/ovseg_fl/{server_app,client_app}.py`` expose ``make_server_app()`` / ``make_client_app()``; the
rules (what travels, checks, site kinds, local training) live in ``ovseg.federated`` and are framework-free.

    config.py    a Flower run config -> the ovseg config tree
    records.py   named tensors <-> ArrayRecords (float32 / bfloat16 transport)
    replies.py   what a site's reply may hold (the server's per-site checks and the guard share them)
    guard.py     client mods: privacy guard, DP clipping
    secagg.py    SecAgg+ (fed.secagg): the site's mod and the server's workflow
    client.py    the ClientApp (train / evaluate actions on a site's shards)
    strategy.py  strategy factory and the guard that checks every reply before aggregation
    server.py    the ServerApp: rounds, central evaluation, MLflow, checkpoints, resume
"""

from ...lazy import lazy_exports

# imported on first use (ovseg/lazy.py): a ClientApp process that only relays SecAgg+ keys imports no torch
__getattr__, __dir__ = lazy_exports(__name__, {
    "make_client_app": ".client", "config_from_run": ".config", "privacy_guard_mod": ".guard",
    "privacy_violations": ".guard", "record_to_tensors": ".records", "to_record": ".records",
    "make_server_app": ".server", "GuardedStrategy": ".strategy", "build_strategy": ".strategy"})

__all__ = ["GuardedStrategy", "build_strategy", "config_from_run", "make_client_app", "make_server_app",
           "privacy_guard_mod", "privacy_violations", "record_to_tensors", "to_record"]
