"""The server's guarded aggregation: refused updates, bf16 decoding, every strategy, DP, the privacy guard, run
configs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ovseg.config import load_config
from ovseg.federated import build_site_model, exchange_keys

# ---------------------------------------------------------------------------------------------- server guard


class _Tracker:
    run_id = None

    def __init__(self):
        self.metrics, self.texts = [], {}

    def log_metrics(self, m, step):
        self.metrics.append((step, dict(m)))

    def log_text(self, text, name):
        self.texts[name] = text


def _metrics(n, **over):
    """A train reply's metrics as a site sends them: every declared key, ``num-examples`` = n."""
    from ovseg.integrations.flower.config import train_metric_keys

    return {**{k: 0.0 for k in train_metric_keys()}, "loss": 1.0, "num-examples": float(n), **over}


def _messages(reference, updates, contents=None):
    """Replies from the nodes of ``updates`` ({node: (arrays, n)}); ``contents`` {node: RecordDict} replaces a
    node's whole reply content (a malformed reply)."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from ovseg.integrations.flower import to_record

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    replies = []
    for node, (arrays, n) in updates.items():
        ins = Message(RecordDict({"arrays": ArrayRecord(), "config": ConfigRecord({})}), dst_node_id=node,
                      message_type="train")
        TaskIdentity.node_id = node
        record = arrays if isinstance(arrays, ArrayRecord) else to_record(arrays)
        content = (contents or {}).get(node) or RecordDict({"arrays": record, "metrics": MetricRecord(_metrics(n))})
        replies.append(Message(content, reply_to=ins))
        TaskIdentity.node_id = 0
    return replies


def test_guarded_fedavg_leaves_out_nan_and_wrong_shape_and_averages_the_rest():
    from flwr.app import ArrayRecord

    from ovseg.integrations.flower import GuardedStrategy, build_strategy, record_to_tensors, to_record

    cfg = load_config("debug", ["fed.max_update_norm=100", "fed.local_steps=10", "fed.local_batch=8"])
    ref = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}
    good1 = {"w": torch.full((2, 3), 1.0), "b": torch.full((3,), 2.0)}
    good2 = {"w": torch.full((2, 3), 4.0), "b": torch.full((3,), -1.0)}
    nan = {"w": torch.full((2, 3), float("nan")), "b": torch.zeros(3)}
    shape = {"w": torch.zeros(3, 2), "b": torch.zeros(3)}
    half = to_record(good2, "bfloat16")  # a bf16 update into a float32 federation: refused by dtype
    tracker = _Tracker()
    guard = GuardedStrategy(build_strategy(cfg), cfg, list(ref), tracker)
    guard.reference = {k: v.numpy().astype(np.float64) for k, v in ref.items()}
    replies = _messages(ref, {11: (good1, 10), 12: (good2, 30), 13: (nan, 50), 14: (shape, 50), 15: (half, 5)})
    arrays, metrics = guard.aggregate_train(1, replies)
    avg = record_to_tensors(arrays)
    # example-weighted mean of the two good sites, by hand: (10 * 1 + 30 * 4) / 40 = 3.25; (10 * 2 - 30) / 40
    assert torch.allclose(avg["w"], torch.full((2, 3), 3.25)) and torch.allclose(avg["b"], torch.full((3,), -0.25))
    reasons = {r["node"]: r["reason"] for r in guard.refusals}
    assert set(reasons) == {13, 14, 15}
    assert "non-finite" in reasons[13] and "shape" in reasons[14] and "dtype" in reasons[15]
    logged = dict(tracker.metrics)[1]
    assert logged["fed/sites_accepted"] == 2 and logged["fed/refused"] == 3 and logged["fed/stragglers"] == 0
    assert "refusals.jsonl" in tracker.texts
    # nothing valid: the round keeps the old model
    assert guard.aggregate_train(2, _messages(ref, {13: (nan, 5)})) == (None, None)
    assert isinstance(arrays, ArrayRecord)


def test_guarded_bf16_federation_decodes_before_averaging():
    from ovseg.integrations.flower import GuardedStrategy, build_strategy, record_to_tensors, to_record

    cfg = load_config("debug", ["fed.transport=bfloat16"])
    ref = {"w": torch.zeros(4)}
    a, b = {"w": torch.tensor([1.0, 2.0, 3.0, 1 / 3])}, {"w": torch.tensor([3.0, 2.0, 1.0, 1 / 3])}
    guard = GuardedStrategy(build_strategy(cfg), cfg, ["w"], _Tracker())
    guard.reference = {"w": np.zeros(4)}
    arrays, _ = guard.aggregate_train(1, _messages(ref, {1: (to_record(a, "bfloat16"), 1),
                                                        2: (to_record(b, "bfloat16"), 1)}))
    third = torch.tensor(1 / 3).to(torch.bfloat16).float().item()
    assert torch.allclose(record_to_tensors(arrays)["w"], torch.tensor([2.0, 2.0, 2.0, third]))


def test_run_config_uses_the_same_dotted_keys():
    from ovseg.integrations.flower import config_from_run

    cfg = config_from_run({"config": "debug", "fed.rounds": 3, "fed.dp.delta": 1e-5, "eval.max_images": "null",
                           "eval.datasets": "[synthetic]", "fed.init_checkpoint": "", "fed.train_text": True})
    assert (cfg.fed.rounds, cfg.fed.dp.delta, cfg.eval.max_images, cfg.eval.datasets) == (3, 1e-5, None, ("synthetic",))
    assert cfg.fed.init_checkpoint == "" and cfg.fed.train_text is True and cfg.name == "debug"
    with pytest.raises(ValueError, match="fed.strategy"):
        config_from_run({"fed.strategy": "fedsgd"})
    with pytest.raises(ValueError, match="unknown config key"):
        config_from_run({"fed.roundz": 3})


def test_dp_strategy_wraps_with_an_accountant():
    from ovseg.integrations.flower import build_strategy

    cfg = load_config("debug", ["fed.dp.noise_multiplier=1.0", "fed.dp.clipping_norm=0.5"])
    s = build_strategy(cfg)
    assert type(s).__name__ == "DifferentialPrivacyServerSideFixedClipping"
    assert s.accountant is not None and math.isclose(s.clipping_norm, 0.5)


class _Grid:
    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return list(self.nodes)


def test_dp_round_clips_adds_noise_and_logs_the_privacy_budget():
    from flwr.app import ConfigRecord
    from flwr.supercore.task_identity import TaskIdentity

    from ovseg.integrations.flower import GuardedStrategy, build_strategy, record_to_tensors, to_record

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0  # messages need an identity
    cfg = load_config("debug", ["fed.dp.noise_multiplier=0.5", "fed.dp.clipping_norm=1.0", "fed.min_sites=2",
                               "fed.fraction_evaluate=0"])
    ref = {"w": torch.zeros(1000)}
    tracker = _Tracker()
    guard = GuardedStrategy(build_strategy(cfg), cfg, ["w"], tracker)
    msgs = list(guard.configure_train(1, to_record(ref), ConfigRecord({}), _Grid([11, 12])))
    assert len(msgs) == 2
    big = {"w": torch.full((1000,), 3.0)}  # norm 94.9: clipped to 1.0 before averaging
    arrays, _ = guard.aggregate_train(1, _messages(ref, {11: (big, 8), 12: (big, 8)}))
    w = record_to_tensors(arrays)["w"]
    # mean of two clipped updates = the clipped update (norm 1, each value 1/sqrt(1000)); Gaussian noise of
    # std noise_multiplier * clip / 2 sites = 0.25 per value on top
    assert abs(w.mean().item() - 1 / math.sqrt(1000)) < 0.05
    assert 0.2 < w.std().item() < 0.3
    eps = [m["dp/epsilon"] for _, m in tracker.metrics if "dp/epsilon" in m]
    assert len(eps) == 1 and eps[0] > 0
    msgs = list(guard.configure_train(2, arrays, ConfigRecord({}), _Grid([11, 12])))
    guard.aggregate_train(2, _messages(ref, {11: (big, 8), 12: (big, 8)}))
    eps2 = [m["dp/epsilon"] for _, m in tracker.metrics if "dp/epsilon" in m]
    assert eps2[1] > eps2[0]  # the budget spent grows round by round


@pytest.mark.parametrize("strategy", ["fedmedian", "fedtrimmedavg", "fedadam", "fedprox"])
def test_each_strategy_aggregates_only_the_accepted_updates(strategy):
    from flwr.app import ConfigRecord
    from flwr.supercore.task_identity import TaskIdentity

    from ovseg.integrations.flower import GuardedStrategy, build_strategy, record_to_tensors, to_record

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    cfg = load_config("debug", [f"fed.strategy={strategy}", "fed.min_sites=5", "fed.trim_beta=0.25",
                               "fed.server_lr=0.1", "fed.proximal_mu=0.01"])
    ref = {"w": torch.zeros(4)}
    values = [1.0, 2.0, 4.0, 8.0]
    ups = {10 + i: ({"w": torch.full((4,), v)}, 1) for i, v in enumerate(values)}
    ups[20] = ({"w": torch.full((4,), float("inf"))}, 1)  # refused: it must not move the median or the mean
    guard = GuardedStrategy(build_strategy(cfg), cfg, ["w"], _Tracker())
    msgs = list(guard.configure_train(1, to_record(ref), ConfigRecord({}), _Grid(list(ups))))
    if strategy == "fedprox":
        assert all(m.content["config"]["proximal-mu"] == 0.01 for m in msgs)
    arrays, _ = guard.aggregate_train(1, _messages(ref, ups))
    w = record_to_tensors(arrays)["w"]
    expect = {
        "fedmedian": np.median(values),                  # 3.0
        "fedtrimmedavg": np.mean(sorted(values)[1:-1]),  # cut one of four at each end: 3.0
        "fedprox": np.mean(values),                      # FedAvg on the server: 3.75
        # FedAdam, first round, by hand: delta = 3.75, m = 0.1 * delta, v = 0.01 * delta^2, and Flower's
        # bias-corrected step eta * sqrt(1 - 0.99^t) / (1 - 0.9^t) with t = round + 1 = 2:
        # w = 0 + eta_t * m / (sqrt(v) + tau)
        "fedadam": 0.1 * math.sqrt(1 - 0.99 ** 2) / (1 - 0.9 ** 2) * 0.375 / (0.375 + 1e-3),
    }[strategy]
    assert torch.allclose(w, torch.full((4,), float(expect)), atol=1e-5), (strategy, w)
    assert [r["node"] for r in guard.refusals] == [20]


def test_privacy_guard_keeps_error_texts_and_forbidden_records_at_the_site(tmp_path):
    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from ovseg.integrations.flower import privacy_guard_mod

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    msg = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=3, message_type="train")
    audit = tmp_path / "audit.jsonl"
    ctx = Context(run_id=1, node_id=3, node_config={"audit-log": str(audit)}, state=RecordDict(), run_config={})

    def fails(m, c):
        raise FileNotFoundError("/data/hospital-a/patient-0042.tar is damaged")

    def leaks(m, c):
        return Message(RecordDict({"arrays": ArrayRecord({"img": Array(np.zeros((2, 2, 3), np.uint8))})}),
                       reply_to=m)

    for handler, word in ((fails, "app failed"), (leaks, "privacy guard")):
        reply = privacy_guard_mod(msg, ctx, handler)
        assert reply.has_error() and word in reply.error.reason
        assert "patient" not in reply.error.reason and "hospital" not in reply.error.reason
    lines = [json.loads(x) for x in audit.read_text().splitlines()]
    assert [x["error"] for x in lines] == [True, True] and all(x["records"] == {} for x in lines)
    assert [x["run_id"] for x in lines] == [msg.metadata.run_id] * 2 == [1, 1]  # the run each reply answered


def test_dp_mode_sends_parameters_only():
    cfg = load_config("debug", ["fed.dp.noise_multiplier=1.0"])
    model, cfg = build_site_model(cfg)
    assert set(exchange_keys(model, cfg)) == {n for n, p in model.named_parameters() if p.requires_grad}


def test_a_non_finite_aggregate_keeps_the_previous_model():
    from flwr.app import Array, ArrayRecord
    from flwr.serverapp.strategy import FedAvg

    from ovseg.integrations.flower import GuardedStrategy

    class Broken(FedAvg):  # stands for a strategy whose own arithmetic overflows
        def aggregate_train(self, server_round, replies):
            _, metrics = super().aggregate_train(server_round, replies)
            return ArrayRecord({"w": Array(np.full(4, np.inf, np.float32))}), metrics

    cfg = load_config("debug")
    ref = {"w": torch.zeros(4)}
    guard = GuardedStrategy(Broken(), cfg, ["w"], _Tracker())
    guard.reference = {"w": np.zeros(4)}
    arrays, _ = guard.aggregate_train(1, _messages(ref, {1: ({"w": torch.ones(4)}, 1), 2: ({"w": torch.ones(4)}, 1)}))
    assert arrays is None and "previous model kept" in guard.refusals[-1]["reason"]
