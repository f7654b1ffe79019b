"""``platform/evaluate.py --suite ... --protocol ...``: the benchmark table on fixture trees in their real
layouts (the eight benchmarks under one MMSegmentation data root) and a synthetic world; the full table is
scored on a trained ``tiny`` checkpoint and logged to a real MLflow server."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image
from services import REPO

from ovseg import save_checkpoint
from ovseg.data.benchmarks.registry import suite_specs
from ovseg.eval.table import plan_suite, spec_for, suite_names

SCRIPT = REPO / "platform" / "evaluate.py"
SMALL = ["eval.short_side=32", "eval.crop_size=32", "eval.stride=16"]  # the debug model's size, under any protocol
TINY = ["eval.short_side=64", "eval.crop_size=64", "eval.stride=32"]  # tiny's own reading (its config sets them)


def _jpg(path, seed, size=(24, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


def _png(path, values, size=(24, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.resize(np.array(values, np.uint8), size[0] * size[1]).reshape(size)).save(path)


def _devkit(root, year, labels, sets, values):
    base = root / "VOCdevkit" / year
    for i, sid in enumerate(("2008_000001", "2008_000002")):
        _jpg(base / "JPEGImages" / f"{sid}.jpg", i)
        _png(base / labels / f"{sid}.png", values[i])
    (base / "ImageSets" / sets).mkdir(parents=True)
    (base / "ImageSets" / sets / "val.txt").write_text("2008_000001\n2008_000002\n")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, make_world):
    root = tmp_path_factory.mktemp("data")
    _devkit(root, "VOC2012", "SegmentationClass", "Segmentation", [(0, 15, 255), (0, 8, 12)])
    _devkit(root, "VOC2010", "SegmentationClassContext", "SegmentationContext", [(0, 1, 40), (0, 59, 20)])
    coco = root / "coco_stuff164k"
    for i, stem in enumerate(("000000000139", "000000000285")):
        _jpg(coco / "images" / "val2017" / f"{stem}.jpg", 10 + i)
        _png(coco / "annotations" / "val2017" / f"{stem}_instanceTrainIds.png", [(0, 1, 61), (0, 23)][i])
    ade = root / "ade" / "ADEChallengeData2016"  # mmseg keeps ADE20K one folder down: data/ade/...
    for i, stem in enumerate(("ADE_val_00000001", "ADE_val_00000002")):
        _jpg(ade / "images" / "validation" / f"{stem}.jpg", 20 + i)
        _png(ade / "annotations" / "validation" / f"{stem}.png", [(0, 1, 3), (5, 150)][i])
    (root / "val").symlink_to(make_world(seed=0, num_train=96, num_val=3, num_seg=0, shard_size=48) / "val")
    return root


@pytest.fixture(scope="module")
def full_root(data_root, tmp_path_factory):
    """The six benchmarks above plus COCO-Stuff-171 and Cityscapes: all eight of the table."""
    root = tmp_path_factory.mktemp("data8") / "data"
    shutil.copytree(data_root, root, symlinks=True)
    coco = root / "coco_stuff164k"
    for i, stem in enumerate(("000000000139", "000000000285")):
        _png(coco / "annotations" / "val2017" / f"{stem}_labelTrainIds.png", [(0, 80, 170, 255), (3, 150)][i])
    city = root / "cityscapes"
    for i, (town, sid) in enumerate((("frankfurt", "frankfurt_000000_000294"), ("lindau", "lindau_000000_000019"))):
        image = city / "leftImg8bit" / "val" / town / f"{sid}_leftImg8bit.png"
        image.parent.mkdir(parents=True)
        Image.fromarray(np.random.default_rng(30 + i).integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(image)
        _png(city / "gtFine" / "val" / town / f"{sid}_gtFine_labelTrainIds.png", [(0, 11, 255), (13, 18)][i])
    return root


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, make_world):
    """A checkpoint the real Pretrainer wrote for the default `tiny` model (a few steps: a trained model's file,
    its config and step, not a good one)."""
    from ovseg.config import load_config
    from ovseg.train.pretrain import Pretrainer, WorkerEnv

    world = make_world(seed=0, num_train=96, num_val=3, num_seg=0, shard_size=48)
    out = tmp_path_factory.mktemp("tinyrun")
    cfg = load_config("tiny", [f"data.synthetic_dir={world}", "data.synthetic_train=96", "data.loader_workers=0",
                               "data.shuffle_buffer=16", "train.batch_size=8", "train.stage1_steps=2",
                               "train.stage2_steps=0", "train.warmup_steps=1", "train.eval_every=100",
                               "train.ckpt_every=100", "eval.max_images=1", "eval.num_overlays=0",
                               f"train.output_dir={out}"])
    kept = []

    def report(metrics, path):  # as Ray Train keeps what a worker reports
        if path is not None:
            kept.append(shutil.copy(path, out / f"step{len(kept)}.safetensors"))

    Pretrainer(cfg, WorkerEnv(report=report, scratch=out / "scratch")).run()
    return kept[-1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, debug_model, debug_cfg):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "c.safetensors", debug_model, debug_cfg, step=7)


def _main():
    spec = importlib.util.spec_from_file_location("evaluate_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def _row(out: str, label: str) -> tuple[list[str], list[str]]:
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    head = [c.strip() for c in lines[-2].strip("|").split("|")]
    row = [c.strip() for c in lines[-1].strip("|").split("|")]
    assert head[0] == "protocol" and row[0] == label
    return head[1:], row[1:]


@pytest.mark.slow  # a real MLflow server
def test_the_table_prints_its_average_and_logs_every_cell(full_root, tiny_checkpoint, mlflow_uri, tmp_path,
                                                          capsys, monkeypatch):
    from mlflow.tracking import MlflowClient

    from ovseg.checkpoint import read_checkpoint

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    step = read_checkpoint(tiny_checkpoint).step
    code = _main()([str(tiny_checkpoint), "--protocol", "tcl", "--suite", "eight", "--data-root", str(full_root),
                    "--tracking-uri", mlflow_uri, "--output", str(tmp_path / "m.json"), *TINY])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "TCL zero-shot protocol: short side 64" in out and "'a photo of many {}.'" in out
    assert "background where every class scores below the constant 0.5" in out
    assert "prompting table as 'diningtable', plant as 'pottedplant', monitor as 'tvmonitor'" in out  # TCL's names
    head, row = _row(out, "tcl")
    assert head == ["VOC21", "PC60", "Obj", "VOC20", "PC59", "Stuff", "City", "ADE", "Avg"]
    cells = [float(v) for v in row[:-1]]
    assert abs(float(row[-1]) - sum(cells) / len(cells)) <= 0.05 + 1e-9  # printed to one decimal
    metrics = json.loads((tmp_path / "m.json").read_text())["metrics"]
    for name, col, cell in zip(suite_names("eight"), head, cells):
        assert metrics[f"table/tcl/{col}"] == metrics[f"zeroshot/{name}/miou"]
        assert abs(100 * metrics[f"table/tcl/{col}"] - cell) <= 0.05 + 1e-9
    client = MlflowClient(mlflow_uri)
    run = client.search_runs([client.get_experiment_by_name("ovseg-eval").experiment_id])[0]
    logged = {k: v for k, v in run.data.metrics.items() if k.startswith("table/tcl/")}
    assert set(logged) == {f"table/tcl/{c}" for c in head[:-1]} | {"table/tcl/avg"}
    assert logged["table/tcl/avg"] == pytest.approx(np.mean([logged[f"table/tcl/{c}"] for c in head[:-1]]))
    assert [m.step for m in client.get_metric_history(run.info.run_id, "table/tcl/VOC21")] == [step]
    assert run.data.params["eval.protocol"] == "tcl" and run.data.params["protocol.background"] == "constant"


def test_a_suite_of_other_benchmarks_logs_to_a_file_store(data_root, checkpoint, tmp_path, capsys, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a file store: seconds less than SQLite's migrations
    uri = (tmp_path / "mlruns").as_uri()
    suite = "voc,context60,ade20k,synthetic"
    code = _main()([str(checkpoint), "--protocol", "groupvit", "--suite", suite, "--data-root", str(data_root),
                    "--tracking-uri", uri, "--output", str(tmp_path / "m.json"), *SMALL])
    out = capsys.readouterr().out
    assert code == 0, out
    head, row = _row(out, "groupvit")
    assert head == ["VOC21", "PC60", "ADE", "synthetic", "Avg"]
    metrics = json.loads((tmp_path / "m.json").read_text())["metrics"]
    for name, col in zip(suite.split(","), head):
        assert metrics[f"table/groupvit/{col}"] == metrics[f"zeroshot/{name}/miou"]
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("ovseg-eval").experiment_id])[0]
    assert run.data.metrics["table/groupvit/avg"] == pytest.approx(np.mean([metrics[f"table/groupvit/{c}"]
                                                                            for c in head[:-1]]))
    assert [m.step for m in client.get_metric_history(run.info.run_id, "table/groupvit/VOC21")] == [7]


def test_a_missing_benchmark_is_named_or_shown_as_a_dash(data_root, checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    eight = ("voc", "context60", "coco_object", "voc20", "context59", "coco_stuff", "cityscapes", "ade20k")
    assert suite_names("eight") == eight
    assert [spec_for(n, data_root) for n in eight] == suite_specs("eight", data_root)  # the registry's folders
    with pytest.raises(ValueError, match="unknown suite 'eigth'"):
        suite_names("eigth")
    main = _main()
    assert main([str(checkpoint), "--suite", "eight", "--data-root", str(data_root)]) == 2
    err = capsys.readouterr().err
    assert "suite 'eight': 2 of 8 benchmarks cannot be read" in err and "--skip-missing" in err
    assert re.search(r"coco_stuff: .*_labelTrainIds.png.*; cityscapes: .*cityscapes", err)  # no data for them here
    plan = plan_suite("eight", data_root, skip_missing=True)
    assert set(plan.missing) == {"coco_stuff", "cityscapes"} and len(plan.specs) == 6
    assert main([str(checkpoint), "--suite", "eight", "--data-root", str(data_root), "--skip-missing",
                 "--protocol", "groupvit", "eval.pamr=true", "--max-images", "1", *SMALL]) == 0
    out = capsys.readouterr().out
    head, row = _row(out, "groupvit_pamr")
    assert head == ["VOC21", "PC60", "Obj", "VOC20", "PC59", "Stuff", "City", "ADE", "Avg"]
    assert row[5] == row[6] == "-"
    cells = [float(v) for v in row[:5] + row[7:8]]
    assert abs(float(row[-1]) - sum(cells) / len(cells)) <= 0.05 + 1e-9
    assert "note: the average is over 6 of 8 benchmarks" in out and "PAMR (10 iterations" in out
    assert "background below min(0.95, best group score)" in out  # VOC under groupvit: its own threshold
    assert main([str(checkpoint), "--suite", "eight"]) == 2
    assert "--suite needs --data-root" in capsys.readouterr().err
