"""Forward + backward training throughput (images/s) and peak memory of a model config, on this machine.

    python bench/model_throughput.py [--configs tiny vit-s16-cc4m] [--steps 5] [--device cpu|cuda] [--bf16]
    python bench/model_throughput.py --configs vit-b16-cc4m --device cuda --bf16 --batch 128   # a lent GPU
    python bench/model_throughput.py --configs tiny --text-tokens 17   # texts as long as a real batch's longest

Each config runs in its own subprocess so that its peak resident memory (CPU) is its own; on CUDA the peak
allocated GPU memory is reported. One full training step = model forward with the stage-1 losses
(contrast + entity completion), backward and an AdamW step, on random inputs of the config's image size and
texts of ``--text-tokens`` tokens (default: the config's max_length, the worst case; the loader trims a batch's
texts to its longest one, e.g. 17 tokens on the synthetic world's captions).
Model FLOPs per step are counted once with torch's FlopCounterMode (forward + backward, matmuls and
convolutions); MFU = achieved FLOP/s / ``--peak-tflops`` (default: H100 SXM dense bf16, 989 TFLOP/s).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import subprocess
import sys
import time

DEFAULT_BATCH = {"tiny": 64, "vit-s16-cc4m": 8, "vit-b16-cc4m": 8}


def run_one(name: str, batch: int, steps: int, device: str, bf16: bool, text_tokens: int | None = None) -> dict:
    import torch

    from ovseg import build_model, load_config
    from ovseg.config import LossConfig
    from ovseg.train.engine import train_step
    from ovseg.train.schedule import build_optimizer
    from ovseg.train.task import Task

    cfg = load_config(name)
    model = build_model(cfg).to(device)
    task = Task(model, LossConfig())
    size, L = cfg.model.vision.img_size, min(text_tokens or cfg.model.text.max_length, cfg.model.text.max_length)
    vocab = model.tokenizer.vocab_size
    ids = torch.randint(1000, vocab, (batch, L), device=device)
    mask = torch.ones(batch, L, dtype=torch.long, device=device)
    data = {"image": torch.randn(batch, 3, size, size, device=device), "caption_ids": ids, "caption_mask": mask,
            "question_ids": ids, "question_mask": mask, "answer_ids": ids, "answer_mask": mask}
    opt = build_optimizer(model, 1e-4, fused=cfg.train.fused_adamw)
    kw = {"autocast_dtype": torch.bfloat16} if bf16 else {}
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        train_step(task, data, opt, **kw)  # warm-up, and the FLOP count of one step
    step_flops = counter.get_total_flops()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(task, data, opt, **kw)
    if device == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"config": name, "batch": batch, "image_size": size, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "images_per_s": batch * steps / dt, "step_s": dt / steps, "peak_mib": peak, "device": device,
            "tflop_per_step": step_flops / 1e12, "achieved_tflops": step_flops * steps / dt / 1e12,
            "threads": torch.get_num_threads(), "bf16": bf16, "text_tokens": L}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["tiny", "vit-s16-cc4m"])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--text-tokens", type=int, default=None, help="tokens per text (default: max_length)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="the device's peak, for MFU")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(run_one(args.child, args.batch, args.steps, args.device, args.bf16, args.text_tokens)))
        return 0
    print(f"# {' '.join(sys.argv)}  |  {platform.node()} {platform.processor() or platform.machine()}  |  "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"{'config':16s} {'params':>8s} {'batch':>5s} {'img':>4s} {'text':>4s} {'images/s':>9s} {'s/step':>7s} {'peak MiB':>9s} "
          f"{'TFLOP/step':>10s} {'TFLOP/s':>8s} {'MFU':>6s}")
    for name in args.configs:
        cmd = [sys.executable, __file__, "--child", name, "--batch", str(args.batch or DEFAULT_BATCH.get(name, 8)),
               "--steps", str(args.steps), "--device", args.device] + (["--bf16"] if args.bf16 else []) \
            + (["--text-tokens", str(args.text_tokens)] if args.text_tokens else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        print(f"{r['config']:16s} {r['params_m']:7.1f}M {r['batch']:5d} {r['image_size']:4d} {r['text_tokens']:4d} "
              f"{r['images_per_s']:9.1f} {r['step_s']:7.3f} {r['peak_mib']:9.0f} {r['tflop_per_step']:10.3f} "
              f"{r['achieved_tflops']:8.3f} {r['achieved_tflops'] / args.peak_tflops:6.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
