"""Federated rules on plain tensors and real Flower records: what travels, wire formats, update checks,
FedProx, segmentation batches, the non-IID site split and the server's guarded aggregation."""

from __future__ import annotations

import json
import math
import random
import tarfile

import numpy as np
import pytest
import torch

from ovseg.config import load_config
from ovseg.federated import (
    Site,
    build_site_model,
    check_update,
    decode_tensor,
    encode_tensor,
    exchange_keys,
    frozen_fingerprint,
    get_tensors,
    local_train,
    proximal_term,
    set_tensors,
    site_evaluate,
)


@pytest.fixture(scope="module")
def model_cfg():
    cfg = load_config("debug", ["fed.local_batch=8", "fed.local_steps=2", "data.shuffle_buffer=16"])
    return build_site_model(cfg)


# ---------------------------------------------------------------------------------------------- exchange set


def test_exchange_set_is_trainable_params_plus_projector_bn_stats(model_cfg):
    model, cfg = model_cfg
    keys = set(exchange_keys(model, cfg))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    float_buffers = {n for n, b in model.named_buffers() if b.dtype.is_floating_point and not n.startswith("text.")}
    assert keys == trainable | float_buffers
    assert not any(k.startswith("text.") for k in keys)  # the frozen text tower stays home
    assert any(k.startswith("text_projector.") for k in keys)  # its projector trains and travels
    assert all("running_mean" in b or "running_var" in b for b in float_buffers)


def test_train_text_sends_the_text_tower_too():
    cfg = load_config("debug", ["fed.train_text=true"])
    model, cfg = build_site_model(cfg)
    keys = exchange_keys(model, cfg)
    assert any(k.startswith("text.") for k in keys)
    assert {n for n, p in model.named_parameters()} <= set(keys)


def test_fresh_models_agree_and_fingerprint_tracks_frozen_towers():
    cfg = load_config("debug")
    a, _ = build_site_model(cfg)
    b, _ = build_site_model(cfg)
    assert frozen_fingerprint(a, cfg) == frozen_fingerprint(b, cfg)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    with torch.no_grad():
        next(p for n, p in b.named_parameters() if n.startswith("text.")).add_(1e-3)
    assert frozen_fingerprint(a, cfg) != frozen_fingerprint(b, cfg)


def test_set_tensors_round_trip_and_errors(model_cfg):
    model, cfg = model_cfg
    keys = exchange_keys(model, cfg)
    before = get_tensors(model, keys)
    shifted = {k: v + 1.0 for k, v in before.items()}
    set_tensors(model, shifted, keys)
    after = get_tensors(model, keys)
    assert all(torch.equal(after[k], shifted[k]) for k in keys)
    set_tensors(model, before, keys)
    with pytest.raises(ValueError, match="missing"):
        set_tensors(model, {k: before[k] for k in keys[1:]}, keys)
    bad = dict(before)
    bad[keys[1]] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="shape"):
        set_tensors(model, bad, keys)


# ---------------------------------------------------------------------------------------------- wire


def test_bf16_wire_is_exact_bf16_rounding_and_half_the_bytes():
    t = torch.randn(257, 33) * 10
    bits, dtype = encode_tensor(t, "bfloat16")
    assert dtype == "bfloat16" and bits.dtype == np.uint16 and bits.nbytes == t.numel() * 2
    back = decode_tensor(bits, dtype)
    assert np.array_equal(back, t.to(torch.bfloat16).float().numpy())  # torch's own rounding, independently
    f32, dtype32 = encode_tensor(t, "float32")
    assert dtype32 == "float32" and np.array_equal(decode_tensor(f32, dtype32), t.numpy())
    with pytest.raises(ValueError):
        encode_tensor(t, "int8")


def test_flower_records_round_trip_both_transports(model_cfg):
    from ovseg.integrations.flower import record_to_tensors, to_record

    model, cfg = model_cfg
    tensors = get_tensors(model, exchange_keys(model, cfg))
    full = to_record(tensors, "float32")
    half = to_record(tensors, "bfloat16")
    # half the payload bytes: 2 instead of 4 per element (the per-array headers are alike; on a small model they
    # are a visible share of the total, so the ratio alone is not 1/2)
    assert full.count_bytes() - half.count_bytes() == 2 * sum(t.numel() for t in tensors.values())
    assert half.count_bytes() < 0.6 * full.count_bytes()
    back = record_to_tensors(full)
    assert all(torch.equal(back[k], tensors[k]) for k in tensors)
    back16 = record_to_tensors(half)
    assert all(torch.equal(back16[k], tensors[k].to(torch.bfloat16).float()) for k in tensors)


# ---------------------------------------------------------------------------------------------- checks


def _ref():
    rng = np.random.default_rng(0)
    return {"a": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=(5,)).astype(np.float32)}


def test_check_update_accepts_a_valid_update_and_measures_its_norm():
    ref = _ref()
    upd = {k: v + 0.5 for k, v in ref.items()}
    values, reason = check_update(upd, {k: "float32" for k in upd}, {k: v.astype(np.float64) for k, v in ref.items()},
                                  "float32", max_norm=10.0)
    assert reason is None and np.array_equal(values["a"], upd["a"])
    # norm of a +0.5 shift over 17 values = 0.5 * sqrt(17) = 2.06: a bound of 2 refuses it
    _, reason = check_update(upd, {k: "float32" for k in upd}, ref, "float32", max_norm=2.0)
    assert reason is not None and "norm 2.06" in reason


@pytest.mark.parametrize("fault, expect", [
    ("nan", "non-finite"), ("inf", "non-finite"), ("missing", "missing"), ("extra", "extra"),
    ("shape", "shape"), ("dtype", "dtype"),
])
def test_check_update_refuses_malformed_updates(fault, expect):
    ref = _ref()
    upd = {k: v.copy() for k, v in ref.items()}
    dtypes = {k: "float32" for k in upd}
    if fault == "nan":
        upd["a"][1, 2] = np.nan
    elif fault == "inf":
        upd["b"][0] = -np.inf
    elif fault == "missing":
        del upd["b"]
    elif fault == "extra":
        upd["c"] = np.zeros(2, np.float32)
        dtypes["c"] = "float32"
    elif fault == "shape":
        upd["a"] = np.zeros((3, 4), np.float32)
    elif fault == "dtype":
        upd["a"] = upd["a"].astype(np.float64)
        dtypes["a"] = "float64"
    values, reason = check_update(upd, dtypes, ref, "float32", max_norm=1e6)
    assert values is None and expect in reason


def test_proximal_term_matches_a_plain_loop():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    glob = {n: (p.detach() + torch.randn_like(p)).clone() for n, p in net.named_parameters()}
    mu = 0.3
    term = proximal_term(net, glob, mu).compute({}, {}, None)
    expect = 0.0
    for n, p in net.named_parameters():
        for w, g in zip(p.detach().flatten().tolist(), glob[n].flatten().tolist()):
            expect += (w - g) ** 2
    assert term.item() == pytest.approx(0.5 * mu * expect, rel=1e-5)
    term.backward()
    for n, p in net.named_parameters():
        assert torch.allclose(p.grad, mu * (p.detach() - glob[n]), atol=1e-6)


# ---------------------------------------------------------------------------------------------- seg batches


def test_crop_moves_image_and_label_together():
    from ovseg.data.segmentation.batches import random_resized_crop

    h, w = 48, 80
    label = np.zeros((h, w), np.int64)
    label[:, 40:] = 1
    label[30:, :20] = 2
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 0, 255]], np.uint8)
    image = colours[label]
    rng = random.Random(3)
    for _ in range(20):
        img, lab = random_resized_crop(image, label, 32, rng)
        assert img.shape == (32, 32, 3) and lab.shape == (32, 32)
        # away from class edges the bilinear image shows the nearest-neighbour label's colour
        interior = np.ones_like(lab, bool)
        for dy in range(-2, 3):  # the antialiased bilinear filter reaches 1-2 output pixels
            for dx in range(-2, 3):
                interior &= np.roll(lab, (dy, dx), axis=(0, 1)) == lab
        interior[:2, :] = interior[-2:, :] = interior[:, :2] = interior[:, -2:] = False
        assert interior.sum() > 200
        assert np.array_equal(img[interior], colours[lab[interior]])


def test_collate_maps_each_sites_classes_into_the_batch_vocabulary(debug_model):
    from ovseg.data.segmentation.batches import PROMPT, SegBatchLoader, caption_from_classes

    loader = SegBatchLoader.__new__(SegBatchLoader)  # collate needs only the tokenizer cache
    from ovseg.data.captions.sample import SampleBuilder

    loader.builder = SampleBuilder(debug_model.tokenizer.hf, image_size=8, stage=2, max_length=16)
    loader._prompt_cache = {}
    rng, flags = random.Random(0), {}
    from collections import Counter

    def ex(classes, lab, caption):
        text = loader.builder.text_fields(caption or "background", None, rng, Counter())
        return {"image": torch.zeros(3, 2, 2), "label": np.array(lab), "classes": classes, "caption": caption, **text}

    a = ex(["background", "cat", "dog"], [[0, 1], [2, 255]], "a photo of a cat and a dog.")
    b = ex(["background", "dog", "sky"], [[2, 1], [0, 0]], "a photo of a sky and a dog.")
    c = ex(["background", "cat", "dog"], [[1, 1], [2, 0]], "a photo of a cat and a dog.")
    batch = loader.collate([a, b, c])
    # vocabulary in order of appearance: background, cat, dog, sky
    assert batch["label"].tolist() == [[[0, 1], [2, 255]], [[3, 2], [0, 0]], [[1, 1], [2, 0]]]
    ids = batch["class_ids"]
    assert ids.shape[0] == 4
    expect = loader.builder.tokenize(PROMPT.format("sky"))["input_ids"]
    assert ids[3].tolist() == expect[: ids.shape[1]] and not any(expect[ids.shape[1]:])  # trimmed padding only
    assert batch["caption_valid"].tolist() == [True, True, False]  # the repeated caption leaves the contrast
    assert caption_from_classes(["cat", "dog"]) == "a photo of a cat and a dog." and caption_from_classes([]) == ""


# ---------------------------------------------------------------------------------------------- sites


@pytest.fixture(scope="module")
def world(make_world):
    return make_world(seed=1, num_train=200, num_val=4, num_seg=100, shard_size=60)


def _keys(folder):
    keys = []
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            keys += sorted({m.name.split(".", 1)[0] for m in tar.getmembers()})
    return keys


def test_split_world_partitions_every_sample_once(world, tmp_path):
    from ovseg.federated.split import split_world

    m = split_world(world, tmp_path / "sites", ["caption", "caption", "segmentation", "segmentation"], alpha=0.3,
                    seed=0, val_fraction=0.2, shard_size=40)
    kinds = [s["kind"] for s in m["sites"]]
    assert kinds == ["caption", "caption", "segmentation", "segmentation"]
    cap = [k for i in (0, 1) for k in _keys(tmp_path / "sites" / f"site-{i:02d}" / "captions")]
    seg = [k for i in (2, 3) for sub in ("seg", "val") for k in _keys(tmp_path / "sites" / f"site-{i:02d}" / sub)]
    assert sorted(cap) == _keys(world / "train") and len(set(cap)) == 200
    assert sorted(seg) == _keys(world / "seg") and len(set(seg)) == 100
    for i, s in enumerate(m["sites"]):
        meta = json.loads((tmp_path / "sites" / f"site-{i:02d}" / "site.json").read_text())
        assert meta == {"kind": s["kind"]}
        assert Site.open(tmp_path / "sites" / f"site-{i:02d}").kind == s["kind"]
    assert all(s["val"] > 0 for s in m["sites"][2:]) and all(s["val"] == 0 for s in m["sites"][:2])
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no partial folder left


def test_dirichlet_skew_small_alpha_concentrates_classes(world, tmp_path):
    from ovseg.federated.split import split_world

    def skew(alpha):
        m = split_world(world, tmp_path / f"a{alpha}", ["caption"] * 3, alpha=alpha, seed=0)
        per_site = [s["classes"] for s in m["sites"]]
        classes = {c for s in per_site for c in s}
        # mean over classes of the largest share one site holds (1/3 = perfectly even, 1 = one site each)
        return np.mean([max(s.get(c, 0) for s in per_site) / sum(s.get(c, 0) for s in per_site) for c in classes])

    assert skew(0.05) > 0.8 and skew(100.0) < 0.6


def test_site_open_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Site.open(tmp_path / "nope")
    (tmp_path / "s").mkdir()
    with pytest.raises(ValueError, match="data-kind"):
        Site.open(tmp_path / "s")
    (tmp_path / "s" / "site.json").write_text('{"kind": "caption"}')
    with pytest.raises(ValueError, match="says caption"):
        Site.open(tmp_path / "s", "segmentation")
    with pytest.raises(FileNotFoundError, match="no training shards"):
        Site.open(tmp_path / "s")


@pytest.mark.slow  # 26 local optimiser steps
def test_local_training_on_a_segmentation_site_lowers_its_mask_loss(world, tmp_path):
    from ovseg.federated.split import split_world

    split_world(world, tmp_path / "sites", ["segmentation"], alpha=1.0, seed=0, val_fraction=0.1)
    site = Site.open(tmp_path / "sites" / "site-00")
    cfg = load_config("debug", ["fed.local_batch=16", "fed.lr=1e-3", "data.shuffle_buffer=32"])
    model, cfg = build_site_model(cfg)
    keys = exchange_keys(model, cfg)
    start = get_tensors(model, keys)
    first = local_train(model, cfg, site, steps=3, seed=0)
    local_train(model, cfg, site, steps=20, seed=1)
    last = local_train(model, cfg, site, steps=3, seed=2)
    assert last["loss_seg"] < 0.8 * first["loss_seg"], (first, last)
    assert first["num-examples"] == 48 and first["skipped"] == 0
    text_before = {k: v for k, v in build_site_model(cfg)[0].state_dict().items() if k.startswith("text.")}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in text_before.items())  # frozen tower untouched
    moved = [k for k in keys if not torch.equal(get_tensors(model, [k])[k], start[k])]
    assert len(moved) > len(keys) // 2
    res = site_evaluate(model, cfg, site)
    assert res is not None and res.num_images == 10 and 0.0 <= res.miou <= 1.0


# ---------------------------------------------------------------------------------------------- server guard


class _Tracker:
    run_id = None

    def __init__(self):
        self.metrics, self.texts = [], {}

    def log_metrics(self, m, step):
        self.metrics.append((step, dict(m)))

    def log_text(self, text, name):
        self.texts[name] = text


def _messages(reference, updates):
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
        replies.append(Message(RecordDict({"arrays": record, "metrics": MetricRecord({"num-examples": float(n),
                                                                                     "loss": 1.0})}), reply_to=ins))
        TaskIdentity.node_id = 0
    return replies


def test_guarded_fedavg_leaves_out_nan_and_wrong_shape_and_averages_the_rest():
    from flwr.app import ArrayRecord

    from ovseg.integrations.flower import GuardedStrategy, build_strategy, record_to_tensors, to_record

    cfg = load_config("debug", ["fed.max_update_norm=100"])
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
    assert logged["fed/sites_accepted"] == 2 and logged["fed/refused"] == 3
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


def test_privacy_check_flags_anything_but_float_arrays_and_numbers():
    from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

    from ovseg.integrations.flower import privacy_violations

    ok = RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(3, np.float32))}),
                     "metrics": MetricRecord({"loss": 1.0, "num-examples": 3})})
    assert privacy_violations(ok) == []
    pixels = RecordDict({"arrays": ArrayRecord({"img": Array(np.zeros((4, 4, 3), np.uint8))})})
    text = RecordDict({"config": ConfigRecord({"caption": "a cat on a sofa"})})
    assert "uint8" in privacy_violations(pixels)[0]
    assert "ConfigRecord" in privacy_violations(text)[0]


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


def test_make_sites_and_simulate_commands(world, tmp_path):
    import subprocess
    import sys

    from services import REPO, env

    out = subprocess.run([sys.executable, str(REPO / "platform" / "make_sites.py"), "--out", str(tmp_path / "s"),
                          "--world", str(world), "--kinds", "caption,segmentation", "--alpha", "2"],
                         capture_output=True, text=True, env=env(), timeout=120)
    assert out.returncode == 0, out.stderr
    assert "site-00: caption" in out.stdout and "site-01: segmentation" in out.stdout
    bad = subprocess.run([sys.executable, str(REPO / "platform" / "make_sites.py"), "--out", str(tmp_path / "t"),
                          "--world", str(world), "--kinds", "caption,images"], capture_output=True, text=True,
                         env=env(), timeout=120)
    assert bad.returncode == 2 and "site kinds" in bad.stderr
    sim = subprocess.run([sys.executable, str(REPO / "platform" / "simulate.py"), "--help"], capture_output=True,
                         text=True, env=env(), timeout=120)
    assert sim.returncode == 0 and "virtual partner sites" in sim.stdout


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

    for handler, word in ((fails, "FileNotFoundError"), (leaks, "privacy guard")):
        reply = privacy_guard_mod(msg, ctx, handler)
        assert reply.has_error() and word in reply.error.reason
        assert "patient" not in reply.error.reason and "hospital" not in reply.error.reason
    lines = [json.loads(x) for x in audit.read_text().splitlines()]
    assert [x["error"] for x in lines] == [True, True] and all(x["records"] == {} for x in lines)


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


def test_caption_site_trains_the_configured_multilabel_loss(world, tmp_path):
    from ovseg.federated.split import split_world

    split_world(world, tmp_path / "sites", ["caption"], alpha=1.0, seed=0, val_fraction=0.1)
    site = Site.open(tmp_path / "sites" / "site-00")
    model, cfg = build_site_model(load_config("debug", ["fed.local_batch=8", "data.shuffle_buffer=32"]))
    assert cfg.loss.multilabel_weight > 0
    out = local_train(model, cfg, site, steps=2, seed=0)
    assert math.isfinite(out["loss_multilabel"]) and out["loss_multilabel"] > 0
