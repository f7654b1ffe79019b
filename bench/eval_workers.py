"""Wall time of one evaluation with 1 process against N processes on the same checkpoint and images.

    python bench/eval_workers.py runs/<run> [--workers 2] [--repeats 3] [--dataset synthetic] [--max-images 500] \
        [--set eval.short_side=192 ...]

Each process scores its share of every dataset (``ovseg.eval.parallel``, the split pretraining uses on its
ranks) and the confusion matrices are summed, so the metrics must agree; the bench checks that they do, and
prints the wall time of each repeat (1 process and N processes interleaved: the machine is shared and noisy)
with the median of each and their ratio. Every process runs ``--threads`` torch threads (default 1), the
single one too: as ranks do, each with the cores it was given, so the question is whether adding processes
divides the evaluation's wall time (N x threads should not exceed the cores). The spawned processes' start-up (importing torch, loading the checkpoint) is
inside the N-process time: on a small evaluation it dominates (the synthetic val split at its own 64 pixels
takes about 6 s in one process); ``--set eval.short_side=192`` reads each image as 25 sliding windows, closer
to a real benchmark's cost per image.
"""

from __future__ import annotations

import argparse
import os
import platform as _platform
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a checkpoint file or a run folder")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dataset", action="append", default=None, help="default: synthetic")
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--threads", type=int, default=1, help="torch threads of every process")
    p.add_argument("--set", nargs="*", default=[], help="eval.key=value overrides (the protocol)")
    args = p.parse_args()

    import torch

    from ovseg.checkpoint import find_checkpoint
    from ovseg.eval.parallel import EvalJob, evaluate_checkpoint, load

    path = find_checkpoint(args.checkpoint)
    job = EvalJob(str(path), tuple(args.set), datasets=tuple(args.dataset or ["synthetic"]),
                  max_images=args.max_images)
    device = torch.device("cpu")
    cores = os.cpu_count() or 1
    torch.set_num_threads(args.threads)
    loaded = load(job, device)
    times: dict[int, list[float]] = {1: [], args.workers: []}
    reference = None
    for _ in range(args.repeats):
        for n in (1, args.workers):
            t0 = time.perf_counter()
            metrics, results, _, _ = evaluate_checkpoint(job, device=device, workers=n, loaded=loaded,
                                                         threads=args.threads)
            times[n].append(time.perf_counter() - t0)
            miou = {k: v for k, v in metrics.items() if k.endswith("/miou")}
            if reference is None:
                reference = miou
            elif any(abs(miou[k] - reference[k]) > 1e-4 for k in reference):
                raise SystemExit(f"metrics differ between runs: {miou} vs {reference}")
    images = sum(r.num_images for r in results)
    one, many = statistics.median(times[1]), statistics.median(times[args.workers])
    print(f"checkpoint {path}; {images} images; {cores} cores, {args.threads} thread(s) per process; {_platform.node()} "
          f"({_platform.processor() or _platform.machine()}); {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"overrides: {args.set or 'none'}; metrics (equal for every run): {reference}")
    print(f"1 process:    {' / '.join(f'{t:.1f}' for t in times[1])} s (median {one:.1f} s)")
    print(f"{args.workers} processes: {' / '.join(f'{t:.1f}' for t in times[args.workers])} s "
          f"(median {many:.1f} s); {one / many:.2f}x the single process's speed")


if __name__ == "__main__":
    main()
