"""The server's strategy: any Flower strategy, wrapped so that only checked updates reach aggregation.

The strategy (FedAvg, FedProx, FedAdam; the robust FedTrimmedAvg, FedMedian, Krum, MultiKrum, Bulyan;
optionally wrapped in Flower's differential-privacy clipping) sees only replies that passed every check, one site
at a time (``replies.check_train_metrics``: the records, the metric keys, finite numbers, an example count no
larger than one round can use; ``ovseg.federated.wire.check_update``: the arrays and the update norm). A refused
site is logged with the reason (MLflow ``fed/refused`` and ``refusals.jsonl``) and the round goes on without it;
sites that did not answer by ``fed.round_timeout`` are counted (``fed/stragglers``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp import strategy as fl_strategy

from ...config import Config
from ...federated.wire import check_update
from ...train.task import metric_names
from .config import ARRAYS, CONFIG, METRICS, STRATEGIES, max_examples, train_metric_keys
from .records import from_record, record_to_numpy_f32
from .replies import check_evaluate_reply, check_train_metrics

log = logging.getLogger("ovseg.flower")


def build_strategy(cfg: Config) -> fl_strategy.Strategy:
    f = cfg.fed
    common = dict(fraction_train=f.fraction_train, fraction_evaluate=f.fraction_evaluate, min_train_nodes=f.min_sites,
                  min_evaluate_nodes=0 if f.fraction_evaluate == 0 else 1, min_available_nodes=f.min_sites,
                  evaluate_metrics_aggr_fn=aggregate_site_eval)
    if f.strategy == "fedavg":
        inner = fl_strategy.FedAvg(**common)
    elif f.strategy == "fedprox":
        inner = fl_strategy.FedProx(**common, proximal_mu=f.proximal_mu)
    elif f.strategy == "fedadam":
        inner = fl_strategy.FedAdam(**common, eta=f.server_lr, eta_l=f.lr)
    elif f.strategy == "fedtrimmedavg":
        inner = fl_strategy.FedTrimmedAvg(**common, beta=f.trim_beta)
    elif f.strategy == "fedmedian":
        inner = fl_strategy.FedMedian(**common)
    elif f.strategy == "krum":
        inner = fl_strategy.Krum(**common, num_malicious_nodes=f.num_malicious)
    elif f.strategy == "multikrum":
        inner = fl_strategy.MultiKrum(**common, num_malicious_nodes=f.num_malicious,
                                      num_nodes_to_select=f.krum_select)
    elif f.strategy == "bulyan":
        inner = fl_strategy.Bulyan(**common, num_malicious_nodes=f.num_malicious)
    else:
        raise ValueError(f"fed.strategy must be one of {STRATEGIES}, got {f.strategy!r}")
    if f.dp.noise_multiplier > 0:
        from flwr.serverapp import (
            NeighboringRelation,
            PrivacyConfig,
            RdpAccountant,
            SamplingMethod,
        )

        accountant = None
        if f.strategy == "fedavg":  # Flower's accountant follows FedAvg's aggregation only
            accountant = RdpAccountant(PrivacyConfig(
                target_delta=f.dp.delta, population_size=f.min_sites,
                neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                sampling_method=SamplingMethod.NO_AMPLIFICATION))
        wrapper = (fl_strategy.DifferentialPrivacyServerSideFixedClipping if f.dp.mode == "server"
                   else fl_strategy.DifferentialPrivacyClientSideFixedClipping)
        inner = wrapper(inner, f.dp.noise_multiplier, f.dp.clipping_norm, f.min_sites, accountant=accountant)
    return inner


def aggregate_site_eval(contents: list[RecordDict], weight_key: str) -> MetricRecord:
    """Example-weighted mean of the sites' own mIoU over the sites that have a labelled split. The replies were
    checked by ``GuardedStrategy.aggregate_evaluate`` (``replies.check_evaluate_reply``) before they get here."""
    scores = [(float(c[METRICS][weight_key]), float(c[METRICS]["site-miou"])) for c in contents]
    scores = [(n, v) for n, v in scores if n > 0]
    total = sum(n for n, _ in scores)
    acc = sum(n * v for n, v in scores)
    return MetricRecord({"site-miou": acc / total, "num-examples": total} if total else {"num-examples": 0.0})


class GuardedStrategy(fl_strategy.Strategy):
    """Wraps any strategy: decodes bf16 updates, refuses malformed ones before aggregation, logs each site."""

    def __init__(self, inner: fl_strategy.Strategy, cfg: Config, keys: list[str], tracker, step_offset: int = 0):
        self.inner, self.cfg, self.keys, self.tracker, self.offset = inner, cfg, keys, tracker, step_offset
        self.reference: dict[str, np.ndarray] = {}
        self.refusals: list[dict] = []
        self.site_eval: dict[int, dict[str, float]] = {}  # round -> {"<node id>": its own val mIoU}
        self._sent: set[int] = set()
        self.late: dict[int, list[int]] = {}  # round -> the sites whose reply did not come by fed.round_timeout

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        self.reference = {k: v.astype(np.float64) for k, v in record_to_numpy_f32(arrays).items()}
        messages = self._global_round(self.inner.configure_train(server_round, arrays, config, grid), server_round)
        self._sent = {m.metadata.dst_node_id for m in messages}  # a site not heard from by the deadline is late
        return messages

    def _global_round(self, messages, server_round: int) -> list[Message]:
        """Sites see the federation's round, not this invocation's (Flower counts from 1 again after a restart):
        a resumed round draws the batches it would have drawn without the restart."""
        messages = list(messages)
        for m in messages:
            if CONFIG in m.content:
                m.content[CONFIG]["server-round"] = self.offset + server_round
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        step = self.offset + server_round
        replies = list(replies)
        kept, site_metrics = [], {}
        keys, cap = train_metric_keys(), max_examples(self.cfg)
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                self._refuse(step, node, f"the site failed: {msg.error.reason} (code {msg.error.code})")
                continue
            metrics, reason = check_train_metrics(msg.content, keys, cap)
            if reason is None:
                try:
                    arrays, dtypes = from_record(msg.content[ARRAYS])
                except (ValueError, TypeError) as e:
                    reason = f"unreadable arrays: {e}"
                else:
                    values, reason = check_update(arrays, dtypes, self.reference, self.cfg.fed.transport,
                                                  self.cfg.fed.max_update_norm)
            if reason is not None:
                self._refuse(step, node, reason)
                continue
            # the strategy sees a clean copy: float32 arrays and exactly the declared metrics
            content = RecordDict({ARRAYS: ArrayRecord({k: Array(v) for k, v in values.items()}),
                                  METRICS: MetricRecord(metrics)})
            msg.content = content
            kept.append(msg)
            site_metrics[node] = metrics
        late = sorted(self._sent - {m.metadata.src_node_id for m in replies})
        if late:
            self.late[step] = late
            print(f"[ovseg-fl] round {step}: {len(late)} late site(s) dropped from the round: {late}", flush=True)
        self._log_sites(step, site_metrics, len(late))
        if not kept:
            log.warning("round %d: no valid update; the global model stays as it was", step)
            return None, None
        arrays, metrics = self.inner.aggregate_train(server_round, kept)
        if arrays is not None:
            bad = [k for k, v in arrays.items() if not np.isfinite(v.numpy()).all()]
            if bad:  # a strategy's own arithmetic (e.g. an adaptive step) must not poison the global model
                log.error("round %d: the aggregate has non-finite values in %s; keeping the previous model",
                          step, bad[:3])
                self._refuse(step, -1, f"aggregate non-finite in {bad[:3]}: previous model kept")
                arrays = None
        spent = getattr(self.inner, "privacy_spent", None)
        if callable(spent) and spent() is not None:
            p = spent()
            self.tracker.log_metrics({"dp/epsilon": float(p.epsilon), "dp/delta": float(p.delta)}, step)
        return arrays, metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        return self._global_round(self.inner.configure_evaluate(server_round, arrays, config, grid), server_round)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        step = self.offset + server_round
        own, valid = {}, []  # each site's mIoU on its own labelled split: what the federation did for its data
        for msg in replies:
            if msg.has_error():
                continue
            metrics, reason = check_evaluate_reply(msg.content)
            if reason is not None:
                self._refuse(step, msg.metadata.src_node_id, f"evaluate reply: {reason}")
                continue
            msg.content = RecordDict({METRICS: MetricRecord(metrics)})
            valid.append(msg)
            if metrics["num-examples"] > 0:
                own[int(msg.metadata.src_node_id)] = metrics["site-miou"]
        replies = valid
        if own:
            self.site_eval[step] = {str(k): v for k, v in sorted(own.items())}
            self.tracker.log_metrics({f"site/{node}/val_miou": v for node, v in own.items()}, step)
            print(f"[ovseg-fl] round {step}: sites' own val mIoU " +
                  ", ".join(f"{node}: {v:.4f}" for node, v in sorted(own.items())), flush=True)
        metrics = self.inner.aggregate_evaluate(server_round, replies)
        if metrics is not None and "site-miou" in metrics:
            self.tracker.log_metrics({"fed/site_miou": float(metrics["site-miou"])}, step)
        return metrics

    def _refuse(self, step: int, node: int, reason: str) -> None:
        log.warning("round %d: refused the update of node %d: %s", step, node, reason)
        print(f"[ovseg-fl] round {step}: refused node {node}: {reason}", flush=True)
        self.refusals.append({"round": step, "node": int(node), "reason": reason})
        self.tracker.log_text("\n".join(json.dumps(r) for r in self.refusals), "refusals.jsonl")

    def _log_sites(self, step: int, site_metrics: dict[int, dict], late: int) -> None:
        out = {"fed/sites_accepted": float(len(site_metrics)), "fed/stragglers": float(late),
               "fed/refused": float(sum(r["round"] == step for r in self.refusals))}
        for node, m in site_metrics.items():
            for k in (*metric_names(), "num-examples", "bytes-sent"):
                if k in m:
                    out[f"site/{node}/{k.replace('-', '_')}"] = float(m[k])
        if site_metrics:
            out["fed/bytes_received"] = float(sum(m.get("bytes-sent", 0.0) for m in site_metrics.values()))
            n = sum(float(m["num-examples"]) for m in site_metrics.values())
            out["fed/num_examples"] = n
            out["train/loss"] = sum(float(m["num-examples"]) * float(m.get("loss", 0.0))
                                    for m in site_metrics.values()) / n
        self.tracker.log_metrics(out, step)
