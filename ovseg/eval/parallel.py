"""A checkpoint scored by several processes (``platform/evaluate.py --workers N``): each scores its share.

Process 0 (the caller) scores the first share of every benchmark's images and logs; processes 1..N-1 are
started (forked on CPU with one thread each, else spawned), each loads the checkpoint itself (on ``cuda:k``
when there are N GPUs, else on the caller's device, with the CPU's threads divided between them), scores its
share with the same protocol and sends its confusion matrices back; ``evaluate_and_log``'s one reduction adds them (``ovseg.eval.report``). The split is the one
pretraining uses on its ranks (``evaluate.share``), so the metrics equal a single-process evaluation's.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_lib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..tracking import NullTracker
from .report import evaluate_and_log


@dataclass(frozen=True)
class EvalJob:
    """What a process needs to rebuild the evaluation by itself (plain values: it travels to spawned ones)."""

    checkpoint: str
    overrides: tuple[str, ...] = ()
    datasets: tuple[str, ...] | None = None  # None: the checkpoint config's eval.datasets
    class_names: tuple[str, ...] | None = None  # None: the checkpoint config's eval.class_names
    max_images: int | None = None


def benchmarks_for(specs, cfg) -> list:
    """``--dataset`` specs -> benchmarks; a bare ``synthetic`` / ``synthetic-unseen`` is the run's world."""
    from ..data.benchmarks.registry import build_benchmark
    from ..data.synthetic.world import ensure_synthetic_world, synthetic_root

    out = []
    for spec in specs:
        name, sep, root = (s.strip() for s in spec.partition("="))
        if not sep:
            if name not in ("synthetic", "synthetic-unseen"):
                raise ValueError(f"--dataset {spec}: give the data folder as {name}=/path (only the synthetic "
                                 "world's splits have a default)")
            world = synthetic_root(cfg)
            if not (world / "val").is_dir():
                if cfg.data.synthetic_dir:
                    raise FileNotFoundError(f"--dataset synthetic: the checkpoint's world {world} is not on this "
                                            "machine; give its val folder as synthetic=PATH")
                world = ensure_synthetic_world(cfg)  # the default world is deterministic for its seed and sizes
            root = str(world / "val")
        out.append(build_benchmark(name, root))
    return out


def load(job: EvalJob, device: torch.device):
    """(checkpoint, config with the eval overrides, model on ``device``, benchmarks)."""
    from ..checkpoint import model_from_checkpoint, read_checkpoint
    from ..config import Config, from_dict, merge_dicts, parse_overrides, to_dict
    from .evaluate import with_class_names

    ckpt = read_checkpoint(Path(job.checkpoint))
    model = model_from_checkpoint(ckpt).to(device)
    cfg = from_dict(Config, merge_dicts(to_dict(ckpt.config), parse_overrides(list(job.overrides))))
    names = job.class_names if job.class_names is not None else cfg.eval.class_names
    benches = with_class_names(benchmarks_for(job.datasets or cfg.eval.datasets, cfg), names)
    return ckpt, cfg, model, benches


def _limit(job: EvalJob, cfg) -> int | None:
    return job.max_images if job.max_images is not None else cfg.eval.max_images


def _part(job: EvalJob, part: int, parts: int, device: str, threads: int, out) -> None:
    """Spawned process ``part``: score its share and put its (part, local array) on ``out``."""
    try:
        torch.set_num_threads(threads)
        ckpt, cfg, model, benches = load(job, torch.device(device))

        def send(local: np.ndarray) -> np.ndarray:
            out.put((part, local))
            return local

        evaluate_and_log(model, benches, NullTracker(), ckpt.step, cfg.eval, max_images=_limit(job, cfg),
                         part=(part, parts), reduce=send)
    except BaseException as exn:  # the caller reports it; a silent death would leave it waiting
        out.put((part, f"{type(exn).__name__}: {exn}"))


def devices_for(device: torch.device, workers: int) -> list[str]:
    """Part k's device: ``cuda:k`` when ``device`` is CUDA and there are ``workers`` GPUs, else ``device``."""
    if device.type == "cuda" and torch.cuda.device_count() >= workers:
        return [f"cuda:{k}" for k in range(workers)]
    return [str(device)] * workers


def evaluate_checkpoint(job: EvalJob, *, device: torch.device, workers: int = 1, tracker=None, progress=None,
                        loaded=None, threads: int | None = None, timeout_s: float = 24 * 3600):
    """Score ``job`` on ``workers`` processes (this one included); returns (metrics, results, checkpoint,
    config). ``loaded``: this process's ``load(job, device)`` when the caller already has it. ``threads``:
    torch threads per process with several (default: the cores divided between them)."""
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    ckpt, cfg, model, benches = loaded if loaded is not None else load(job, device)
    tracker = tracker or NullTracker()

    def score(**parts):
        return evaluate_and_log(model, benches, tracker, ckpt.step, cfg.eval, where=f"step {ckpt.step}",
                                max_images=_limit(job, cfg), progress=progress, **parts)

    if workers == 1:
        return (*score(), ckpt, cfg)
    devices = devices_for(device, workers)
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    # A forked child starts in milliseconds instead of re-importing torch; it is safe on CPU when each part runs
    # one thread (as DataLoader workers do). CUDA, or several OpenMP threads after a fork, need a fresh process.
    fork = all(d == "cpu" for d in devices) and threads == 1 and "fork" in mp.get_all_start_methods()
    ctx = mp.get_context("fork" if fork else "spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_part, args=(job, k, workers, devices[k], threads, out), daemon=True)
             for k in range(1, workers)]
    for p in procs:
        p.start()

    def gather(local: np.ndarray) -> np.ndarray:
        total, pending = local.copy(), set(range(1, workers))
        waited = 0.0
        while pending:
            try:
                k, value = out.get(timeout=5.0)
            except queue_lib.Empty:
                waited += 5.0
                dead = [k for k, p in zip(range(1, workers), procs) if k in pending and not p.is_alive()]
                if dead or waited > timeout_s:
                    raise RuntimeError(f"evaluation part(s) {sorted(dead or pending)} ended without a result")
                continue
            if isinstance(value, str):
                raise RuntimeError(f"evaluation part {k} failed: {value}")
            if value.shape != total.shape:
                raise RuntimeError(f"evaluation part {k} scored other benchmarks ({value.shape} != {total.shape})")
            total += value
            pending.discard(k)
        return total

    own_threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # this process is one of the parts: its share of the cores
    try:
        model.to(devices[0])
        metrics, results = score(part=(0, workers), reduce=gather)
    finally:
        torch.set_num_threads(own_threads)
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():  # only ones this call started
                p.kill()
                p.join()
    return metrics, results, ckpt, cfg
