"""Flower glue: the ServerApp and ClientApp of the hybrid federation (the only module that imports Flower).

``clients/ovseg_fl/{server_app,client_app}.py`` expose ``make_server_app()`` / ``make_client_app()``; the
rules (what travels, checks, local training) live in ``ovseg.federated`` and are framework-free.

Run config: ``config`` names the ovseg configuration (``tiny``, a YAML path...); every other key is a dotted
ovseg override (``fed.rounds``, ``fed.strategy``, ``data.synthetic_dir``...) with a YAML-parsed value,
the same keys YAML files, the command line and Tune use.

Node config (each SuperNode's ``--node-config``): ``data-path`` (the site's folder), ``data-kind``
(``caption`` | ``segmentation``), optional ``base-checkpoint`` (the site's copy of the starting checkpoint,
for the frozen towers), optional ``audit-log`` (a JSON-lines file describing every outgoing message). In a
simulation, virtual node ``partition-id`` i uses the i-th site of ``fed.sites_dir``.

Server, per round: the strategy (FedAvg, FedProx, FedAdam, FedTrimmedAvg, FedMedian; optionally wrapped in
Flower's differential-privacy clipping) sees only updates that passed ``ovseg.federated.check_update``;
refusals are logged with the node and the reason (MLflow ``fed/refused`` and a text artifact). After each
round: central zero-shot mIoU on ``eval.datasets`` (``zeroshot/<dataset>/miou``, step = round), per-round
site losses, example counts and bytes, the privacy budget spent (DP mode), and a checkpoint
``<fed.output_dir>/<fed.run_name>/round-XXXX.safetensors``; a restarted federation resumes from the last.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import yaml
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp import strategy as fl_strategy

from ..checkpoint import read_checkpoint, save_checkpoint
from ..config import Config, flatten, from_dict, load_config, merge_dicts, to_dict
from ..federated import (BF16_WIRE, TRANSPORTS, Site, build_site_model, check_update, encode_tensor,
                         exchange_keys, frozen_fingerprint, get_tensors, local_train, set_tensors, site_evaluate)

log = logging.getLogger("ovseg.flower")
ARRAYS, CONFIG, METRICS = "arrays", "config", "metrics"
FINGERPRINT = "frozen-fingerprint"
STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedtrimmedavg", "fedmedian")
ROUND_FILE = "round-{:04d}.safetensors"
TRAIN_METRICS = ("num-examples", "steps", "loss", "loss_contrast", "loss_entity", "loss_seg", "loss_mask",
                 "loss_multilabel", "loss_extra", "grad_norm", "skipped", "bytes-sent", "train-seconds")


# ---------------------------------------------------------------------------------------------- config


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
    if f.dp.mode not in ("server", "client"):
        raise ValueError(f"fed.dp.mode must be 'server' or 'client', got {f.dp.mode!r}")
    return cfg


# ---------------------------------------------------------------------------------------------- arrays


def to_record(tensors: dict[str, torch.Tensor], transport: str = "float32") -> ArrayRecord:
    """Named tensors -> ArrayRecord in the transport dtype (bfloat16 as uint16 bits, dtype 'bfloat16')."""
    record = ArrayRecord()
    for k, t in tensors.items():
        arr, dtype = encode_tensor(t, transport)
        wire = Array(arr)
        if dtype == BF16_WIRE:
            wire = Array(dtype=BF16_WIRE, shape=tuple(arr.shape), stype=wire.stype, data=wire.data)
        record[k] = wire
    return record


def from_record(record: ArrayRecord) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """ArrayRecord -> (raw numpy arrays as shipped, their wire dtypes)."""
    return {k: v.numpy() for k, v in record.items()}, {k: v.dtype for k, v in record.items()}


def record_to_tensors(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """Decode a record to float32 tensors: bfloat16 wire arrays, or any floating-point numpy dtype (server
    strategies such as FedAdam aggregate in float64). Site updates are checked strictly by ``check_update``."""
    from ..federated import decode_tensor

    arrays, dtypes = from_record(record)
    out = {}
    for k, a in arrays.items():
        if dtypes[k] != BF16_WIRE and a.dtype.kind == "f":
            out[k] = torch.from_numpy(np.array(a, dtype=np.float32))  # keeps 0-d arrays 0-d
        else:
            out[k] = torch.from_numpy(np.array(decode_tensor(a, dtypes[k]), dtype=np.float32))
    return out


# ---------------------------------------------------------------------------------------------- client


def _site_of(context: Context, cfg: Config) -> tuple[Site, str | None]:
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
    model, cfg, site, keys = _client_model(msg, context, run_config)
    conf = msg.content[CONFIG]
    rnd = int(conf.get("server-round", 0))
    mu = float(conf.get("proximal-mu", cfg.fed.proximal_mu))
    seed = cfg.seed * 1_000_003 + rnd * 7919 + int(context.node_id % 1_000_000)
    t0 = time.perf_counter()
    metrics = local_train(model, cfg, site, steps=cfg.fed.local_steps, seed=seed, proximal_mu=mu)
    arrays = to_record(get_tensors(model, keys), cfg.fed.transport)
    metrics.update({"bytes-sent": float(arrays.count_bytes()), "train-seconds": time.perf_counter() - t0})
    # Flower aggregates only replies whose metrics have identical keys: every site reports the same set
    # (a loss a site's data does not have is 0).
    metrics = {k: float(metrics.get(k, 0.0)) for k in TRAIN_METRICS}
    return Message(RecordDict({ARRAYS: arrays, METRICS: MetricRecord(metrics)}), reply_to=msg)


def _evaluate(msg: Message, context: Context, run_config: dict) -> Message:
    model, cfg, site, _ = _client_model(msg, context, run_config)
    result = site_evaluate(model, cfg, site)
    metrics = {"num-examples": 0.0, "site-miou": 0.0}  # the same keys from every site (Flower checks)
    if result is not None:
        metrics = {"num-examples": float(result.num_images), "site-miou": float(result.miou)}
    return Message(RecordDict({METRICS: MetricRecord(metrics)}), reply_to=msg)


def describe(content: RecordDict) -> dict:
    """What a message carries, without its values: record kinds, array dtypes/shapes, metric value types."""
    out = {}
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            out[name] = {"kind": "arrays", "arrays": {k: {"dtype": a.dtype, "shape": list(a.shape), "stype": a.stype}
                                                      for k, a in record.items()}}
        elif isinstance(record, MetricRecord):
            out[name] = {"kind": "metrics", "values": {k: type(v).__name__ for k, v in record.items()}}
        elif isinstance(record, ConfigRecord):
            out[name] = {"kind": "config", "values": {k: type(v).__name__ for k, v in record.items()}}
        else:
            out[name] = {"kind": type(record).__name__}
    return out


def privacy_violations(content: RecordDict) -> list[str]:
    """Anything an outgoing site message must not carry: only float arrays and numeric metrics may leave."""
    bad = []
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            for k, a in record.items():
                if a.dtype not in ("float32", BF16_WIRE):
                    bad.append(f"{name}/{k}: array dtype {a.dtype} (only float32 / bfloat16 parameters may leave)")
        elif isinstance(record, MetricRecord):
            for k, v in record.items():
                if not isinstance(v, (int, float)) or isinstance(v, bool):
                    bad.append(f"{name}/{k}: metric of type {type(v).__name__}")
        else:
            bad.append(f"{name}: a {type(record).__name__} (only ArrayRecord and MetricRecord may leave a site)")
    return bad


def privacy_guard_mod(msg: Message, context: Context, call_next) -> Message:
    """Outermost client mod: refuse to send anything but parameter arrays and scalar metrics, and keep error
    texts (which may name files, keys or captions) at the site, sending only the exception's type; optionally
    append a description of every outgoing message to the node's ``audit-log`` file."""
    try:
        reply = call_next(msg, context)
    except Exception as e:  # noqa: BLE001 - an error text may name the site's files: it stays in the site's log
        log.exception("the site's %s action failed", msg.metadata.message_type)
        reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                              reason=f"the site failed with {type(e).__name__}; details stay in the site's log"),
                        reply_to=msg)
    if not reply.has_error():
        bad = privacy_violations(reply.content)
        if bad:
            log.error("privacy guard: refusing to send %s", bad)
            reply = Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION,
                                  reason="privacy guard refused the reply (see the site's log)"), reply_to=msg)
    audit = context.node_config.get("audit-log")
    if audit:
        entry = {"message_type": reply.metadata.message_type, "error": reply.has_error(),
                 "records": {} if reply.has_error() else describe(reply.content)}
        with open(str(audit), "a") as f:
            f.write(json.dumps(entry) + "\n")
    return reply


def dp_clipping_mod(msg: Message, context: Context, call_next) -> Message:
    """Flower's client-side fixed clipping, applied when the server's strategy asks for it."""
    from flwr.clientapp.mod import fixedclipping_mod
    from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

    conf = next(iter(msg.content.config_records.values()), {})
    if KEY_CLIPPING_NORM in conf:
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


def make_client_app(extra_mods: Iterable = (), run_config: dict | None = None) -> ClientApp:
    """The site's ClientApp. ``extra_mods`` run inside the privacy guard (tests inject faults with them);
    ``run_config`` gives defaults under the run's own config (``flwr.simulation.run_simulation`` has none)."""
    app = ClientApp(mods=[privacy_guard_mod, *extra_mods, dp_clipping_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return _train(msg, context, {**(run_config or {}), **dict(context.run_config)})

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return _evaluate(msg, context, {**(run_config or {}), **dict(context.run_config)})

    return app


# ---------------------------------------------------------------------------------------------- server


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
    else:
        raise ValueError(f"fed.strategy must be one of {STRATEGIES}, got {f.strategy!r}")
    if f.dp.noise_multiplier > 0:
        from flwr.serverapp import NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod

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
    """Example-weighted mean of the sites' own mIoU over the sites that have a labelled split."""
    total, acc = 0.0, 0.0
    for c in contents:
        m = next(iter(c.metric_records.values()))
        n = float(m.get(weight_key, 0.0))
        if n > 0 and "site-miou" in m:
            total, acc = total + n, acc + n * float(m["site-miou"])
    return MetricRecord({"site-miou": acc / total, "num-examples": total} if total else {"num-examples": 0.0})


class GuardedStrategy(fl_strategy.Strategy):
    """Wraps any strategy: decodes bf16 updates, refuses malformed ones before aggregation, logs each site."""

    def __init__(self, inner: fl_strategy.Strategy, cfg: Config, keys: list[str], tracker, step_offset: int = 0):
        self.inner, self.cfg, self.keys, self.tracker, self.offset = inner, cfg, keys, tracker, step_offset
        self.reference: dict[str, np.ndarray] = {}
        self.refusals: list[dict] = []

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        self.reference = {k: v.astype(np.float64) for k, v in record_to_numpy_f32(arrays).items()}
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        step = self.offset + server_round
        kept, site_metrics = [], {}
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                self._refuse(step, node, f"the site failed: {msg.error.reason}")
                continue
            try:
                arrays, dtypes = from_record(msg.content[ARRAYS])
                metrics = dict(msg.content[METRICS])
            except (KeyError, ValueError, TypeError) as e:
                self._refuse(step, node, f"unreadable reply: {e}")
                continue
            values, reason = check_update(arrays, dtypes, self.reference, self.cfg.fed.transport,
                                          self.cfg.fed.max_update_norm)
            if reason is None and not float(metrics.get("num-examples", 0)) > 0:
                reason = "num-examples must be > 0"
            if reason is not None:
                self._refuse(step, node, reason)
                continue
            if dtypes and next(iter(dtypes.values())) != "float32":  # aggregate in float32
                msg.content[ARRAYS] = ArrayRecord({k: Array(v) for k, v in values.items()})
            kept.append(msg)
            site_metrics[node] = metrics
        self._log_sites(step, site_metrics)
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
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):
        metrics = self.inner.aggregate_evaluate(server_round, replies)
        if metrics is not None and "site-miou" in metrics:
            self.tracker.log_metrics({"fed/site_miou": float(metrics["site-miou"])}, self.offset + server_round)
        return metrics

    def _refuse(self, step: int, node: int, reason: str) -> None:
        log.warning("round %d: refused the update of node %d: %s", step, node, reason)
        print(f"[ovseg-fl] round {step}: refused node {node}: {reason}", flush=True)
        self.refusals.append({"round": step, "node": int(node), "reason": reason})
        self.tracker.log_text("\n".join(json.dumps(r) for r in self.refusals), "refusals.jsonl")

    def _log_sites(self, step: int, site_metrics: dict[int, dict]) -> None:
        out = {"fed/sites_accepted": float(len(site_metrics)),
               "fed/refused": float(sum(r["round"] == step for r in self.refusals))}
        for node, m in site_metrics.items():
            for k in ("loss", "loss_contrast", "loss_entity", "loss_seg", "num-examples", "bytes-sent"):
                if k in m:
                    out[f"site/{node}/{k.replace('-', '_')}"] = float(m[k])
        if site_metrics:
            out["fed/bytes_received"] = float(sum(m.get("bytes-sent", 0.0) for m in site_metrics.values()))
            n = sum(float(m["num-examples"]) for m in site_metrics.values())
            out["fed/num_examples"] = n
            out["train/loss"] = sum(float(m["num-examples"]) * float(m.get("loss", 0.0))
                                    for m in site_metrics.values()) / n
        self.tracker.log_metrics(out, step)


def record_to_numpy_f32(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record_to_tensors(record).items()}


def latest_round(ckpt_dir: Path) -> Path | None:
    files = sorted(ckpt_dir.glob("round-*.safetensors"))
    return files[-1] if files else None


def run_server(grid: Grid, run_config: dict) -> dict:
    """The coordinator's federation: resume or start, run the remaining rounds, evaluate, log, checkpoint."""
    from ..evaluate import evaluate, parse_eval_sets
    from ..tracking import MlflowTracker
    from ..trainer import synthetic_root

    cfg = config_from_run(run_config)
    model, cfg = build_site_model(cfg, cfg.fed.init_checkpoint)
    keys = exchange_keys(model, cfg)
    fingerprint = frozen_fingerprint(model, cfg)
    ckpt_dir = Path(cfg.fed.output_dir) / cfg.fed.run_name
    start, run_id, history = 0, None, []
    last = latest_round(ckpt_dir)
    if last is not None:
        ckpt = read_checkpoint(last)
        model.load_state_dict(ckpt.weights, strict=False)
        if frozen_fingerprint(model, cfg) != fingerprint:
            # every site builds its frozen towers from the starting checkpoint: they would refuse every round
            raise ValueError(f"{last}: this federation was started from another checkpoint (its frozen towers "
                             f"differ from {cfg.fed.init_checkpoint or 'a fresh model'}); to start over, choose a "
                             f"new fed.run_name or fed.output_dir")
        start, run_id = ckpt.step, ckpt.state.get("mlflow_run_id")
        history = list(ckpt.state.get("history", []))
        print(f"[ovseg-fl] resuming from {last} (round {start})", flush=True)
    tracker = MlflowTracker(cfg.fed.experiment, run_name=cfg.fed.run_name, run_id=run_id)
    if last is None:
        tracker.log_params(flatten(cfg))
    eval_sets = parse_eval_sets(cfg.eval.datasets, synthetic_root(cfg) / "val")
    strategy = GuardedStrategy(build_strategy(cfg), cfg, keys, tracker, step_offset=start)
    remaining = cfg.fed.rounds - start
    print(f"[ovseg-fl] {cfg.fed.strategy}: {len(keys)} tensors travel "
          f"({sum(model.state_dict()[k].numel() for k in keys) / 1e6:.2f} M values, {cfg.fed.transport} from sites); "
          f"rounds {start + 1}..{cfg.fed.rounds}", flush=True)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        step = start + server_round
        if server_round == 0 and start > 0:
            return None  # the resumed round was evaluated and logged before the restart
        set_tensors(model, record_to_tensors(arrays), keys)
        metrics = {}
        for bench in eval_sets:
            res = evaluate(model, bench, max_images=cfg.eval.max_images, num_overlays=cfg.eval.num_overlays,
                           bg_thresh=cfg.eval.bg_thresh)
            metrics.update(res.metrics())
            tracker.log_text(res.table(), f"eval/{res.name}/iou_round{step:04d}.csv")
            for i, img in enumerate(res.overlays):
                tracker.log_image(img, f"eval/{res.name}/round{step:04d}_{i}.png")
            print(f"[ovseg-fl] round {step}: zero-shot {res.name} mIoU {res.miou:.4f}", flush=True)
        tracker.log_metrics(metrics, step)
        history.append({"round": step, **{k: v for k, v in metrics.items() if k.endswith("/miou")}})
        path = save_checkpoint(ckpt_dir / ROUND_FILE.format(step), model, cfg, step, metrics,
                               state={"round": step, "mlflow_run_id": tracker.run_id, "history": history})
        if step == cfg.fed.rounds:
            tracker.log_artifact(path, "checkpoint")
        return MetricRecord({k: float(v) for k, v in metrics.items() if k.endswith("/miou")})

    if remaining <= 0:
        print(f"[ovseg-fl] all {cfg.fed.rounds} rounds are done ({last})", flush=True)
        tracker.close()
        return {"history": history}
    initial = to_record(get_tensors(model, keys), "float32")
    train_config = ConfigRecord({FINGERPRINT: fingerprint})
    try:
        strategy.start(grid=grid, initial_arrays=initial, num_rounds=remaining, timeout=cfg.fed.round_timeout,
                       train_config=train_config, evaluate_config=ConfigRecord({FINGERPRINT: fingerprint}),
                       evaluate_fn=evaluate_fn)
    except BaseException:
        tracker.close("FAILED")
        raise
    tracker.close()
    return {"history": history, "refusals": strategy.refusals}


def make_server_app(run_config: dict | None = None) -> ServerApp:
    """The coordinator's ServerApp; ``run_config`` gives defaults under the run's own config."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        run_server(grid, {**(run_config or {}), **dict(context.run_config)})

    return app
