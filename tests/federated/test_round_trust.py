"""One site cannot steer, stall or leak through a round: each attack a partner could make, against the server's
per-site checks (the round goes on with the honest sites, whose aggregate is unchanged) and the site's privacy
guard (only the announced arrays and the declared metrics leave)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from test_server_guard import _Grid, _messages, _metrics, _Tracker

from ovseg.config import load_config

HONEST = {11: ({"w": torch.full((4,), 1.0)}, 10), 12: ({"w": torch.full((4,), 3.0)}, 10)}  # their mean: 2.0


def _guard(*overrides):
    from ovseg.integrations.flower import GuardedStrategy, build_strategy

    cfg = load_config("debug", ["fed.local_steps=5", "fed.local_batch=4", *overrides])  # at most 20 examples
    guard = GuardedStrategy(build_strategy(cfg), cfg, ["w"], _Tracker())
    guard.reference = {"w": np.zeros(4)}
    return guard


def _aggregate(guard, updates, contents=None):
    from ovseg.integrations.flower import record_to_tensors

    arrays, _ = guard.aggregate_train(1, _messages({"w": torch.zeros(4)}, updates, contents))
    return record_to_tensors(arrays)["w"]


@pytest.mark.parametrize("claim", [1e30, float("inf"), float("nan"), 21, 0, -10])
def test_a_claimed_example_count_cannot_steer_the_round(claim):
    guard = _guard()
    w = _aggregate(guard, {**HONEST, 13: ({"w": torch.full((4,), 100.0)}, claim)})
    assert torch.allclose(w, torch.full((4,), 2.0))  # the honest sites' mean, by hand
    (refusal,) = guard.refusals
    assert refusal["node"] == 13 and ("num-examples" in refusal["reason"] or "not finite" in refusal["reason"])


def _malformed(kind):
    from ovseg.integrations.flower import to_record

    arrays = to_record({"w": torch.full((4,), 100.0)})
    metrics = MetricRecord(_metrics(10))
    if kind == "list metric":
        return RecordDict({"arrays": arrays, "metrics": MetricRecord({**_metrics(10), "loss": [1.0, 2.0]})})
    if kind == "extra metric key":
        return RecordDict({"arrays": arrays, "metrics": MetricRecord({**_metrics(10), "/data/a.tar": 1.0})})
    if kind == "missing metric key":
        return RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 10.0})})
    if kind == "int-list metric":
        return RecordDict({"arrays": arrays, "metrics": MetricRecord({**_metrics(10), "steps": [1, 2]})})
    if kind == "second metric record":
        return RecordDict({"arrays": arrays, "metrics": metrics, "more": MetricRecord({"x": 1.0})})
    if kind == "second array record":
        return RecordDict({"arrays": arrays, "metrics": metrics, "more": to_record({"w": torch.ones(4)})})
    if kind == "config record":
        return RecordDict({"arrays": arrays, "metrics": metrics, "config": ConfigRecord({"caption": "a cat"})})
    if kind == "no arrays":
        return RecordDict({"metrics": metrics})
    if kind == "extra array":
        return RecordDict({"arrays": to_record({"w": torch.ones(4), "img": torch.zeros(8, 8, 3)}),
                           "metrics": metrics})
    raise AssertionError(kind)


MALFORMED = ["list metric", "extra metric key", "missing metric key", "int-list metric", "second metric record",
             "second array record", "config record", "no arrays", "extra array"]


@pytest.mark.parametrize("kind", MALFORMED)
def test_a_malformed_reply_is_refused_for_that_site_alone(kind):
    guard = _guard()
    updates = {**HONEST, 13: ({"w": torch.zeros(4)}, 10)}
    w = _aggregate(guard, updates, contents={13: _malformed(kind)})
    assert torch.allclose(w, torch.full((4,), 2.0))
    assert [r["node"] for r in guard.refusals] == [13]


def test_an_error_reply_is_refused_and_the_round_goes_on():
    guard = _guard()
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    replies = _messages({"w": torch.zeros(4)}, HONEST)
    ins = Message(RecordDict({}), dst_node_id=13, message_type="train")
    TaskIdentity.node_id = 13
    replies.append(Message(Error(code=1, reason="the site's app failed"), reply_to=ins))
    TaskIdentity.node_id = 0
    from ovseg.integrations.flower import record_to_tensors

    arrays, _ = guard.aggregate_train(1, replies)
    assert torch.allclose(record_to_tensors(arrays)["w"], torch.full((4,), 2.0))
    assert guard.refusals[0]["node"] == 13 and "failed" in guard.refusals[0]["reason"]


def test_a_nan_norm_bound_refuses_every_update_instead_of_none():
    from ovseg.federated.wire import check_update

    values, reason = check_update({"w": np.ones(4, np.float32)}, {"w": "float32"}, {"w": np.zeros(4)}, "float32",
                                  float("nan"))
    assert values is None and "exceeds" in reason


def test_sites_that_miss_the_deadline_are_counted_as_stragglers():
    from ovseg.integrations.flower import to_record

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    guard = _guard("fed.min_sites=3")
    sent = list(guard.configure_train(1, to_record({"w": torch.zeros(4)}), ConfigRecord({}), _Grid([11, 12, 13])))
    assert len(sent) == 3
    w = _aggregate(guard, HONEST)  # node 13 never answered
    assert torch.allclose(w, torch.full((4,), 2.0))
    assert guard.late == {1: [13]}
    assert dict(guard.tracker.metrics)[1]["fed/stragglers"] == 1


def _krum_reference(updates: list[np.ndarray], f: int, m: int) -> np.ndarray:
    """Krum / MultiKrum (Blanchard et al. 2017) by plain loops: each update's score is the sum of its squared
    distances to its n - f - 2 nearest others; the mean of the m lowest-scored updates."""
    n = len(updates)
    scores = []
    for i in range(n):
        d = sorted(float(np.sum((updates[i] - updates[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(d[: n - f - 2]))
    best = sorted(range(n), key=lambda i: scores[i])[:m]
    return np.mean([updates[i] for i in best], axis=0)


@pytest.mark.parametrize("strategy,m", [("krum", 1), ("multikrum", 2)])
def test_krum_keeps_a_far_away_update_out(strategy, m):
    rng = np.random.default_rng(0)
    honest = [rng.normal(1.0, 0.1, 4).astype(np.float32) for _ in range(4)]
    far = np.full(4, 40.0, np.float32)  # inside the norm bound: only the robust rule keeps it out
    guard = _guard(f"fed.strategy={strategy}", "fed.num_malicious=1", f"fed.krum_select={m}", "fed.min_sites=5")
    updates = {10 + i: ({"w": torch.from_numpy(u)}, 10) for i, u in enumerate([*honest, far])}
    w = _aggregate(guard, updates).numpy()
    np.testing.assert_allclose(w, _krum_reference([*honest, far], f=1, m=m), rtol=1e-5)
    assert np.abs(w - 1.0).max() < 0.5 and guard.refusals == []


def test_evaluate_replies_are_checked_per_site():
    from ovseg.integrations.flower import GuardedStrategy, build_strategy

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    cfg = load_config("debug")
    guard = GuardedStrategy(build_strategy(cfg), cfg, ["w"], _Tracker())
    contents = {21: {"num-examples": 10.0, "site-miou": 0.5}, 22: {"num-examples": 30.0, "site-miou": 0.1},
                23: {"num-examples": 1e9, "site-miou": float("nan")}, 24: {"num-examples": 5.0, "site-miou": 7.0},
                25: {"num-examples": 5.0, "site-miou": 0.2, "/data/x.tar": 1.0}}
    replies = []
    for node, metrics in contents.items():
        ins = Message(RecordDict({}), dst_node_id=node, message_type="evaluate")
        TaskIdentity.node_id = node
        replies.append(Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=ins))
        TaskIdentity.node_id = 0
    out = guard.aggregate_evaluate(1, replies)
    assert math.isclose(out["site-miou"], (10 * 0.5 + 30 * 0.1) / 40)  # the two valid sites, example-weighted
    assert sorted(r["node"] for r in guard.refusals) == [23, 24, 25]


# ------------------------------------------------------------------------------------- the site's guard

ANNOUNCED = {"w": (4,), "b": (2, 3)}


def _reply(arrays=None, metrics=None, **records):
    content = {"arrays": ArrayRecord({k: Array(v) for k, v in (arrays or {"w": np.zeros(4, np.float32),
                                                                        "b": np.zeros((2, 3), np.float32)}).items()}),
               "metrics": MetricRecord(_metrics(10) if metrics is None else metrics), **records}
    return RecordDict(content)


def _codes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), np.uint8).astype(np.float32)


LEAKS = {
    "raw pixels as float32": lambda: _reply({"w": np.zeros(4, np.float32), "b": np.zeros((2, 3), np.float32),
                                             "img": np.zeros((64, 64, 3), np.float32)}),
    "a caption as character codes": lambda: _reply({"w": np.zeros(4, np.float32), "b": np.zeros((2, 3), np.float32),
                                                    "txt": _codes("a cat on the sofa of patient 42")}),
    "an array named after a file path": lambda: _reply({"w": np.zeros(4, np.float32),
                                                        "/data/hospital/x.tar": np.zeros((2, 3), np.float32)}),
    "a wrong shape": lambda: _reply({"w": np.zeros(4, np.float32), "b": np.zeros((3, 2), np.float32)}),
    "an integer array": lambda: _reply({"w": np.zeros(4, np.int64), "b": np.zeros((2, 3), np.float32)}),
    "a metric key that is a path": lambda: _reply(metrics={**_metrics(10), "/data/hospital/x.tar": 1.0}),
    "a list metric": lambda: _reply(metrics={**_metrics(10), "loss": [1.0, 2.0]}),
    "a NaN metric": lambda: _reply(metrics=_metrics(10, loss=float("nan"))),
    "a config record": lambda: _reply(config=ConfigRecord({"caption": "a cat"})),
}


def test_the_guard_lets_the_announced_arrays_and_the_declared_metrics_out():
    from ovseg.integrations.flower import privacy_violations

    assert privacy_violations(_reply(), "train", ANNOUNCED) == []
    ok_eval = RecordDict({"metrics": MetricRecord({"num-examples": 3.0, "site-miou": 0.4})})
    assert privacy_violations(ok_eval, "evaluate") == []


@pytest.mark.parametrize("leak", sorted(LEAKS))
def test_the_guard_refuses_anything_else(leak):
    from ovseg.integrations.flower import privacy_violations

    assert privacy_violations(LEAKS[leak](), "train", ANNOUNCED) != []
    assert privacy_violations(_reply(), "evaluate") != []  # an evaluate reply carries no arrays
    assert privacy_violations(_reply(), "query", ANNOUNCED) != []


def test_the_guard_sends_only_fixed_error_texts_and_audits_what_left(tmp_path):
    from ovseg.integrations.flower import privacy_guard_mod
    from ovseg.integrations.flower.guard import GUARD_REFUSED, SITE_FAILED

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    incoming = RecordDict({"arrays": ArrayRecord({k: Array(np.zeros(s, np.float32)) for k, s in ANNOUNCED.items()}),
                           "config": ConfigRecord({})})
    msg = Message(incoming, dst_node_id=3, message_type="train")
    audit = tmp_path / "audit.jsonl"
    ctx = Context(run_id=1, node_id=3, node_config={"audit-log": str(audit)}, state=RecordDict(), run_config={})

    def text_error(m, c):  # an app that puts its own text in an error reply
        return Message(Error(code=0, reason="could not read /data/hospital/patient-7.tar: 'a cat on a bed'"),
                       reply_to=m)

    replies = [privacy_guard_mod(msg, ctx, lambda m, c: Message(LEAKS["raw pixels as float32"](), reply_to=m)),
               privacy_guard_mod(msg, ctx, text_error),
               privacy_guard_mod(msg, ctx, lambda m, c: Message(_reply(), reply_to=m))]
    assert [r.error.reason for r in replies[:2]] == [GUARD_REFUSED, SITE_FAILED]
    assert not replies[2].has_error()
    entries = [json.loads(x) for x in audit.read_text().splitlines()]
    assert [e["error"] for e in entries] == [True, True, False]
    assert entries[0]["refused"] and entries[0]["records"] == {}
    assert set(entries[2]["records"]["arrays"]["arrays"]) == set(ANNOUNCED)
    assert "patient" not in audit.read_text()  # the audit describes what left: the error's text did not


# ------------------------------------------------------------------------------------- SecAgg+ at the site


def _fitins_message(arrays: dict[str, np.ndarray]):
    from flwr.common import FitIns, ndarrays_to_parameters
    from flwr.compat.common import recorddict_compat as compat

    from ovseg.integrations.flower.secagg import KEYS_CONFIG

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    fitins = FitIns(ndarrays_to_parameters(list(arrays.values())),
                    {"server-round": 1, KEYS_CONFIG: "\n".join(arrays), "secagg-clip": 8.0})
    return Message(compat.fitins_to_recorddict(fitins, True), dst_node_id=3, message_type="train")


def test_a_secagg_site_sends_its_delta_and_its_guard_checks_the_plain_update_first():
    from flwr.common import parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    from ovseg.integrations.flower.secagg import _delta_reply

    start = {"w": np.arange(4, dtype=np.float32), "s": np.array(2.0, np.float32)}
    ctx = Context(run_id=1, node_id=3, node_config={}, state=RecordDict(), run_config={})

    def trains(m, c):  # what the site's train action returns: named arrays, moved by +0.5 / -1
        assert set(m.content["arrays"].keys()) == {"w", "s"} and m.content["config"]["server-round"] == 1
        got = {k: a.numpy() for k, a in m.content["arrays"].items()}
        out = {"w": got["w"] + 0.5, "s": np.asarray(got["s"] - 1.0, np.float32)}
        return Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in out.items()}),
                                   "metrics": MetricRecord(_metrics(16))}), reply_to=m)

    fitres = compat.recorddict_to_fitres(_delta_reply(_fitins_message(start), ctx, trains).content, True)
    w, s = parameters_to_ndarrays(fitres.parameters)
    np.testing.assert_array_equal(w, np.full(4, 0.5, np.float32))
    np.testing.assert_array_equal(s, np.array([-1.0], np.float32))  # a 0-d tensor travels as one value
    assert fitres.num_examples == 16

    def leaks(m, c):
        r = trains(m, c)
        r.content["arrays"]["img"] = Array(np.zeros((8, 8, 3), np.float32))
        return r

    with pytest.raises(PermissionError):
        _delta_reply(_fitins_message(start), ctx, leaks)


def _secagg_reply(**change):
    from ovseg.integrations.flower.secagg import FIT_OK

    records = {"secaggplus_configs": ConfigRecord({"masked_params": [b"\x00\x01"]}),
               "fitres.parameters": ArrayRecord(), "fitres.metrics": ConfigRecord(_metrics(16)),
               "fitres.num_examples": MetricRecord({"num_examples": 16}),
               "fitres.status": ConfigRecord({"code": 0, "message": FIT_OK})}
    records.update(change)
    return RecordDict({k: v for k, v in records.items() if v is not None})


@pytest.mark.parametrize("change", [
    {"fitres.parameters": ArrayRecord({"0": Array(np.ones(3, np.float32))})},  # the plain update itself
    {"fitres.status": ConfigRecord({"code": 0, "message": "read /data/hospital/x.tar"})},
    {"secaggplus_configs": ConfigRecord({"masked_params": [b"\x00"], "caption": "a cat"})},
    {"fitres.metrics": ConfigRecord({**_metrics(16), "/data/x.tar": 1.0})},
    {"extra": ConfigRecord({"a": 1})},
])
def test_a_secagg_reply_carries_only_the_protocol_the_metrics_and_the_count(change):
    from ovseg.integrations.flower.secagg import secagg_violations

    assert secagg_violations(_secagg_reply()) == []
    assert secagg_violations(_secagg_reply(**change)) != []
