"""Where a training step's time goes, per part, at the three configurations of the speed comparison.

    python bench/step_profile.py [--setups tiny,vits-stage1,vits-stage2] [--precisions fp32,bf16] [--steps 15]
                                 [--warmup 3] [--threads 2] [--text-tokens 17] [--out bench/results/step-profile.jsonl]

Setups (random weights; random images of the config's size; texts of ``--text-tokens`` tokens):
  tiny         width 192, depths [2, 2], 16 -> 4 groups, 96 px, patch 8, BERT 2 x 128, batch 32, stage 1
  vits-stage1  width 384, depths [6, 6], 64 -> 8 groups, 224 px, patch 16, BERT 4 x 256, batch 8, stage 1
  vits-stage2  the same, stage 2 (mask consistency, momentum encoder, text tower frozen)

One step is the engine's ``train_step``: forward, losses, backward, gradient clipping, AdamW, the momentum
encoder's update. The parts are timed on the step itself, with no profiler: forward hooks time each tower's
forward (vision, text, entity decoder, projectors, the momentum encoder); the loss terms, the Hungarian matching
(scipy) inside the mask term, the backward pass, the optimizer (clip + AdamW) and the EMA update are timed by
wrapping the functions the engine calls. "other forward" is the model's forward minus its timed children.
``data`` is the real caption loader (in-process, no worker) producing the same batch size from a generated
synthetic world at the setup's image size. ``--precisions``: float32, and/or the bf16 autocast step that
``train.bf16`` runs on a GPU and ``train.bf16_cpu`` on a CPU with native bf16 (towers in bf16, losses in float32;
skipped with a note where the CPU has none). Each part's median over the timed steps is printed with its share of
the median step, and images/s; one JSON line per setup goes to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SETUPS = {
    "tiny": (["model.vision.img_size=96", "model.vision.patch_size=8", "model.vision.embed_dim=192",
              "model.vision.depths=[2,2]", "model.vision.num_heads=[4,4]", "model.vision.num_group_tokens=[16,0]",
              "model.vision.num_output_groups=[4]", "model.vision.stem=patch", "model.text.width=128",
              "model.text.depth=2", "model.text.num_heads=4", "model.text.mlp_dim=512"], 32, 1),
    "vits-stage1": (["model.vision.img_size=224", "model.vision.patch_size=16", "model.vision.embed_dim=384",
                     "model.vision.depths=[6,6]", "model.vision.num_heads=[6,6]",
                     "model.vision.num_group_tokens=[64,0]", "model.vision.num_output_groups=[8]",
                     "model.vision.stem=patch", "model.text.width=256", "model.text.depth=4",
                     "model.text.num_heads=4", "model.text.mlp_dim=1024"], 8, 1),
}
SETUPS["vits-stage2"] = (SETUPS["vits-stage1"][0], 8, 2)


class Clock:
    """Accumulates wall time per part within one step."""

    def __init__(self):
        self.step: dict[str, float] = defaultdict(float)
        self.stack: list[tuple[str, float]] = []

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.step[name] += time.perf_counter() - t0
        return timed

    def hook(self, module, name: str) -> None:
        starts: list[float] = []
        module.register_forward_pre_hook(lambda m, a: starts.append(time.perf_counter()))

        def post(m, a, out):
            self.step[name] += time.perf_counter() - starts.pop()

        module.register_forward_hook(post)


def _batch(model, cfg, batch: int, tokens: int, stage: int):
    import torch

    size, vocab = cfg.model.vision.img_size, model.tokenizer.vocab_size
    ids = torch.randint(1000, vocab, (batch, tokens))
    mask = torch.ones(batch, tokens, dtype=torch.long)
    out = {"image": torch.randn(batch, 3, size, size), "caption_ids": ids, "caption_mask": mask,
           "question_ids": ids.clone(), "question_mask": mask, "answer_ids": ids.clone(), "answer_mask": mask}
    if stage == 2:
        out.update({"cross_image": torch.randn(batch, 3, size, size), "cross_entity_ids": ids[:, :8].clone(),
                    "cross_entity_mask": mask[:, :8], "has_pair": torch.ones(batch, dtype=torch.bool)})
    return out


def _data_seconds(cfg, batch: int, stage: int, n: int) -> float:
    """Median seconds for the real loader to produce one batch (in-process) at this image size."""
    from ovseg.data.captions.loader import build_caption_loader
    from ovseg.data.captions.transforms import transform_kind
    from ovseg.data.synthetic.world import ensure_synthetic_world
    from ovseg.models.text import build_tokenizer

    world = ensure_synthetic_world(cfg)
    tok = build_tokenizer(cfg.model.text)
    loader = build_caption_loader(sorted(str(p) for p in (world / "train").glob("*.tar")), tok.hf, batch_size=batch,
                                  image_size=cfg.model.vision.img_size, stage=transform_kind(cfg.data.augment, stage),
                                  num_workers=0, shuffle_buffer=64, pairs=stage == 2, epoch_length=n + 1,
                                  max_length=cfg.model.text.max_length)
    times, it = [], iter(loader)
    next(it)
    for _ in range(n):
        t0 = time.perf_counter()
        next(it)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def profile(name: str, steps: int, warmup: int, tokens: int, world_dir: Path, precision: str = "fp32") -> dict:
    import torch

    import ovseg.losses as losses_mod
    import ovseg.train.engine as engine
    from ovseg import build_model
    from ovseg.config import load_config
    from ovseg.train.schedule import build_optimizer
    from ovseg.train.task import Task

    overrides, batch, stage = SETUPS[name]
    cfg = load_config("vit-b16-cc4m", [*overrides, "model.vision.pretrained=null", "model.text.pretrained_dir=null",
                                       f"data.synthetic_dir={world_dir / str(cfg_size(overrides))}",
                                       "data.synthetic_train=256", "data.synthetic_val=4", "data.synthetic_seg=0"])
    torch.manual_seed(0)
    model = build_model(cfg)
    clock = Clock()
    if stage == 2:  # before any hook: the momentum encoder is a deep copy of the vision tower, hooks included
        model.init_momentum()
        model.set_text_trainable(False)
        clock.hook(model.momentum_vision, "momentum encoder")
    for part, module in (("vision", model.vision), ("text", model.text), ("entity decoder", model.decoder),
                         ("projectors", model.img_projector), ("projectors", model.text_projector),
                         ("projectors", model.bridge_projector)):
        clock.hook(module, part)
    clock.hook(model, "model forward")
    task = Task(model, cfg.loss)
    task.losses = clock.wrap("losses", task.losses)
    task.after_update = clock.wrap("EMA update", task.after_update)
    losses_mod.hungarian_match = clock.wrap("hungarian", losses_mod.hungarian_match)
    data = _batch(model, cfg, batch, tokens, stage)
    opt = build_optimizer(model, 1e-4, fused=cfg.train.fused_adamw)
    opt.step = clock.wrap("optimizer", opt.step)
    clip = torch.nn.utils.clip_grad_norm_
    torch.nn.utils.clip_grad_norm_ = clock.wrap("optimizer", clip)
    real_backward = torch.Tensor.backward
    torch.Tensor.backward = clock.wrap("backward", real_backward)
    per_part: dict[str, list[float]] = defaultdict(list)
    totals = []
    try:
        for i in range(warmup + steps):
            clock.step.clear()
            t0 = time.perf_counter()
            engine.train_step(task, data, opt, autocast_dtype=torch.bfloat16 if precision == "bf16" else None)
            total = time.perf_counter() - t0
            if i < warmup:
                continue
            totals.append(total)
            s = dict(clock.step)
            children = sum(s.get(k, 0.0) for k in ("vision", "text", "entity decoder", "projectors",
                                                     "momentum encoder"))
            s["other forward"] = s.pop("model forward", 0.0) - children
            s["losses (without hungarian)"] = s.pop("losses", 0.0) - s.get("hungarian", 0.0)
            s["rest of the step"] = total - sum(s.values())
            for k, v in s.items():
                per_part[k].append(v)
    finally:
        torch.Tensor.backward = real_backward
        torch.nn.utils.clip_grad_norm_ = clip
    step = statistics.median(totals)
    parts = {k: statistics.median(v) for k, v in per_part.items()}
    parts["data (loader, one batch)"] = _data_seconds(cfg, batch, stage, n=min(steps, 8))
    return {"setup": name, "precision": precision, "batch": batch, "stage": stage, "text_tokens": tokens,
            "step_s": step,
            "images_per_s": batch / step, "parts_s": parts, "threads": torch.get_num_threads(),
            "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
            "date": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC"}


def cfg_size(overrides: list[str]) -> int:
    return int(next(o for o in overrides if o.startswith("model.vision.img_size=")).split("=")[1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setups", default=",".join(SETUPS))
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--text-tokens", type=int, default=17, help="17: the longest text of a synthetic-world batch")
    p.add_argument("--worlds", default=None, help="where the small worlds for the data part go (default: a temp dir)")
    p.add_argument("--out", default=None, help="append one JSON line per setup")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    worlds = Path(args.worlds or tempfile.mkdtemp(prefix="ovseg-step-profile-"))
    from ovseg.train.engine import cpu_has_native_bf16

    names, precisions = args.setups.split(","), args.precisions.split(",")
    for name in names:
        if name not in SETUPS:
            print(f"step_profile: error: unknown setup {name!r} (known: {', '.join(SETUPS)})", file=sys.stderr)
            return 2
    for prec in precisions:
        if prec not in ("fp32", "bf16"):
            print(f"step_profile: error: unknown precision {prec!r} (known: fp32, bf16)", file=sys.stderr)
            return 2
    if "bf16" in precisions and not cpu_has_native_bf16():
        print("step_profile: this CPU has no native bf16 (AVX512-BF16 or AMX): bf16 skipped", file=sys.stderr)
        precisions = [p for p in precisions if p != "bf16"]
    for name, prec in [(n, q) for n in names for q in precisions]:
        r = profile(name, args.steps, args.warmup, args.text_tokens, worlds, prec)
        print(f"\n{name} {prec}: batch {r['batch']}, stage {r['stage']}, {r['threads']} threads, {r['machine']}, "
              f"{r['date']}: step {r['step_s']:.3f} s, {r['images_per_s']:.1f} img/s")
        for part, sec in sorted(r["parts_s"].items(), key=lambda kv: -kv[1]):
            share = "" if part.startswith("data") else f" ({100 * sec / r['step_s']:4.1f} %)"
            print(f"  {part:28s} {sec * 1000:9.1f} ms{share}")
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
