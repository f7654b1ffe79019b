"""Evaluation split over ranks or processes: every share scored once, the summed matrices equal one process's."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from ovseg import build_model
from ovseg.checkpoint import save_checkpoint
from ovseg.config import load_config
from ovseg.data.benchmarks.registry import build_benchmark
from ovseg.eval.evaluate import evaluate, share
from ovseg.eval.parallel import EvalJob, evaluate_checkpoint
from ovseg.eval.report import evaluate_and_log
from ovseg.tracking import NullTracker
from ovseg.train.pretrain import Pretrainer, WorkerEnv


@pytest.fixture(scope="module")
def world(make_world):
    return make_world(seed=3, num_train=32, num_val=7, num_seg=0, shard_size=16)  # 7: unequal shares


@pytest.fixture(scope="module")
def cfg(world):
    return load_config("debug", [f"data.synthetic_dir={world}", "eval.num_overlays=1"])


@pytest.fixture(scope="module")
def model(cfg):
    torch.manual_seed(0)
    return build_model(cfg).eval()


class Recorder(NullTracker):
    def __init__(self):
        self.metrics, self.texts, self.images = [], {}, []

    def log_metrics(self, metrics, step): self.metrics.append((step, dict(metrics)))
    def log_text(self, text, name): self.texts[name] = text
    def log_image(self, image, name): self.images.append(name)


@pytest.mark.parametrize("n,parts", [(7, 2), (7, 3), (13, 4), (3, 5), (0, 2), (8, 1)])
def test_shares_cover_every_image_once_in_contiguous_blocks(n, parts):
    seen = []
    for k in range(parts):
        block = list(share(n, k, parts))
        if block:  # contiguous
            assert block == list(range(block[0], block[-1] + 1))
        seen += block
    assert seen == list(range(n))  # every image once, in order: part 0 starts at image 0
    sizes = [len(share(n, k, parts)) for k in range(parts)]
    assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError):
        share(n, parts, parts)


def test_the_parts_confusion_matrices_sum_to_the_whole_benchmarks(world, cfg, model):
    bench = build_benchmark("synthetic", world / "val")
    whole = evaluate(model, bench, protocol=cfg.eval, bg_thresh=cfg.eval.bg_thresh)
    parts = [evaluate(model, bench, protocol=cfg.eval, bg_thresh=cfg.eval.bg_thresh, part=(k, 3)) for k in range(3)]
    assert [p.num_images for p in parts] == [2, 2, 3]
    assert np.array_equal(sum(p.confusion.matrix for p in parts), whole.confusion.matrix)
    assert whole.confusion.matrix.sum() == sum(np.asarray(bench[i][1]).size for i in range(len(bench)))


def test_ranks_evaluate_their_shares_and_get_the_same_metrics_with_one_reduction(world, cfg, model):
    """Two ranks in two threads, the all-reduce a barrier that sums: both return the single-process
    metrics, only rank 0 logs, and the reduction runs once per evaluation (all benchmarks together)."""
    benches = [build_benchmark("synthetic", world / "val"), build_benchmark("synthetic-unseen", world / "val")]
    single, _ = evaluate_and_log(model, benches, Recorder(), 5, cfg.eval)
    slots, calls, barrier = [None, None], [0, 0], threading.Barrier(2)

    def reducer(rank):
        def reduce(local):
            calls[rank] += 1
            slots[rank] = local
            barrier.wait()
            total = slots[0] + slots[1]
            barrier.wait()
            return total
        return reduce

    results, trackers = [None, None], [Recorder(), Recorder()]

    def rank_main(rank):
        results[rank] = evaluate_and_log(model, benches, trackers[rank], 5, cfg.eval, part=(rank, 2),
                                         reduce=reducer(rank))

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert calls == [1, 1]
    for rank in (0, 1):
        metrics, res = results[rank]
        assert metrics == single
        assert [r.num_images for r in res] == [7, 7]
    assert trackers[1].metrics == [] and trackers[1].texts == {} and trackers[1].images == []
    assert trackers[0].metrics == [(5, single)] and len(trackers[0].images) == 2  # one overlay per benchmark
    gt = sum(int(line.split(",")[2]) for line in trackers[0].texts["eval/synthetic/iou.csv"].splitlines()[1:])
    assert gt == sum(np.asarray(benches[0][i][1]).size for i in range(7))  # rank 1's pixels are counted


def test_unreadable_samples_are_named_skipped_and_counted_and_the_others_scored(world, cfg, model, tmp_path, capsys):
    import dataclasses
    import shutil

    from bad_images import huge_png

    val = shutil.copytree(world / "val", tmp_path / "val")  # the session's world is read-only
    base = val / "VOCdevkit" / "VOC2012"
    (base / "JPEGImages" / "000002.jpg").write_bytes(huge_png(30000, 30000))
    (base / "SegmentationClass" / "000005.png").write_bytes(b"not a png")
    bench = build_benchmark("synthetic", val)
    # the reference: the same benchmark without those two samples, which reads cleanly
    good = dataclasses.replace(bench, items=[it for i, it in enumerate(bench.items) if i not in (2, 5)])
    ref = evaluate(model, good, protocol=cfg.eval, bg_thresh=cfg.eval.bg_thresh)
    assert ref.skipped == 0 and ref.num_images == 5
    seen = []
    got = evaluate(model, bench, protocol=cfg.eval, bg_thresh=cfg.eval.bg_thresh, on_image=seen.append)
    assert (got.num_images, got.skipped, seen) == (5, 2, list(range(7)))  # the progress bar still reaches 7
    assert np.array_equal(got.confusion.matrix, ref.confusion.matrix)
    err = capsys.readouterr().err
    assert "skipped synthetic sample 2: synthetic: image" in err and "000002.jpg" in err and "pixels" in err
    assert "skipped synthetic sample 5: synthetic: label" in err and "000005.png: not a readable image" in err
    assert got.metrics()["zeroshot/synthetic/skipped"] == 2 and ref.metrics()["zeroshot/synthetic/skipped"] == 0

    # two processes: the skip counts are summed with the matrices (part 0 holds sample 2, part 1 sample 5)
    stored = {}
    evaluate_and_log(model, [bench], NullTracker(), 1, cfg.eval, part=(1, 2),
                     reduce=lambda local: stored.setdefault("part1", local))
    tracker = Recorder()
    metrics, (res,) = evaluate_and_log(model, [bench], tracker, 1, cfg.eval, part=(0, 2),
                                       reduce=lambda local: local + stored["part1"])
    assert (res.num_images, res.skipped) == (5, 2) and np.array_equal(res.confusion.matrix, ref.confusion.matrix)
    assert tracker.metrics == [(1, metrics)] and metrics["zeroshot/synthetic/skipped"] == 2
    assert f"zero-shot synthetic mIoU {res.miou:.4f} (5 images, 2 skipped)" in capsys.readouterr().out


def test_the_pretrainer_refuses_several_ranks_without_a_reduction(cfg):
    trainer = Pretrainer(cfg, WorkerEnv(rank=1, world_size=2))
    with pytest.raises(ValueError, match="reduce_sum"):
        trainer.evaluate()


def test_several_processes_score_a_checkpoint_as_one_does(tmp_path, world, cfg, model):
    path = save_checkpoint(tmp_path / "ckpt.safetensors", model, cfg, step=11)
    job = EvalJob(str(path), datasets=("synthetic", "synthetic-unseen"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same threads as each of the two processes below
    try:
        one, res_one, ckpt, _ = evaluate_checkpoint(job, device=torch.device("cpu"), workers=1)
        two, res_two, _, _ = evaluate_checkpoint(job, device=torch.device("cpu"), workers=2, threads=1)
    finally:
        torch.set_num_threads(threads)
    assert ckpt.step == 11
    assert two == one
    for a, b in zip(res_one, res_two):
        assert np.array_equal(a.confusion.matrix, b.confusion.matrix) and b.num_images == 7
    with pytest.raises(ValueError, match="at least 1"):
        evaluate_checkpoint(job, device=torch.device("cpu"), workers=0)


def test_the_script_refuses_a_bad_worker_count_in_one_line(tmp_path, cfg, model, capsys):
    import importlib.util
    from pathlib import Path

    path = save_checkpoint(tmp_path / "ckpt.safetensors", model, cfg, step=1)
    script = Path(__file__).resolve().parents[2] / "platform" / "evaluate.py"
    spec = importlib.util.spec_from_file_location("evaluate_script", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([str(path), "--dataset", "synthetic", "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["evaluate: error: --workers must be at least 1, got 0"]
