"""Ray Tune sweeps for real: ASHA, MLflow parent and child runs, the best config, interrupt and resume."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import pytest
from services import REPO, env

from ovseg.config import load_config
from ovseg.integrations.ray_tune import load_space, trial_config

pytestmark = pytest.mark.slow  # conftest.SHARED: one Ray at a time
SWEEP = str(REPO / "tuning" / "sweep.py")


@pytest.fixture(scope="module")
def world(make_world):
    return make_world(seed=0, num_train=256, num_val=6, num_seg=0, shard_size=128)


def _args(world, out, name):
    # no --config: the sweep command as the README gives it (the default config), only shortened
    return ["--output", str(out), "--name", name, f"data.synthetic_dir={world}", "data.synthetic_train=256",
            "train.batch_size=8", "train.stage2_batch_size=4", "train.stage1_steps=5", "train.stage2_steps=2",
            "train.eval_every=2", "train.warmup_steps=1", "eval.max_images=4", "train.experiment=sweep-tests"]


def test_space_file_validation_and_trial_configs(tmp_path):
    space = load_space("default")
    assert {"loss.group_usage_weight", "model.vision.num_output_groups", "train.lr"} <= set(space["search"])
    # the default's first ASHA cut waits for its second report (step 350), past the all-background phase
    assert space["asha"] == {"grace_period": 2}
    assert load_space("default")["fixed"]["train.eval_every"] == 200
    base = load_config("debug")
    cfg = trial_config(__import__("ovseg.config", fromlist=["to_dict"]).to_dict(base),
                       {"model.vision.num_output_groups": [4], "loss.entity_weight": 0.5})
    assert cfg.model.vision.num_output_groups == (4,) and cfg.loss.entity_weight == 0.5
    bad = tmp_path / "bad.yaml"
    bad.write_text("search:\n  loss.entity_weight: {between: [0, 1]}\n")
    with pytest.raises(ValueError, match="sampler"):
        load_space(str(bad))
    bad.write_text("search:\n  train.lr: {choice: [0.001]}\nasha: {grace_period: 0}\n")
    with pytest.raises(ValueError, match="asha"):
        load_space(str(bad))
    bad.write_text("search:\n  train.lr: {choice: [0.001]}\nasha: {patience: 2}\n")
    with pytest.raises(ValueError, match="asha"):
        load_space(str(bad))


def test_sweep_asha_mlflow_best_config_and_resume(world, tmp_path):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "sweeps"
    # the background threshold decides an untrained model's mIoU (0 = never background, far below 1.0), so
    # ASHA has a real difference to act on; the search is seeded (config seed), so the trial order is fixed
    space = tmp_path / "space.yaml"
    space.write_text("fixed: {train.cpus_per_worker: 1, data.loader_workers: 0, eval.num_overlays: 0}\n"
                     "search:\n  eval.bg_thresh: {choice: [0.0, 1.0]}\n  loss.entity_weight: {choice: [0.0, 1.0]}\n")
    cmd = [sys.executable, SWEEP, "--num-samples", "4", "--max-concurrent", "1", "--space", str(space),
           *_args(world, out, "s1")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env(RAY_DEDUP_LOGS="0"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    def done_trials():
        return [p.parent for p in (out / "s1").glob("trial_*/result.json") if '"done": true' in p.read_text()]

    try:  # interrupt once the first trial has finished (trials run one at a time)
        deadline = time.time() + 300
        while not done_trials() and time.time() < deadline:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            time.sleep(0.5)
        finished = done_trials()[0]
        os.killpg(proc.pid, signal.SIGINT)
        first_out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    before = (finished / "result.json").stat().st_mtime_ns, (finished / "result.json").stat().st_size
    resumed = subprocess.run([*cmd, "--resume"], cwd=tmp_path, env=env(RAY_DEDUP_LOGS="0"), capture_output=True,
                             text=True, timeout=420)
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log[-4000:]
    first_id = finished.name.split("_", 1)[1]
    assert f"trial {first_id} starts" not in log  # the finished trial was not run again
    assert ((finished / "result.json").stat().st_mtime_ns, (finished / "result.json").stat().st_size) == before
    assert len(list((out / "s1").glob("trial_*"))) == 4

    table = resumed.stdout.split("trial,eval.bg_thresh")[1].splitlines()[1:5]
    assert len(table) == 4 and any(",True,False" in row for row in table)  # ASHA stopped a trial early

    best = out / "s1.best.yaml"
    cfg = load_config(str(best))
    assert cfg.train.stage1_steps == 5  # stage 1 ends off the evaluation grid: reported all the same
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sweep-tests")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("ovseg.sweep") == "s1"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.tags["ovseg.trial_id"] for r in children) == sorted(
        p.name.split("_", 1)[1] for p in (out / "s1").glob("trial_*"))  # one child per trial, none twice
    for child in children:
        assert client.get_metric_history(child.info.run_id, "zeroshot/synthetic/miou")
    arts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"results.csv", "best", "plots"} <= arts

    # the best config trains as it is: `pretrain.py --config-file` reads it with this same load_config, and its
    # Ray path is test_pretrain_ray's (a further Ray cluster here would cost a minute of CI for nothing new)
    from ovseg.train.pretrain import Pretrainer, WorkerEnv

    short = Pretrainer(load_config(str(best), ["train.stage1_steps=2", "train.stage2_steps=0",
                                              f"train.output_dir={tmp_path / 'runs'}"]), WorkerEnv(scratch=tmp_path))
    metrics = short.run()
    assert short.step == 2 and math.isfinite(metrics["zeroshot/synthetic/miou"])


def test_a_restarted_trial_finds_its_own_child_run(tmp_path):
    from mlflow.tracking import MlflowClient

    from ovseg.integrations.ray_tune import _existing_child_run

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("sweep")
    parent, other = client.create_run(exp).info.run_id, client.create_run(exp).info.run_id
    mine = client.create_run(exp, tags={"mlflow.parentRunId": parent, "ovseg.trial_id": "ab_00000"}).info.run_id
    client.create_run(exp, tags={"mlflow.parentRunId": other, "ovseg.trial_id": "ab_00001"})
    assert _existing_child_run(uri, parent, "ab_00000") == mine
    assert _existing_child_run(uri, parent, "ab_00001") is None  # another sweep's trial is not ours
    assert _existing_child_run(uri, None, "ab_00000") is None
    assert _existing_child_run(f"sqlite:///{tmp_path / 'missing' / 'x.db'}", parent, "ab_00000") is None
