"""platform/evaluate.py: a checkpoint re-scored from disk gives the mIoU the pretraining run logged.

The reference is independent of the script: the number the ``Pretrainer`` itself logged at its final step,
while the model was still in memory. The script sees only the checkpoint file on disk.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from services import REPO, env

from ovseg.config import load_config
from ovseg.train.pretrain import Pretrainer, WorkerEnv

SCRIPT = REPO / "platform" / "evaluate.py"


@pytest.fixture(scope="module")
def world(make_world):
    return make_world(seed=0, num_train=96, num_val=6, num_seg=0, shard_size=48)


class _Recorder:
    run_id = "training-run"

    def __init__(self):
        self.metrics, self.texts = [], {}

    def log_params(self, p): ...
    def log_metrics(self, m, step): self.metrics.append((step, dict(m)))
    def log_text(self, t, f): self.texts[f] = t
    def log_image(self, i, f): ...
    def log_artifact(self, p, a=None): ...
    def close(self, status="FINISHED"): ...


@pytest.fixture(scope="module")
def trained_run(world, tmp_path_factory):
    """A short two-stage run; checkpoints laid out as Ray Train keeps them: <run>/checkpoint_<k>/checkpoint.safetensors."""
    out = tmp_path_factory.mktemp("runs")
    run_dir = out / "evalrun"
    cfg = load_config("debug", [f"data.synthetic_dir={world}", "data.synthetic_train=96", "data.loader_workers=0",
                               "data.shuffle_buffer=32", "train.batch_size=16", "train.stage2_batch_size=8",
                               "train.stage1_steps=3", "train.stage2_steps=2", "train.warmup_steps=1",
                               "train.log_every=1", "train.eval_every=100", "train.ckpt_every=100",
                               "eval.num_overlays=1", f"train.output_dir={out}"])
    kept = []

    def report(metrics, path):
        if path is not None:
            target = run_dir / f"checkpoint_{len(kept):06d}" / path.name
            target.parent.mkdir(parents=True)
            shutil.copy(path, target)
            kept.append(target)

    tracker = _Recorder()
    trainer = Pretrainer(cfg, WorkerEnv(report=report, scratch=out / "scratch"), tracker)
    trainer.run()
    logged = [(s, m) for s, m in tracker.metrics if "zeroshot/synthetic/miou" in m]
    assert [s for s, _ in logged] == [3, 5] and len(kept) == 2  # the end of each stage, one checkpoint each
    return run_dir, logged[-1][1], tracker.texts["eval/synthetic/iou_step00000005.csv"]


def _pred_pixels(csv_text: str) -> dict[str, int]:
    rows = [line.split(",") for line in csv_text.strip().splitlines()[1:]]
    return {r[0]: int(r[3]) for r in rows}


def _run(*args, cwd, **extra_env):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=cwd, env=env(**extra_env),
                          capture_output=True, text=True, timeout=300)


def test_evaluate_reproduces_the_logged_miou_and_logs_to_mlflow(trained_run, tmp_path, debug_cfg):
    from mlflow.tracking import MlflowClient

    run_dir, logged, table = trained_run
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = _run(run_dir, "--dataset", "synthetic", "--output", tmp_path / "m.json", cwd=tmp_path,
               MLFLOW_TRACKING_URI=uri)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    got = json.loads((tmp_path / "m.json").read_text())
    assert got["step"] == 5 and got["checkpoint"].endswith("checkpoint_000001/checkpoint.safetensors")
    ref = logged["zeroshot/synthetic/miou"]
    assert abs(got["metrics"]["zeroshot/synthetic/miou"] - ref) < 0.005, (got["metrics"], logged)
    for key, value in logged.items():  # per-class IoU too
        if "/iou/" in key:
            assert abs(got["metrics"][key] - value) < 0.005, key
    out = res.stdout
    assert f"zero-shot synthetic mIoU {got['metrics']['zeroshot/synthetic/miou']:.4f} (6 images)" in out
    from ovseg.eval.protocols import resolve

    ev = resolve(debug_cfg.eval)  # the run's configuration, its keys left None at the protocol's values
    assert (f"short side {ev.short_side} (long side at most {ev.long_side}), window {ev.crop_size} "
            f"stride {ev.stride}") in out and "'a photo of a {}.'" in out
    assert f"min({ev.bg_thresh}" in out  # the configuration's fixed background threshold
    assert "background" in out and "clock" in out  # the per-class table
    assert "synthetic: 100%" in res.stderr  # progress bar reached the end

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("ovseg-eval").experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["ovseg.training_run_id"] == "training-run"
    hist = client.get_metric_history(runs[0].info.run_id, "zeroshot/synthetic/miou")
    assert [(m.step, round(m.value, 6)) for m in hist] == [(5, round(got["metrics"]["zeroshot/synthetic/miou"], 6))]
    assert runs[0].data.params["eval.short_side"] == str(ev.short_side)
    assert {a.path for a in client.list_artifacts(runs[0].info.run_id, "eval/synthetic")} >= {
        "eval/synthetic/iou.csv", "eval/synthetic/overlay_0.png"}
    # stronger than the mean: the pixels predicted per class match the run's own table (mIoU alone barely
    # moves between two checkpoints of so short a run)
    csv = client.download_artifacts(runs[0].info.run_id, "eval/synthetic/iou.csv", str(tmp_path))
    ours = _pred_pixels(Path(csv).read_text())
    theirs = _pred_pixels(table)
    total = sum(theirs.values())
    assert ours.keys() == theirs.keys() and sum(abs(ours[k] - theirs[k]) for k in ours) <= 0.001 * total


def _main():
    spec = importlib.util.spec_from_file_location("evaluate_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def test_overrides_max_images_and_bad_input(trained_run, tmp_path, capsys, monkeypatch, debug_cfg):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir, _, _ = trained_run
    main = _main()
    crop = debug_cfg.eval.crop_size
    ckpt = run_dir / "checkpoint_000000" / "checkpoint.safetensors"
    assert main([str(ckpt), "--dataset", "synthetic", "--max-images", "2", f"eval.stride={crop}",
                 "--output", str(tmp_path / "o.json")]) == 0
    out = capsys.readouterr().out
    assert "(2 images)" in out and f"window {crop} stride {crop}" in out and "step 3" in out
    assert json.loads((tmp_path / "o.json").read_text())["step"] == 3

    names = tmp_path / "syn.yaml"
    names.write_text("cat: kitten\n")
    assert main([str(ckpt), "--dataset", "synthetic", "--dataset", "synthetic-unseen", "--class-names",
                 f"synthetic={names}", "--max-images", "2", "--output", str(tmp_path / "o2.json")]) == 0
    metrics = json.loads((tmp_path / "o2.json").read_text())["metrics"]
    assert {"zeroshot/synthetic/miou", "zeroshot/synthetic-syn/miou", "zeroshot/synthetic-unseen/miou"} <= set(metrics)
    capsys.readouterr()
    assert main([str(ckpt), "--dataset", "synthetic", "--class-names", f"synthetic={tmp_path / 'none.yaml'}"]) == 2
    assert "none.yaml: unreadable" in capsys.readouterr().err

    assert main([str(tmp_path / "nope.safetensors")]) == 2
    assert "nope.safetensors does not exist" in capsys.readouterr().err
    assert main([str(ckpt), "--dataset", "voc"]) == 2
    assert "voc=/path" in capsys.readouterr().err
    assert main([str(ckpt), "--dataset", f"voc={tmp_path}"]) == 2
    assert "voc: folder" in capsys.readouterr().err
    not_a_ckpt = tmp_path / "x.safetensors"
    not_a_ckpt.write_bytes(b"garbage")
    assert main([str(not_a_ckpt)]) == 2
    assert "not a readable ovseg checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(ckpt), "model.embed_dim=3"])
    assert "only eval.* keys" in capsys.readouterr().err


def test_a_bad_image_is_skipped_counted_and_the_rest_scored(trained_run, world, tmp_path, capsys, monkeypatch):
    from bad_images import huge_png

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir, _, _ = trained_run
    val = shutil.copytree(world / "val", tmp_path / "val")  # the session's world is read-only
    (val / "VOCdevkit" / "VOC2012" / "JPEGImages" / "000001.jpg").write_bytes(huge_png(30000, 30000))
    main = _main()
    assert main([str(run_dir), "--dataset", f"synthetic={val}", "--output", str(tmp_path / "o.json")]) == 1
    captured = capsys.readouterr()
    assert "(5 images, 1 skipped)" in captured.out and "background" in captured.out  # and the table
    assert "skipped synthetic sample 1: synthetic: image" in captured.err and "000001.jpg" in captured.err
    assert "error: samples skipped" in captured.err and "{'synthetic': 1}" in captured.err
    metrics = json.loads((tmp_path / "o.json").read_text())["metrics"]
    assert metrics["zeroshot/synthetic/skipped"] == 1 and 0 <= metrics["zeroshot/synthetic/miou"] <= 1
