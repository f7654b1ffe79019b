"""The framework-free pretraining loop, in-process: schedule, stages, checkpoints, resume, tracking faults."""

import copy
import math
from pathlib import Path

import pytest
import torch

from ovseg.checkpoint import read_checkpoint
from ovseg.config import load_config
from ovseg.tracking import MlflowTracker
from ovseg.train.pretrain import Pretrainer, WorkerEnv
from ovseg.train.schedule import lr_at


def test_lr_schedule_hand_worked():
    kw = dict(total=10, peak=1.0, floor=0.1, warmup=2, warmup_start=0.0)
    assert lr_at(0, **kw) == 0.0 and lr_at(1, **kw) == 0.5 and lr_at(2, **kw) == 1.0
    assert lr_at(6, **kw) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))  # half-way: 0.55
    assert lr_at(10, **kw) == pytest.approx(0.1) and lr_at(50, **kw) == pytest.approx(0.1)


@pytest.fixture(scope="module")
def world(make_world):
    return make_world(seed=0, num_train=160, num_val=6, num_seg=0, shard_size=80)


def _cfg(world, tmp_path, *extra):
    return load_config("debug", [f"data.synthetic_dir={world}", "data.synthetic_train=160", "data.loader_workers=0",
                                "data.shuffle_buffer=50", "train.batch_size=16", "train.stage2_batch_size=8",
                                "train.stage1_steps=4", "train.stage2_steps=2", "train.warmup_steps=2",
                                "train.log_every=1", "train.eval_every=100", "train.ckpt_every=2",
                                "eval.num_overlays=1", f"train.output_dir={tmp_path}", *extra])


class _Reports:
    def __init__(self, keep: Path):
        self.items, self.keep = [], keep

    def __call__(self, metrics, path):
        kept = None
        if path is not None:
            kept = self.keep / f"{metrics['step']}.safetensors"
            kept.write_bytes(path.read_bytes())
        self.items.append((metrics, kept))


class _Recorder:
    run_id = "recorded"

    def __init__(self):
        self.metrics, self.texts, self.images = [], [], []

    def log_params(self, p): self.params = p
    def log_metrics(self, m, step): self.metrics.append((step, dict(m)))
    def log_text(self, t, f): self.texts.append(f)
    def log_image(self, i, f): self.images.append(f)
    def log_artifact(self, p, a=None): self.texts.append(str(a))
    def close(self, status="FINISHED"): ...


def test_two_stages_checkpoints_and_evaluation(world, tmp_path):
    reports, tracker = _Reports(tmp_path), _Recorder()
    trainer = Pretrainer(_cfg(world, tmp_path), WorkerEnv(report=reports, scratch=tmp_path / "scratch"), tracker)
    final = trainer.run()
    assert trainer.step == 6 and [m["step"] for m, _ in reports.items] == [2, 4, 6]
    evaluated = [s for s, m in tracker.metrics if "zeroshot/synthetic/miou" in m]
    assert evaluated == [4, 6]  # the end of each stage is evaluated (eval_every is 100 here)
    assert "zeroshot/synthetic/miou" in final and 0.0 <= final["zeroshot/synthetic/miou"] <= 1.0
    steps = {s for s, m in tracker.metrics if "train/loss" in m}
    assert steps == set(range(1, 7))
    stage2 = [m for s, m in tracker.metrics if s > 4 and "train/loss" in m]
    assert all("train/loss_mask" in m for m in stage2)  # stage 2 adds mask consistency
    assert trainer.model.momentum_vision is not None
    assert not any(p.requires_grad for p in trainer.model.text.parameters())  # text tower frozen in stage 2
    assert any(p.requires_grad for p in trainer.model.text_projector.parameters())
    assert "config.yaml" in tracker.texts and any(f.endswith(".png") for f in tracker.images)
    ckpt = read_checkpoint(reports.items[-1][1])
    assert ckpt.step == 6 and ckpt.state["stage"] == 2 and ckpt.state["mlflow_run_id"] == "recorded"


def test_resume_continues_step_weights_optimizer_and_data_position(world, tmp_path, capsys):
    """Also the fallback for checkpoints written before the loader position was stored (their state has epoch
    and batch_in_epoch only): the consumed batches are re-read and dropped."""
    reports = _Reports(tmp_path)
    cfg = _cfg(world, tmp_path, "train.stage2_steps=0", "train.stage1_steps=6", "train.stop_after=3",
               "train.ckpt_every=100")
    first = Pretrainer(cfg, WorkerEnv(report=reports, scratch=tmp_path / "s1"), _Recorder())
    first.run()
    assert first.step == 3 and [m["step"] for m, _ in reports.items] == [3]
    saved = read_checkpoint(reports.items[-1][1])
    assert saved.state["batch_in_epoch"] == 3 and saved.state["epoch"] == 0

    t = cfg.train  # the schedule below is worked out from the config's rates, for a global batch of 16
    resumed_cfg = _cfg(world, tmp_path, "train.stage2_steps=0", "train.stage1_steps=6", "train.ckpt_every=100")
    second = Pretrainer(resumed_cfg, WorkerEnv(report=reports, scratch=tmp_path / "s2"), _Recorder())
    assert saved.state["data"]["ranks"][0]["loader"]["produced"] == 3
    del saved.state["data"]  # as an older version wrote it
    second.restore(saved)
    for k, v in second.model.state_dict().items():
        assert torch.equal(v, saved.weights[k]), k  # the weights continue, not restart
    tracker = second.tracker
    second.run()
    assert second.step == 6
    assert [s for s, m in tracker.metrics if "train/loss" in m] == [4, 5, 6]
    lr4 = [m["train/lr"] for s, m in tracker.metrics if s == 4][0]
    expected = lr_at(3, 6, peak=t.lr * 16 / t.lr_batch, floor=t.min_lr * 16 / t.lr_batch, warmup=2,
                     warmup_start=t.warmup_lr * 16 / t.lr_batch)
    assert lr4 == pytest.approx(expected)  # the schedule continues too
    final = read_checkpoint(reports.items[-1][1])
    adam_steps = {float(v) for k, v in final.extra.items() if k.endswith("/step")}
    assert adam_steps == {6.0}  # AdamW's own counters were restored and went on: 3 + 3
    assert final.state["batch_in_epoch"] == 6  # the data stream continued past the 3 batches already used
    assert "holds no loader position (an older version wrote it): re-reading 3 batches" in capsys.readouterr().out


def test_a_stopped_and_resumed_run_trains_the_uninterrupted_weights(world, tmp_path, capsys):
    """Stopped in stage 2 (paired batches, samples waiting for a partner in the pool) and resumed from the
    checkpoint alone: the weights at the end equal an uninterrupted run's to the bit, so the batches, their
    augmentation and the model's noise were the same; and nothing was re-read to get there."""
    common = ("train.stage1_steps=2", "train.warmup_steps=1", "train.ckpt_every=100", "data.shuffle_buffer=20")
    whole = Pretrainer(_cfg(world, tmp_path, *common), WorkerEnv(report=_Reports(tmp_path), scratch=tmp_path / "u"),
                       _Recorder())
    whole.run()
    reports = _Reports(tmp_path)
    first = Pretrainer(_cfg(world, tmp_path, *common, "train.stop_after=3"),
                       WorkerEnv(report=reports, scratch=tmp_path / "a"), _Recorder())
    first.run()
    saved = read_checkpoint(reports.items[-1][1])
    assert saved.state["stage"] == 2 and saved.state["data"]["ranks"][0]["loader"]["produced"] == 1
    second = Pretrainer(_cfg(world, tmp_path, *common), WorkerEnv(report=reports, scratch=tmp_path / "b"), _Recorder())
    second.restore(saved)
    second.run()
    assert second.step == whole.step == 4
    out = capsys.readouterr().out
    assert "continuing at the stored loader position (epoch 0, batch 1)" in out and "re-reading" not in out
    for k, v in whole.model.state_dict().items():
        assert torch.equal(v, second.model.state_dict()[k]), k


def test_an_unreachable_tracking_server_does_not_stop_training(world, tmp_path, capsys):
    tracker = MlflowTracker("x", tracking_uri="http://127.0.0.1:9")  # nothing listens on the discard port
    assert not tracker.enabled and "unreachable" in capsys.readouterr().out
    trainer = Pretrainer(_cfg(world, tmp_path, "train.stage2_steps=0", "train.stage1_steps=2"),
                         WorkerEnv(scratch=tmp_path / "s"), tracker)
    trainer.run()
    assert trainer.step == 2


def test_multilabel_and_diversity_options_are_trained_and_logged_in_both_stages(world, tmp_path):
    tracker = _Recorder()
    cfg = _cfg(world, tmp_path, "loss.multilabel_weight=0.5", "loss.group_diversity_weight=0.25",
               "train.stage1_steps=2", "train.stage2_steps=1")
    Pretrainer(cfg, WorkerEnv(report=_Reports(tmp_path), scratch=tmp_path / "scratch"), tracker).run()
    logged = [m for _, m in tracker.metrics if "train/loss" in m]
    assert len(logged) == 3 and all(math.isfinite(m["train/loss_multilabel"]) for m in logged)
    # a mean cosine between an image's groups: finite and within [-1, 1]
    assert all(-1.0 <= m["train/loss_diversity"] <= 1.0 for m in logged)
    plain = _Recorder()
    Pretrainer(_cfg(world, tmp_path / "p", "train.stage1_steps=1", "train.stage2_steps=0",
                    "loss.multilabel_weight=0", "loss.group_diversity_weight=0"),
               WorkerEnv(report=_Reports(tmp_path), scratch=tmp_path / "s2"), plain).run()
    # weight 0 (the paper's configs): neither is computed
    assert not any("train/loss_multilabel" in m or "train/loss_diversity" in m for _, m in plain.metrics)


def test_world_options_reach_the_generated_world(tmp_path):
    import json

    from ovseg.data.synthetic.world import ensure_synthetic_world, synthetic_root

    over = ["data.synthetic_min_scale=0.4", "data.synthetic_max_scale=0.7", "data.synthetic_max_objects=2"]
    classic = ["data.synthetic_min_scale=0.3", "data.synthetic_max_scale=0.6", "data.synthetic_max_objects=4"]
    base = load_config("debug", classic)
    d = base.data
    plain = f"seed0-{base.model.vision.img_size}px-{d.synthetic_train}-{d.synthetic_val}-{d.synthetic_seg}"
    assert synthetic_root(base).name == plain  # the classic options keep the first worlds' names
    assert synthetic_root(load_config("debug", over)).name == plain + "-scale0.4-0.7-obj2"
    cfg = load_config("debug", [*over, f"data.synthetic_dir={tmp_path / 'w'}", "data.synthetic_train=4",
                               "data.synthetic_val=3", "data.synthetic_seg=0"])
    manifest = json.loads((ensure_synthetic_world(cfg) / "manifest.json").read_text())
    assert (manifest["config"]["min_scale"], manifest["config"]["max_scale"], manifest["config"]["max_objects"]) \
        == (0.4, 0.7, 2)


def test_seed_decides_the_initial_weights_and_every_rank_starts_alike(tmp_path):
    """Reference: a model built right after torch.manual_seed(seed); the global RNG state beforehand must not matter."""
    from ovseg import build_model

    torch.manual_seed(12345)  # whatever ran before must not leak into the weights
    rank0 = Pretrainer(load_config("debug", ["seed=3"]), WorkerEnv(scratch=tmp_path)).model.state_dict()
    rank1 = Pretrainer(load_config("debug", ["seed=3"]), WorkerEnv(rank=1, world_size=2, scratch=tmp_path))
    other = Pretrainer(load_config("debug", ["seed=4"]), WorkerEnv(scratch=tmp_path)).model.state_dict()
    for k, v in rank0.items():
        assert torch.equal(v, rank1.model.state_dict()[k]), k
    torch.manual_seed(3)
    expect = build_model(load_config("debug", ["seed=3"])).state_dict()
    assert all(torch.equal(rank0[k], expect[k]) for k in expect)
    assert not all(torch.equal(rank0[k], other[k]) for k in rank0 if rank0[k].dtype.is_floating_point)


def test_resume_at_the_end_of_stage_1_starts_stage_2_afresh(world, tmp_path):
    """A run stopped exactly at the stage boundary resumes into stage 2 with stage 2's own optimizer (the stage-1
    optimizer state covers another parameter set: loading it failed before), as an uninterrupted run does."""
    reports = _Reports(tmp_path)
    cfg = _cfg(world, tmp_path, "train.stop_after=4", "train.ckpt_every=100")
    first = Pretrainer(cfg, WorkerEnv(report=reports, scratch=tmp_path / "s1"), _Recorder())
    first.run()
    saved = read_checkpoint(reports.items[-1][1])
    assert saved.step == 4 and saved.state["stage"] == 1
    second = Pretrainer(_cfg(world, tmp_path, "train.ckpt_every=100"), WorkerEnv(report=reports,
                        scratch=tmp_path / "s2"), _Recorder())
    second.restore(saved)
    second.run()
    final = read_checkpoint(reports.items[-1][1])
    assert second.step == 6 and final.state["stage"] == 2
    adam_steps = {float(v) for k, v in final.extra.items() if k.endswith("/step")}
    assert adam_steps == {2.0}  # stage 2's optimizer took its own 2 steps, it did not continue stage 1's


def test_a_compiled_training_forward_trains_the_same_weights_and_saves_plain_keys(world, tmp_path):
    """``train.compile``: the steps run through ``torch.compile`` of the model (the "eager" backend, which
    traces with dynamo but runs the same kernels, so the weights after two steps equal an uncompiled run's to
    the bit); checkpoints hold the model's own keys, never the wrapper's ``_orig_mod.``."""
    runs = {}
    for backend in (None, "eager"):
        extra = ["train.stage1_steps=2", "train.stage2_steps=0", "train.ckpt_every=100"]
        if backend:
            extra.append(f"train.compile={backend}")
        reports = _Reports(tmp_path)
        trainer = Pretrainer(_cfg(world, tmp_path / str(backend), *extra),
                             WorkerEnv(report=reports, scratch=tmp_path / f"scratch-{backend}"), _Recorder())
        trainer.run()
        runs[backend] = (trainer, reports)
    plain, compiled = runs[None][0], runs["eager"][0]
    assert compiled._compiled is not None and compiled._compiled is not compiled.model
    assert {id(p) for p in compiled._compiled.parameters()} == {id(p) for p in compiled.model.parameters()}
    a, b = plain.model.state_dict(), compiled.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ckpt = read_checkpoint(runs["eager"][1].items[-1][1])
    assert ckpt.step == 2 and ckpt.weights.keys() == a.keys()


def test_the_optimizer_is_fused_as_the_config_says():
    from ovseg import build_model
    from ovseg.train.schedule import build_optimizer

    model = build_model(load_config("debug"))
    assert not build_optimizer(model, 1e-3).defaults["fused"]  # no choice given, CPU: the for-loop one
    assert build_optimizer(model, 1e-3, fused=True).defaults["fused"]  # train.fused_adamw: on CPU too
    assert not build_optimizer(model, 1e-3, fused=False).defaults["fused"]
    assert load_config("vit-b16-cc4m").train.fused_adamw and not load_config("tiny").train.fused_adamw
    if torch.cuda.is_available():
        assert build_optimizer(model.cuda(), 1e-3).defaults["fused"]


def test_the_fused_update_is_adamw_to_float_precision():
    """The fused kernel against the for-loop implementation over 20 steps of the same gradients (independent
    code paths in torch): equal to float32 rounding, and not bit-equal (why `tiny` keeps the for-loop one)."""
    from ovseg import build_model
    from ovseg.train.schedule import build_optimizer

    torch.manual_seed(0)
    ref = build_model(load_config("debug"))
    params = {}
    for fused in (False, True):
        model = copy.deepcopy(ref)
        opt = build_optimizer(model, 1e-3, fused=fused)
        g = torch.Generator().manual_seed(1)
        for _ in range(20):
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=g) * 1e-2
            opt.step()
        params[fused] = dict(model.named_parameters())
    diff = max((params[True][k] - params[False][k]).abs().max().item() for k in params[False])
    moved = max((params[False][k] - p).abs().max().item() for k, p in ref.named_parameters())
    assert moved > 1e-3 and 0 < diff < 1e-5


def test_a_stored_position_that_does_not_fit_falls_back_to_re_reading(capsys):
    """Every way a checkpoint's data entry can fail to fit this rank, each with a printed reason and the
    re-reading fallback; the rank's generator states still apply when the entry is its own."""
    from ovseg.train.resume import own_data_state, position_loader

    class Loader:
        def __init__(self, why=None):
            self.why, self.given = why, None

        def resume(self, state):
            self.given = state
            return self.why

    entry = {"loader": {"epoch": 2, "produced": 5}, "rng": {"cpu": "x"}}
    data = {"stage": 1, "world_size": 2, "ranks": [entry, None]}
    assert own_data_state(None, 0, 1) is None  # written before positions were stored
    assert "for 2 ranks, this run has 4" in own_data_state(data, 0, 4)["why"]
    assert "no data position for rank 1" in own_data_state(data, 1, 2)["why"]
    mine = own_data_state(data, 0, 2)
    assert mine == {"stage": 1, **entry}
    kw = dict(epoch=2, batch_in_epoch=5, rank=0, world_size=2)
    assert position_loader(None, Loader(), **kw) == (5, None)
    assert position_loader(own_data_state(data, 1, 2), Loader(), **{**kw, "rank": 1}) == (5, None)
    assert position_loader(mine, Loader("other shards"), **kw) == (5, {"cpu": "x"})
    assert position_loader(mine, Loader(), **{**kw, "batch_in_epoch": 4}) == (4, {"cpu": "x"})
    ok = Loader()
    assert position_loader(mine, ok, **kw) == (0, {"cpu": "x"}) and ok.given is entry["loader"]
    out = capsys.readouterr().out
    assert "re-reading 5 batches of epoch 2 to get there" in out
    assert "rank 1: WARNING: the checkpoint holds no data position for rank 1: re-reading 5" in out
    assert "WARNING: other shards: re-reading 5 batches" in out
    assert "is not the checkpoint's (epoch 2, batch 4)" in out
    assert "continuing at the stored loader position (epoch 2, batch 5)" in out
