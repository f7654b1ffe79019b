"""Secure aggregation as an option (``fed.secagg: true``): Flower's SecAgg+ (Bell et al., CCS 2020), its
``SecAggPlusWorkflow`` on the server and ``secaggplus_mod`` at each site.

The server learns only the example-weighted mean of the sites' updates, never one site's. What travels is each
site's *delta* (its weights minus the global ones it started from), so that the protocol's per-value clipping
range (``fed.secagg_clip``) is about the size of a round's change, not of the weights; each value of a site's delta
is clipped to it, which also bounds how far one site can pull any value. The weight is the site's example count,
which the protocol caps at ``max_examples`` (one round's ``local_steps x local_batch``). What cannot be checked
under SecAgg+: one site's update (its norm, its finiteness), only the aggregate's. FedAvg only (robust rules and
server-side DP need the individual updates); the sites' own evaluation is not run (it would need its own
protocol).

SecAgg+ speaks Flower's legacy messages (``fitins.*`` / ``fitres.*`` records); ``secagg_mod`` translates them to
and from the site's ordinary train action, and the site's privacy guard checks the plain reply before it is masked.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.compat.common import recorddict_compat as compat
from flwr.server.strategy import Strategy

from ...config import Config
from .config import ARRAYS, CONFIG, FINGERPRINT, METRICS, max_examples, train_metric_keys
from .replies import announced_arrays, scalar_metrics

log = logging.getLogger("ovseg.flower")

KEYS_CONFIG = "exchange-keys"  # the names of the legacy message's (unnamed) tensors, in order, one per line
FIT_OK = "Success"
# what a site's SecAgg+ reply may hold: the protocol's own values (public keys, encrypted shares, the masked
# vector, secret shares) and, with the masked vector, the plain train metrics and the example count
PROTOCOL_REPLY_KEYS = {Key.PUBLIC_KEY_1, Key.PUBLIC_KEY_2, Key.DESTINATION_LIST, Key.CIPHERTEXT_LIST,
                       Key.MASKED_PARAMETERS, Key.NODE_ID_LIST, Key.SHARE_LIST}


# ---------------------------------------------------------------------------------------------- the site


def is_secagg(msg: Message) -> bool:
    return msg.metadata.message_type == "train" and RECORD_KEY_CONFIGS in msg.content.config_records


def secagg_mod(msg: Message, context: Context, call_next) -> Message:
    """Run SecAgg+ for the train messages that carry it; everything else passes through."""
    if not is_secagg(msg):
        return call_next(msg, context)
    return secaggplus_mod(msg, context, lambda m, c: _delta_reply(m, c, call_next))


def _delta_reply(msg: Message, context: Context, call_next) -> Message:
    """Legacy FitIns -> the site's ordinary train message -> its delta as a legacy FitRes (what SecAgg+ masks).
    The plain reply is checked by the privacy guard's rules first: a violation raises, and the outer guard
    sends a fixed error."""
    from .guard import privacy_violations
    from .records import record_to_numpy_f32  # torch: only this stage of SecAgg+ handles tensors

    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    names = str(fitins.config.get(KEYS_CONFIG, "")).split("\n")
    start = parameters_to_ndarrays(fitins.parameters)
    if len(names) != len(start):
        raise ValueError(f"SecAgg+ train message: {len(start)} tensors but {len(names)} names")
    config = {k: v for k, v in fitins.config.items() if k != KEYS_CONFIG}
    msg.content = RecordDict({ARRAYS: ArrayRecord({n: Array(np.asarray(a, np.float32)) for n, a in zip(names, start)}),
                              CONFIG: ConfigRecord(config)})
    announced = announced_arrays(msg.content)
    reply = call_next(msg, context)
    if reply.has_error():
        raise RuntimeError("the site's train action failed")
    bad = privacy_violations(reply.content, "train", announced)
    if bad:
        raise PermissionError(f"privacy guard: {bad}")
    trained = record_to_numpy_f32(reply.content[ARRAYS])
    clip = float(fitins.config.get("secagg-clip", math.inf))
    delta = []
    for name, a in zip(names, start):
        d = trained[name] - a.astype(np.float32)
        if np.abs(d).max(initial=0.0) > clip:
            log.warning("SecAgg+: %s changed by up to %.3g this round; values beyond fed.secagg_clip %.3g are "
                        "clipped", name, float(np.abs(d).max()), clip)
        delta.append(d.reshape(1) if d.ndim == 0 else d)  # Flower's SecAgg+ loses 0-d arrays in unmasking
    metrics = {k: float(v) for k, v in reply.content[METRICS].items()}
    fitres = FitRes(Status(Code.OK, FIT_OK), ndarrays_to_parameters(delta), int(metrics["num-examples"]), metrics)
    return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)


def secagg_violations(content: RecordDict) -> list[str]:
    """What a site's SecAgg+ reply holds beyond the protocol's values, the declared metrics and the count."""
    allowed = {RECORD_KEY_CONFIGS: ConfigRecord, "fitres.parameters": ArrayRecord, "fitres.metrics": ConfigRecord,
               "fitres.num_examples": MetricRecord, "fitres.status": ConfigRecord}
    bad = []
    for name, record in content.items():
        if name not in allowed or not isinstance(record, allowed[name]):
            bad.append(f"record {name!r} ({type(record).__name__}) is not part of a SecAgg+ reply")
    proto = content.get(RECORD_KEY_CONFIGS)
    if isinstance(proto, ConfigRecord):
        for k, v in proto.items():
            values = v if isinstance(v, list) else [v]
            if k not in PROTOCOL_REPLY_KEYS or not all(isinstance(x, (bytes, int)) for x in values):
                bad.append(f"SecAgg+ value {k!r} of type {type(v).__name__} is not part of the protocol")
    if "fitres.parameters" in content and len(content["fitres.parameters"]) > 0:
        bad.append("the plain update would leave the site (it must be masked)")
    if "fitres.metrics" in content:
        _, reason = scalar_metrics(content["fitres.metrics"], train_metric_keys())
        if reason is not None:
            bad.append(f"fitres.metrics: {reason}")
    if "fitres.num_examples" in content:
        n = dict(content["fitres.num_examples"])
        if set(n) != {"num_examples"} or not isinstance(n["num_examples"], (int, float)):
            bad.append("fitres.num_examples holds more than the count")
    if "fitres.status" in content and dict(content["fitres.status"]) != {"code": int(Code.OK.value),
                                                                         "message": FIT_OK}:
        bad.append("fitres.status carries text other than the fixed success")
    return bad


# ---------------------------------------------------------------------------------------------- the server


def run_secagg(grid, context: Context, cfg: Config, keys: list[str], initial: ArrayRecord, fingerprint: str,
               guard, evaluate_fn, num_rounds: int) -> None:
    """``num_rounds`` SecAgg+ rounds: Flower's DefaultWorkflow with SecAggPlusWorkflow as its fit step; central
    evaluation and checkpoints through ``evaluate_fn`` (as in the plain federation), refusals and site metrics
    through ``guard`` (a GuardedStrategy, for its logging)."""
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    f = cfg.fed
    strategy = _SecAggStrategy(cfg, keys, initial, fingerprint, guard, evaluate_fn)
    legacy = LegacyContext(context, config=ServerConfig(num_rounds=num_rounds, round_timeout=f.round_timeout),
                           strategy=strategy)
    workflow = DefaultWorkflow(
        fit_workflow=SecAggPlusWorkflow(num_shares=float(f.secagg_shares),
                                        reconstruction_threshold=float(f.secagg_threshold),
                                        max_weight=float(max_examples(cfg)), clipping_range=float(f.secagg_clip),
                                        timeout=f.round_timeout),
        evaluate_workflow=lambda _grid, _context: None)  # the sites' own evaluation is not part of SecAgg+
    workflow(grid, legacy)


class _SecAggStrategy(Strategy):
    """The legacy Strategy SecAggPlusWorkflow drives: it samples the sites, turns the mean delta it is given into
    the next global model (refusing a non-finite or too large one) and evaluates through ``evaluate_fn``."""

    def __init__(self, cfg: Config, keys: list[str], initial: ArrayRecord, fingerprint: str, guard, evaluate_fn):
        self.cfg, self.keys, self.fingerprint, self.guard, self.evaluate_fn = cfg, keys, fingerprint, guard, evaluate_fn
        from .records import record_to_numpy_f32

        arrays = record_to_numpy_f32(initial)
        self.initial = ndarrays_to_parameters([arrays[k] for k in keys])
        self.current: list[np.ndarray] = [arrays[k] for k in keys]
        self.aggregated = False

    def initialize_parameters(self, client_manager):
        return self.initial

    def configure_fit(self, server_round, parameters, client_manager):
        f = self.cfg.fed
        self.current = [np.asarray(a, np.float32) for a in parameters_to_ndarrays(parameters)]
        available = client_manager.num_available()
        num = max(int(available * f.fraction_train), f.min_sites)
        clients = client_manager.sample(num_clients=num, min_num_clients=f.min_sites)
        self.guard._sent = {c.node_id for c in clients}
        self.aggregated = False
        config = {"server-round": self.guard.offset + server_round, FINGERPRINT: self.fingerprint,
                  KEYS_CONFIG: "\n".join(self.keys), "secagg-clip": float(f.secagg_clip)}
        return [(c, FitIns(parameters, dict(config))) for c in clients]

    def aggregate_fit(self, server_round, results, failures):
        self.aggregated = True
        g = self.guard
        step = g.offset + server_round
        site_metrics = {}
        for proxy, res in results:
            metrics, reason = scalar_metrics(ConfigRecord(res.metrics), train_metric_keys())
            if reason is None:
                site_metrics[proxy.node_id] = metrics
        replied = {proxy.node_id for proxy, _ in results}
        for node in sorted(g._sent - replied):
            g._refuse(step, node, "no masked update in this SecAgg+ round (failed, refused by its guard or late)")
        g._log_sites(step, site_metrics, 0)
        if not results:
            return None, {}
        mean = [np.asarray(a, np.float64).reshape(c.shape)
                for a, c in zip(parameters_to_ndarrays(results[0][1].parameters), self.current)]
        norm = math.sqrt(sum(float(np.sum(d ** 2)) for d in mean))
        if not all(np.isfinite(d).all() for d in mean) or not norm <= self.cfg.fed.max_update_norm:
            g._refuse(step, -1, f"the SecAgg+ aggregate's norm is {norm:.4g}: previous model kept")
            return None, {}
        new = [(c.astype(np.float64) + d).astype(np.float32) for c, d in zip(self.current, mean)]
        g.tracker.log_metrics({"fed/secagg_update_norm": norm}, step)
        return ndarrays_to_parameters(new), {}

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        if server_round > 0 and not self.aggregated:  # the protocol stopped before its unmask stage
            self.guard._refuse(self.guard.offset + server_round, -1,
                               "the SecAgg+ round halted (too few sites completed it): previous model kept")
        arrays = parameters_to_ndarrays(parameters)
        record = ArrayRecord({k: Array(np.asarray(a, np.float32)) for k, a in zip(self.keys, arrays)})
        metrics = self.evaluate_fn(server_round, record)
        return None if metrics is None else (0.0, dict(metrics))
