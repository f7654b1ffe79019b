"""Ray Tune sweeps over the config tree: ASHA on zero-shot mIoU, one MLflow child run per trial.

A search space speaks the dotted config keys (``loss.entity_weight``, ``model.vision.num_output_groups``...).
Single-worker trials run ``ovseg.train.pretrain.Pretrainer`` inside the function trainable; multi-worker trials
start a Ray Train ``TorchTrainer`` inside it (as Ray 2.55 recommends) and forward its reports to Tune.
Every report carries ``zeroshot/<dataset>/miou`` (checkpoints are made at each evaluation), so ASHA can stop
weak trials early, and an interrupted sweep restores from its experiment folder without rerunning
finished trials. The driver keeps one parent MLflow run with the results table, a plot per searched
parameter, and the best configuration as YAML that ``platform/pretrain.py --config-file`` takes as is.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import yaml

from ..config import Config, from_dict, merge_dicts, parse_overrides, save_config, to_dict
from ..data.synthetic.world import ensure_synthetic_world
from ..tracking import MlflowTracker, default_tracking_uri
from ..train.pretrain import CHECKPOINT_FILE, Pretrainer, WorkerEnv

SAMPLERS = ("choice", "uniform", "loguniform", "randint")
SPACES_DIR = Path(__file__).resolve().parents[1] / "configs" / "spaces"


def load_space(name_or_path: str) -> dict:
    """A space file: ``{fixed: {key: value}, search: {key: {sampler: args}}}``; a bare name is one shipped in
    ``ovseg/configs/spaces`` (inside the package, so an installed wheel has them too)."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = SPACES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"search space {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    unknown = set(data) - {"fixed", "search", "asha"}
    if unknown or not isinstance(data.get("search"), dict) or not data["search"]:
        raise ValueError(f"{path}: a space holds 'fixed', a non-empty 'search' mapping and optionally 'asha' "
                         f"(got {sorted(data)})")
    asha = data.setdefault("asha", {}) or {}
    if not isinstance(asha, dict) or set(asha) - {"grace_period", "reduction_factor"} or not all(
            isinstance(v, int) and v >= 1 for v in asha.values()):
        raise ValueError(f"{path}: 'asha' takes grace_period and reduction_factor, integers >= 1 (got {asha!r})")
    data["asha"] = asha
    for key, spec in data["search"].items():
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in SAMPLERS:
            raise ValueError(f"{path}: '{key}' needs exactly one sampler of {SAMPLERS}, got {spec!r}")
    data.setdefault("fixed", {})
    return data


def _as_override(key: str, value) -> str:
    return f"{key}={json.dumps(value)}"


def trial_config(base: dict, params: dict) -> Config:
    """The base config tree (a dict) with the trial's dotted parameters applied."""
    return from_dict(Config, merge_dicts(base, parse_overrides([_as_override(k, v) for k, v in params.items()])))


def _trial_name(trial) -> str:
    return f"trial_{trial.trial_id}"


def _tune_space(search: dict):
    from ray import tune

    out = {}
    for key, spec in search.items():
        kind, args = next(iter(spec.items()))
        out[key] = getattr(tune, kind)(args) if kind == "choice" else getattr(tune, kind)(*args)
    return out


def _trainable(config: dict) -> None:
    import ray.tune
    import torch

    from ..checkpoint import read_checkpoint

    params = {k: v for k, v in config.items() if not k.startswith("_")}
    cfg = trial_config(config["_base"], params)
    ctx = ray.tune.get_context()
    if cfg.train.num_workers > 1:
        return _distributed_trial(cfg, config, ctx)
    torch.set_num_threads(max(1, cfg.train.cpus_per_worker))
    device = torch.device("cuda" if cfg.train.use_gpu and torch.cuda.is_available() else "cpu")
    resume = None
    checkpoint = ray.tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = read_checkpoint(Path(d) / CHECKPOINT_FILE)
    run_id = resume.state.get("mlflow_run_id") if resume is not None else None
    if run_id is None:  # a trial restarted before its first checkpoint keeps its one child run
        run_id = _existing_child_run(config["_uri"], config["_parent"], ctx.get_trial_id())
    print(f"[ovseg] trial {ctx.get_trial_id()} starts at step {resume.step if resume else 0}", flush=True)
    tracker = MlflowTracker(cfg.train.experiment, run_name=ctx.get_trial_name(), tracking_uri=config["_uri"],
                            run_id=run_id, parent_run_id=config["_parent"], tags={"ovseg.trial_id": ctx.get_trial_id()})

    def report(metrics: dict, path: Path | None) -> None:
        metrics = {**metrics, "mlflow_run_id": tracker.run_id or ""}
        ckpt = ray.tune.Checkpoint.from_directory(str(path.parent)) if path is not None else None
        ray.tune.report(metrics, checkpoint=ckpt)
        if path is not None:  # Tune has copied it to the sweep's storage
            shutil.rmtree(path.parent, ignore_errors=True)

    scratch = Path(tempfile.mkdtemp(prefix="ovseg-trial-"))  # this trial's own: removed when it ends
    try:
        trainer = Pretrainer(cfg, WorkerEnv(device=device, report=report, scratch=scratch), tracker)
        if resume is not None:
            trainer.restore(resume)
        trainer.run()
        tracker.close("FINISHED")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _existing_child_run(uri: str, parent_run_id: str | None, trial_id: str) -> str | None:
    """The MLflow child run this trial already has under the sweep's parent run, if any (None on any error:
    tracking problems never stop a trial)."""
    if not parent_run_id:
        return None
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        parent = client.get_run(parent_run_id)
        runs = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and "
                                                f"tags.`ovseg.trial_id` = '{trial_id}'")
        return runs[0].info.run_id if runs else None
    except Exception:  # noqa: BLE001
        return None


def _distributed_trial(cfg: Config, config: dict, ctx) -> None:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from .ray_train import _worker_loop

    tc = cfg.train
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"config": to_dict(cfg), "tracking_uri": config["_uri"], "run_name": ctx.get_trial_name()},
        scaling_config=ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu,
                                     resources_per_worker={"CPU": tc.cpus_per_worker}),
        run_config=RunConfig(name=ctx.get_trial_name(), storage_path=str(Path(config["_storage"]) / "train"),
                             callbacks=[TuneReportCallback()]))
    trainer.fit()


def run_sweep(base: Config, space: dict, *, num_samples: int, name: str, output: str | Path,
              resume: bool = False, max_concurrent: int | None = None) -> dict:
    """Run (or resume) the sweep; returns {"best_config": path, "table": rows, "best": metrics}."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    cfg = base
    metric = f"zeroshot/{_first_dataset(cfg)}/miou"
    # every evaluation is also a checkpoint and a Tune report: ASHA needs the metric in each report
    cfg = from_dict(Config, merge_dicts(to_dict(cfg), {"train": {"ckpt_every": cfg.train.eval_every,
                                                                  "stop_after": None}}))
    if not cfg.data.train:
        ensure_synthetic_world(cfg)
    storage = Path(output).expanduser().resolve()
    sweep_dir = storage / name
    state_file = storage / f"{name}.sweep.json"
    if sweep_dir.exists() and not resume:
        raise FileExistsError(f"sweep folder {sweep_dir} exists: pass --resume, or choose another --name")
    uri = default_tracking_uri()
    parent_id = json.loads(state_file.read_text())["parent_run_id"] if resume and state_file.is_file() else None
    parent = MlflowTracker(cfg.train.experiment, run_name=name, tracking_uri=uri, run_id=parent_id,
                           tags={"ovseg.sweep": name})
    if parent_id is None:
        parent.log_params({f"fixed.{k}": v for k, v in space["fixed"].items()})
        parent.log_text(yaml.safe_dump(space, sort_keys=False), "space.yaml")
        storage.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps({"parent_run_id": parent.run_id}))
    reports = len(report_steps(cfg))
    # ASHA's first cut comes after `grace` reports: a trial must have had the time to leave the all-background
    # level by then, or the cut ranks noise
    grace = space.get("asha", {}).get("grace_period", 1)
    if cfg.train.num_workers == 1:
        resources = {"cpu": cfg.train.cpus_per_worker, "gpu": 1 if cfg.train.use_gpu else 0}
    else:  # the trial only coordinates; its TorchTrainer asks Ray for the workers' resources
        resources = {"cpu": 0}
    trainable = tune.with_resources(_trainable, resources)
    started_here = False
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init()
        else:
            ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", configure_logging=False)
        started_here = True
    try:
        if resume:
            tuner = tune.Tuner.restore(str(sweep_dir), trainable, resume_unfinished=True, resume_errored=True)
        else:
            space_tune = {**_tune_space(space["search"]), "_base": to_dict(cfg), "_uri": uri,
                          "_parent": parent.run_id, "_storage": str(sweep_dir)}
            tuner = tune.Tuner(
                trainable, param_space=space_tune,
                tune_config=tune.TuneConfig(metric=metric, mode="max", num_samples=num_samples,
                                            search_alg=BasicVariantGenerator(random_state=cfg.seed),
                                            max_concurrent_trials=max_concurrent,
                                            trial_name_creator=_trial_name, trial_dirname_creator=_trial_name,
                                            scheduler=ASHAScheduler(
                                                max_t=reports, grace_period=min(grace, reports),
                                                reduction_factor=space["asha"].get("reduction_factor", 2))),
                run_config=tune.RunConfig(name=name, storage_path=str(storage),
                                          checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
        grid = tuner.fit()
    finally:
        if started_here:
            ray.shutdown()
    return _summarise(grid, space, metric, cfg, storage / f"{name}.best.yaml", parent, reports)


def report_steps(cfg: Config) -> set[int]:
    """The steps at which a trial reports: every evaluation (each ``eval_every`` steps and each stage end)."""
    s1, total = cfg.train.stage1_steps, cfg.train.stage1_steps + cfg.train.stage2_steps
    return set(range(cfg.train.eval_every, total + 1, cfg.train.eval_every)) | {s for s in (s1, total) if s > 0}


def fixed_overrides(space: dict) -> list[str]:
    """The space's ``fixed`` section as dotted overrides (command-line overrides go after them and win)."""
    return [_as_override(k, v) for k, v in space["fixed"].items()]


def _first_dataset(cfg: Config) -> str:
    return cfg.eval.datasets[0].partition("=")[0].strip() if cfg.eval.datasets else "synthetic"


def _summarise(grid, space: dict, metric: str, cfg: Config, best_path: Path, parent, reports: int) -> dict:
    from mlflow.tracking import MlflowClient

    keys = list(space["search"])
    rows, best = [], None
    client = MlflowClient(parent.uri) if parent.enabled else None
    for result in grid:
        df = result.metrics_dataframe
        values = [] if df is None or metric not in df else [v for v in df[metric].tolist() if v == v]
        iters = int(result.metrics.get("training_iteration", 0)) if result.metrics else 0
        row = {"trial": Path(result.path).name, **{k: result.config.get(k) for k in keys},
               "best_miou": max(values) if values else float("nan"), "reports": iters,
               "stopped_early": iters < reports and result.error is None, "error": bool(result.error)}
        rows.append(row)
        run_id = (result.metrics or {}).get("mlflow_run_id")
        if client is not None and run_id:
            client.set_terminated(run_id, "KILLED" if row["stopped_early"] else "FINISHED")
        if values and (best is None or row["best_miou"] > best[0]["best_miou"]):
            best = (row, result.config)
    if best is None:
        raise RuntimeError(f"no trial reported {metric}; see the trial logs under {grid.experiment_path}")
    best_cfg = trial_config(best[1]["_base"], {k: best[1][k] for k in keys})
    save_config(best_cfg, best_path)
    table = _write_table(rows, keys)
    parent.log_text(table, "results.csv")
    parent.log_artifact(best_path, "best")
    parent.log_metrics({f"best/{metric}": best[0]["best_miou"]}, step=0)
    for key in keys:
        img = _plot(rows, key, metric)
        if img is not None:
            parent.log_image(img, f"plots/{key.replace('.', '_')}.png")
    parent.close("FINISHED")
    print(table)
    print(f"best {metric} {best[0]['best_miou']:.4f} ({best[0]['trial']}); configuration: {best_path}")
    return {"best_config": str(best_path), "table": rows, "best": best[0]}


def _write_table(rows: list[dict], keys: list[str]) -> str:
    cols = ["trial", *keys, "best_miou", "reports", "stopped_early", "error"]
    lines = [",".join(cols)]
    for r in rows:
        lines.append(",".join(json.dumps(r[c]) if isinstance(r[c], (list, dict)) and c in keys
                              else str(r[c]).replace(",", ";") for c in cols))
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], key: str, metric: str):
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    pts = [(str(r[key]) if isinstance(r[key], list) else r[key], r["best_miou"]) for r in rows
           if r["best_miou"] == r["best_miou"]]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
    xs = [p[0] for p in pts]
    if all(isinstance(x, (int, float)) for x in xs):
        ax.scatter(xs, [p[1] for p in pts])
        if min(xs) > 0 and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
    else:
        labels = sorted(set(map(str, xs)))
        ax.scatter([labels.index(str(x)) for x in xs], [p[1] for p in pts])
        ax.set_xticks(range(len(labels)), labels)
    ax.set_xlabel(key)
    ax.set_ylabel(metric)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    buf.seek(0)
    return Image.open(buf).convert("RGB")

