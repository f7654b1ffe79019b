"""Pretraining: stage 1 (contrast + entity completion), then stage 2 (+ cross-image mask consistency).

Framework-free: a Ray Train worker (``integrations/ray_train.py``) hands in its rank, device, all-gather,
tracker and a ``report`` callable that persists checkpoints; the same code runs in a plain process.
``Pretrainer`` is configuration plus hooks: each stage builds its data, optimizer and ``Schedule`` and runs the
one loop (``engine.train_steps``) with ``_StageHooks`` (log, evaluate, checkpoint, stop early). The schedule follows the released code (reference section 6): AdamW, linear warmup then cosine per step,
learning rates scaled by global batch / ``train.lr_batch``, clipping at 5; stage 2 starts the momentum
encoder from the stage-1 weights, freezes the text tower (not its projector) and switches to the light
augmentation with paired images. Checkpoints carry the optimizer, the step, the stage, the data position
(epoch, batches into it) and, for every rank, its loader's position in the shards and its generator states: a
resumed run continues the same batches and noise without re-reading what it consumed (docs/data.md,
"Resuming"); a checkpoint without them (older versions) is fast-forwarded by re-reading the epoch's batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import Checkpoint, optimizer_from_tensors, optimizer_to_tensors, save_checkpoint
from ..config import Config, flatten, to_dict
from ..data.captions.rngstate import restore_process_rng
from ..data.synthetic.world import synthetic_root
from ..eval.evaluate import parse_eval_sets
from ..eval.report import evaluate_and_log
from ..losses import Gather
from ..models import build_model
from ..tracking import NullTracker
from .engine import autocast_dtype_for, train_steps
from .resume import data_state, own_data_state, position_loader
from .schedule import Schedule, build_optimizer
from .task import Task

CHECKPOINT_FILE = "checkpoint.safetensors"


@dataclass
class WorkerEnv:
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    gather: Gather | None = None
    wrap: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m  # DDP for several ranks
    # persist a checkpoint: report(metrics, path_or_None); every rank calls it, rank 0 gives the file
    report: Callable[[dict, Path | None], None] | None = None
    # sum an int64 array over the ranks (an all-reduce; None with one rank): the evaluation's confusion matrices
    reduce_sum: Callable[[np.ndarray], np.ndarray] | None = None
    # give every rank rank 0's buffers (BatchNorm running statistics: each rank's last forward updated its own
    # with its own batch), so that every share is scored by the model the checkpoint holds
    sync_buffers: Callable[[torch.nn.Module], None] | None = None
    # every rank's object, in rank order (an all_gather_object; None with one rank): each rank's data position
    # and generator states reach the checkpoint that rank 0 writes
    gather_objects: Callable[[object], list] | None = None
    scratch: Path = field(default_factory=lambda: Path("."))


def text_cache_dir(cfg: Config) -> Path:
    if cfg.data.text_cache_dir:
        return Path(cfg.data.text_cache_dir).expanduser()
    if not cfg.data.train:
        return synthetic_root(cfg) / "text-cache"
    return Path.home() / ".cache" / "ovseg" / "text-cache"


def train_urls(cfg: Config) -> list[str]:
    if cfg.data.train:
        return list(cfg.data.train)
    root = synthetic_root(cfg) / "train"
    return sorted(str(p) for p in root.glob("*.tar"))


def epoch_length(cfg: Config, batch: int, world_size: int) -> int:
    """Batches per epoch per rank: ``data.epoch_length``, else the real shards' own sample counts
    (``captions.epoch``: an error naming the shard when one has none), else the synthetic world's size."""
    if cfg.data.epoch_length:
        return cfg.data.epoch_length
    if cfg.data.train:
        from ..data.captions.epoch import epoch_batches

        return epoch_batches(train_urls(cfg), batch, world_size)
    return max(1, cfg.data.synthetic_train // (batch * world_size))


def check_data(cfg: Config) -> None:
    """The data checks a user can act on, run on the driver before any worker starts: real shards exist and
    each stage's epoch length can be known (``ValueError`` / ``FileNotFoundError`` naming what is wrong)."""
    if not cfg.data.train:
        return
    world = max(1, cfg.train.num_workers)
    for batch in {cfg.train.batch_size, cfg.train.stage2_batch_size or cfg.train.batch_size}:
        epoch_length(cfg, batch, world)


class Pretrainer:
    def __init__(self, cfg: Config, env: WorkerEnv, tracker=None):
        self.cfg, self.env = cfg, env
        self.autocast = autocast_dtype_for(env.device, cfg.train.bf16, cfg.train.bf16_cpu)  # before any work
        self.tracker = tracker or NullTracker()
        self.main = env.rank == 0
        torch.manual_seed(cfg.seed)  # `seed` decides the initial weights too (every rank the same), not only the data order
        self.model = build_model(cfg).to(env.device)
        if self.model.text.cache is not None:
            self.model.text.cache.persist_to(text_cache_dir(cfg))
        torch.manual_seed(cfg.seed + 1 + env.rank)  # then one stream per rank for the stochastic layers (Gumbel noise)
        self.stages = [(1, cfg.train.stage1_steps), (2, cfg.train.stage2_steps)]
        self.total_steps = sum(n for _, n in self.stages)
        self.step, self.stage, self.epoch, self.batch_in_epoch = 0, 1, 0, 0
        self.history: list[dict] = []
        self._resume_data: dict | None = None  # this rank's stored data position and generator states
        self._stage_loader = None  # the running stage's loader (its position goes into checkpoints)
        self.eval_sets = None
        self.counts: dict[str, int] = {}

    # ------------------------------------------------------------------ state
    def restore(self, ckpt: Checkpoint) -> None:
        st = ckpt.state
        self.step, self.stage = ckpt.step, int(st.get("stage", 1))
        self.epoch, self.batch_in_epoch = int(st.get("epoch", 0)), int(st.get("batch_in_epoch", 0))
        self.history = list(st.get("history", []))
        self._resume_data = own_data_state(st.get("data"), self.env.rank, self.env.world_size)
        if any(k.startswith("momentum_vision.") for k in ckpt.weights):
            self.model.init_momentum()
            self.model.momentum_vision.to(self.env.device)
        self.model.load_state_dict(ckpt.weights)
        # the optimizer state belongs to the checkpoint's stage: a run stopped at the end of stage 1 starts stage
        # 2's optimizer afresh (a different parameter set and schedule), as an uninterrupted run does
        self._resume_optim = (ckpt.extra, st.get("optimizer"), self.stage)

    def _save(self, optimizer, metrics: dict) -> None:
        if self.env.report is None:
            return
        path = None
        data = data_state(self._stage_loader, self.env, self.stage)  # with several ranks a collective: all take part
        if self.main:
            tensors, meta = optimizer_to_tensors(optimizer)
            state = {"stage": self.stage, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                     "optimizer": meta, "history": self.history, "mlflow_run_id": self.tracker.run_id,
                     "data": data}
            path = self.env.scratch / f"step-{self.step:08d}" / CHECKPOINT_FILE
            save_checkpoint(path, self.model, self.cfg, self.step, metrics, extra=tensors, state=state)
            self.save_text_cache()
            if self.step == self.total_steps:
                self.tracker.log_artifact(path, "checkpoint")
        self.env.report({**metrics, "step": self.step}, path)

    def save_text_cache(self) -> None:
        cache = self.model.text.cache
        if self.main and cache is not None and cache.save() is not None:
            print(f"[ovseg] text cache: {len(cache.rows)} texts in {cache.path()} "
                  f"({cache.hit_rate:.1%} of lookups hit)", flush=True)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, float]:
        """Every rank scores its share of every benchmark's images; one all-reduce sums the confusion
        matrices, so every rank returns the same metrics and no rank waits at a collective for another's
        evaluation; rank 0 logs."""
        if self.eval_sets is None:
            self.eval_sets = parse_eval_sets(self.cfg.eval.datasets, synthetic_root(self.cfg) / "val",
                                             self.cfg.eval.class_names)
        world = self.env.world_size
        if world > 1 and (self.env.reduce_sum is None or self.env.sync_buffers is None):
            raise ValueError(f"evaluation on {world} ranks needs WorkerEnv.reduce_sum (an all-reduce) and "
                             "WorkerEnv.sync_buffers (a broadcast from rank 0)")
        if world > 1:
            self.env.sync_buffers(self.model)
        out, _ = evaluate_and_log(self.model, self.eval_sets, self.tracker, self.step, self.cfg.eval,
                                  label=f"step{self.step:08d}", where=f"step {self.step}",
                                  part=(self.env.rank, world), reduce=self.env.reduce_sum)
        self.history.append({"step": self.step, **{k: v for k, v in out.items() if k.endswith("/miou")}})
        return out

    # ------------------------------------------------------------------ training
    def _stage_setup(self, stage: int):
        tc = self.cfg.train
        saved = self._resume_data
        if saved is not None and "why" not in saved and saved.get("stage") != stage:
            # resumed at the end of the previous stage: this stage's stream starts at its beginning, from the
            # generator states the uninterrupted run had there
            self._resume_data = None
            if saved.get("rng"):
                restore_process_rng(saved["rng"], self.env.device)
        if stage == 2 and self.model.momentum_vision is None:
            self.model.init_momentum()  # the EMA encoder starts from the stage-1 weights
            self.model.momentum_vision.to(self.env.device)
        self.model.set_text_trainable(stage == 1 and not self.cfg.model.text.freeze)
        batch = tc.batch_size if stage == 1 else (tc.stage2_batch_size or tc.batch_size)
        scale = batch * self.env.world_size / tc.lr_batch
        if stage == 1:
            sched = dict(peak=tc.lr * scale, floor=tc.min_lr * scale, warmup=tc.warmup_steps,
                         warmup_start=tc.warmup_lr * scale)
        else:
            sched = dict(peak=tc.stage2_lr * scale, floor=tc.stage2_min_lr * scale, warmup=0, warmup_start=0.0)
        optimizer = build_optimizer(self.model, sched["peak"], tc.weight_decay, fused=tc.fused_adamw)
        resume = getattr(self, "_resume_optim", None)
        if resume is not None and resume[1] is not None and resume[2] == stage:
            optimizer_from_tensors(optimizer, resume[0], resume[1])
        self._resume_optim = None
        loader = self._loader(stage, batch)
        self._warm_text_cache(loader)
        return batch, sched, optimizer, loader

    def _warm_text_cache(self, loader) -> None:
        """A frozen tower's features for every text the stage's shards can produce, computed before its first
        step (in batches, on the worker's threads, with a progress bar on the main rank) and saved next to the
        data; a run that finds them on disk computes nothing. Texts it could not foresee fill in lazily."""
        from ..data.captions.loader import shard_texts

        text = self.model.text
        if text.cache is None or not text.frozen:
            return
        t0 = time.perf_counter()
        rows = shard_texts(loader.dataset.urls, loader.dataset.builder)
        was_training = text.training
        text.eval()
        computed = text.cache.fill(text, text.compute, rows, batch_size=256, progress=self.main,
                                   device=self.env.device)
        text.train(was_training)
        if self.main:
            print(f"[ovseg] text cache: {len(rows)} texts of the stage's shards, {computed} computed now "
                  f"({time.perf_counter() - t0:.1f} s)", flush=True)
            self.save_text_cache()

    def _training_module(self) -> torch.nn.Module:
        """The module the steps run: the model, or once per trainer its ``torch.compile`` (``train.compile``),
        which shares the model's parameters; checkpoints and evaluation read ``self.model`` itself."""
        backend = self.cfg.train.compile
        if not backend:
            return self.model
        if getattr(self, "_compiled", None) is None:
            self._compiled = torch.compile(self.model, backend=backend)
        return self._compiled

    def _loader(self, stage: int, batch: int):
        from ..data.captions.loader import build_caption_loader
        from ..data.captions.transforms import transform_kind

        cfg = self.cfg
        aug_stage = transform_kind(cfg.data.augment, stage)
        epoch_len = epoch_length(cfg, batch, self.env.world_size)
        return build_caption_loader(
            train_urls(cfg), self.model.tokenizer.hf, batch_size=batch, image_size=cfg.model.vision.img_size,
            stage=aug_stage, num_workers=cfg.data.loader_workers, seed=cfg.seed + 1000 * stage,
            shuffle_buffer=cfg.data.shuffle_buffer, pairs=stage == 2, epoch_length=epoch_len,
            max_length=cfg.model.text.max_length, rank=self.env.rank, world_size=self.env.world_size,
            entity_prompts=cfg.loss.needs_entity_prompts, pin_memory=self.env.device.type == "cuda")

    def _batches(self, loader):
        """Endless batches from the saved data position on, epoch by epoch. A checkpoint with this rank's loader
        position continues there (nothing re-read); one without (older versions, other data) re-reads and drops
        the epoch's consumed batches. The stored generator states are set just before the first batch is made."""
        saved, self._resume_data = self._resume_data, None
        skip, rng = position_loader(saved, loader, epoch=self.epoch, batch_in_epoch=self.batch_in_epoch,
                                    rank=self.env.rank, world_size=self.env.world_size)
        while True:
            loader.set_epoch(self.epoch)
            batches = iter(loader)
            for _ in range(skip):
                if next(batches, None) is None:
                    break
            skip = 0
            if rng is not None:
                restore_process_rng(rng, self.env.device)
                rng = None
            for batch in batches:
                self.batch_in_epoch += 1
                yield batch
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def run(self) -> dict:
        if self.main and self.step == 0:
            self.tracker.log_params(flatten(self.cfg))
            import yaml

            self.tracker.log_text(yaml.safe_dump(to_dict(self.cfg), sort_keys=False), "config.yaml")
        tc = self.cfg.train
        self.final_metrics = {}
        start = 0
        for stage, n in self.stages:
            end = start + n
            if self.step >= end or n == 0:
                start = end
                continue
            if stage != self.stage:  # a new stage starts its own data stream and schedule
                self.stage, self.epoch, self.batch_in_epoch = stage, 0, 0
            batch, sched, optimizer, loader = self._stage_setup(stage)
            self._stage_loader = loader
            task = Task(self.env.wrap(self._training_module()), self.cfg.loss, gather=self.env.gather,
                        rank=self.env.rank)
            schedule = Schedule(optimizer, start, n, **sched)
            hooks = _StageHooks(self, stage, end, batch, loader, optimizer, schedule)
            train_steps(task, self._batches(loader), optimizer, end - self.step, hooks=[schedule, hooks],
                        start_step=self.step, device=self.env.device, clip_grad=tc.clip_grad,
                        autocast_dtype=self.autocast)
            if hooks.stopped:
                return self.final_metrics
            self.counts = loader.counts.as_dict()
            self.save_text_cache()
            start = end
        return self.final_metrics


class _StageHooks:
    """What pretraining does around each engine step of a stage: log, evaluate, checkpoint, stop early."""

    def __init__(self, trainer: Pretrainer, stage: int, end: int, batch: int, loader, optimizer, schedule: Schedule):
        self.t, self.stage, self.end, self.loader, self.optimizer, self.schedule = (trainer, stage, end, loader,
                                                                                    optimizer, schedule)
        self.images_per_step = batch * trainer.env.world_size
        self.t0, self.seen, self.stopped = time.perf_counter(), 0, False

    def after_step(self, step: int, metrics: dict[str, float]) -> bool:
        t, tc = self.t, self.t.cfg.train
        t.step = step
        self.seen += 1
        if t.main and (step % tc.log_every == 0 or step == self.end):
            self._log(step, metrics)
        at_end = step >= self.end
        stopping = tc.stop_after is not None and step >= tc.stop_after
        evaluated = {}
        # also at the end of each stage (the ablation's stage-1 number) and when stopping early, so that every
        # checkpoint a sweep reports to Tune carries the metric ASHA ranks by
        if step % tc.eval_every == 0 or at_end or stopping:
            evaluated = t.evaluate()
            t.final_metrics.update(evaluated)
        if step % tc.ckpt_every == 0 or at_end or stopping:
            t._save(self.optimizer, {"loss": metrics["loss"], **evaluated})
        if stopping:
            print(f"[ovseg] stopping at step {step} (train.stop_after); --resume continues", flush=True)
            self.stopped = True
        return stopping

    def _log(self, step: int, metrics: dict[str, float]) -> None:
        t = self.t
        elapsed = time.perf_counter() - self.t0
        rate = self.seen * self.images_per_step / max(elapsed, 1e-9)
        logged = {f"train/{k}": v for k, v in metrics.items()}
        logged.update({"train/lr": self.schedule.lr, "train/images_per_s": rate, "train/stage": self.stage})
        cache = t.model.text.cache
        if cache is not None and cache.hits + cache.misses:
            logged["text/cache_hit_rate"] = cache.hit_rate
        counts = self.loader.counts.as_dict()
        logged.update({f"data/skipped/{k}": v for k, v in counts["skipped"].items()})
        logged.update({f"data/flagged/{k}": v for k, v in counts["flagged"].items()})
        t.tracker.log_metrics(logged, step)
        eta = (t.total_steps - step) * elapsed / max(self.seen, 1)
        print(f"[ovseg] step {step}/{t.total_steps} stage {self.stage} loss {metrics['loss']:.4f} "
              f"{rate:.0f} img/s lr {self.schedule.lr:.2e} eta {eta / 60:.1f} min", flush=True)
