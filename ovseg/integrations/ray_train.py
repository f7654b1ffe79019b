"""Pretraining on Ray Train: a ``TorchTrainer`` whose workers run ``ovseg.train.pretrain.Pretrainer`` under DDP.

Workers, GPUs and CPUs per worker come from ``train.*``. Each worker gets its rank, its device, an
all-gather that keeps gradients (``torch.distributed.nn``) and a ``report`` that hands rank 0's checkpoint
file to Ray; Ray keeps the latest checkpoints in ``<train.output_dir>/<run name>``. A rerun with the same
name resumes from the latest one (``--resume``), and with ``train.max_failures`` Ray restarts failed workers
from it by itself. Only rank 0 talks to MLflow.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..config import Config, from_dict, to_dict
from ..data.synthetic.world import ensure_synthetic_world
from ..tracking import MlflowTracker, NullTracker, default_tracking_uri
from ..train.pretrain import CHECKPOINT_FILE, Pretrainer, WorkerEnv


def _all_gather(t):
    import torch
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(t), dim=0)


def _reduce_sum(device):
    """An int64 array summed over the ranks (one all-reduce; on the rank's device, which NCCL needs)."""
    import numpy as np
    import torch
    import torch.distributed as dist

    def reduce(values):
        t = torch.as_tensor(np.ascontiguousarray(values), dtype=torch.int64).to(device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu().numpy()

    return reduce


def _sync_buffers(model) -> None:
    """Rank 0's buffers on every rank (one broadcast each; the BatchNorm statistics differ after a step)."""
    import torch.distributed as dist

    for buf in model.buffers():
        dist.broadcast(buf.data, src=0)


def _gather_objects(obj) -> list:
    """Every rank's ``obj`` in rank order (each rank's data position for the checkpoint rank 0 writes)."""
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _worker_loop(loop_config: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch

    from ..checkpoint import read_checkpoint

    cfg = from_dict(Config, loop_config["config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed + rank)
    if device.type == "cpu":  # loader workers are light next to the model: give the step every core it asked for
        torch.set_num_threads(max(1, cfg.train.cpus_per_worker))
    scratch = Path(tempfile.mkdtemp(prefix=f"ovseg-rank{rank}-"))

    def report(metrics: dict, path: Path | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(str(path.parent)) if path is not None else None
        ray.train.report(metrics, checkpoint=checkpoint)
        if path is not None:
            shutil.rmtree(path.parent, ignore_errors=True)

    def wrap(model):
        if world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    env = WorkerEnv(rank=rank, world_size=world, device=device, gather=_all_gather if world > 1 else None,
                    wrap=wrap, report=report, scratch=scratch, reduce_sum=_reduce_sum(device) if world > 1 else None,
                    sync_buffers=_sync_buffers if world > 1 else None,
                    gather_objects=_gather_objects if world > 1 else None)
    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = read_checkpoint(Path(d) / CHECKPOINT_FILE)
    tracker = NullTracker()
    if rank == 0:
        run_id = resume.state.get("mlflow_run_id") if resume is not None else None
        tracker = MlflowTracker(cfg.train.experiment, run_name=loop_config["run_name"],
                                tracking_uri=loop_config["tracking_uri"], run_id=run_id,
                                tags={"ovseg.config": cfg.name})
        if resume is not None:
            print(f"[ovseg] resuming at step {resume.step} (stage {resume.state.get('stage', 1)})", flush=True)
    trainer = Pretrainer(cfg, env, tracker)
    if resume is not None:
        trainer.restore(resume)
    status = "FAILED"
    try:
        trainer.run()
        status = "FINISHED"
    finally:
        tracker.close(status)
        shutil.rmtree(scratch, ignore_errors=True)


def _default_run_name(config_name: str, storage: Path, resume: bool) -> str:
    """A fresh run gets ``<config>-<UTC time>``; ``--resume`` without a name continues the newest one."""
    if resume:
        runs = sorted(storage.glob(f"{config_name}-2*"), key=lambda p: p.name)
        if not runs:
            raise FileNotFoundError(f"--resume: no run of config '{config_name}' in {storage}; "
                                    "name one with train.run_name=...")
        return runs[-1].name
    import datetime

    return f"{config_name}-{datetime.datetime.now(datetime.timezone.utc):%Y%m%d-%H%M%S}"


def run_pretraining(cfg: Config, *, resume: bool = False, address: str | None = None) -> dict:
    """Train ``cfg`` on Ray (a local Ray when none is running); returns the final reported metrics."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    tc = cfg.train
    if not cfg.data.train:
        ensure_synthetic_world(cfg)  # on the driver, once, before any worker starts
    storage = Path(tc.output_dir).expanduser().resolve()
    name = tc.run_name or _default_run_name(cfg.name, storage, resume)
    run_dir = storage / name
    if run_dir.exists() and not resume:
        raise FileExistsError(f"run folder {run_dir} exists: pass --resume to continue it, or choose another "
                              f"train.run_name / train.output_dir")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    # a local Ray's dashboard stops the whole Ray when one of its modules takes over 30 s to start, as on a busy
    # machine; allow it three minutes
    os.environ.setdefault("RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT", "180")
    started_here = False
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address)
        else:  # the embedded default: a private local Ray on loopback
            need = tc.num_workers * tc.cpus_per_worker
            # the dashboard serves the state API that Ray Train's controller polls; keep it on loopback
            ray.init(num_cpus=max(need, os.cpu_count() or 1), include_dashboard=True, dashboard_host="127.0.0.1",
                     _node_ip_address="127.0.0.1", configure_logging=False)
        started_here = True
    try:
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={"config": to_dict(cfg), "tracking_uri": default_tracking_uri(), "run_name": name},
            scaling_config=ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu,
                                         resources_per_worker={"CPU": tc.cpus_per_worker}),
            run_config=RunConfig(name=name, storage_path=str(storage),
                                 failure_config=FailureConfig(max_failures=tc.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2)),
        )
        result = trainer.fit()
    finally:
        if started_here:
            ray.shutdown()
    if result.error:
        raise result.error
    return dict(result.metrics or {})
