"""What travels and how it is checked, on plain tensors and real Flower records: the exchange set, the
frozen-tower fingerprint, float32/bf16 wire formats, the per-site update check, FedProx."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ovseg.config import load_config
from ovseg.federated import (
    build_site_model,
    check_update,
    decode_tensor,
    encode_tensor,
    exchange_keys,
    frozen_fingerprint,
    get_tensors,
    proximal_term,
    set_tensors,
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
    special = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), 1e-40, -3e-39, 3.4e38, 1.0 + 2 ** -9])
    t = torch.cat([torch.randn(257 * 33 - 8) * 10, special]).reshape(257, 33)  # signed zeros, subnormals, inf
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
