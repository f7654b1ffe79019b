"""The paper's ablation on the synthetic world, each loss isolated: contrastive / + entity completion / + mask.

    python bench/ablation.py [--seeds 0,1,2,3,4] [--config tiny] [--out runs/bench-ablation] [--set key=value ...]

Every row runs the main job's two stages with the same steps and the same schedule per stage (the config's
stage1_steps, then stage2_steps with the momentum encoder and paired images); the rows differ only in which
loss terms are on (OVSegmentor's Table 4):
  contrastive   loss.entity_weight=0, loss.mask_weight=0
  +entity       loss.mask_weight=0 (stage 2 runs, with the mask term off)
  +mask         the main job's losses
+entity and +mask share stage 1 exactly: it runs once per seed and both stage-2 rows resume from its final
checkpoint (the same weights, optimizer, data position and random state), so their difference is the mask
term and nothing else. Every evaluation of every run is kept in OUT/results.jsonl (one line per finished row
and seed: a rerun skips what is there). Prints the table (mean, standard deviation, each seed, and the
per-seed paired difference against the row before, with the all-background baseline of the same split) and
writes OUT/curve.png (mIoU against step, one line per run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

KEY = "zeroshot/synthetic/miou"
ROWS = ("contrastive", "+entity", "+mask")
ROW_OVERRIDES = {"contrastive": ["loss.entity_weight=0", "loss.mask_weight=0"], "+entity": ["loss.mask_weight=0"],
                 "+mask": []}


def _trainer(config: str, row: str, seed: int, extra: list[str], scratch: Path, stop_after: int | None = None):
    from ovseg.config import load_config
    from ovseg.data.synthetic.world import ensure_synthetic_world
    from ovseg.train.pretrain import Pretrainer, WorkerEnv

    stop = [f"train.stop_after={stop_after}"] if stop_after is not None else []
    cfg = load_config(config, [*extra, *ROW_OVERRIDES[row], *stop, f"seed={seed}"])
    ensure_synthetic_world(cfg)
    scratch.mkdir(parents=True, exist_ok=True)
    return Pretrainer(cfg, WorkerEnv(report=lambda metrics, path: None, scratch=scratch))


def _result(row, seed, config, extra, trainer, minutes) -> dict:
    return {"row": row, "seed": seed, "config": config, "overrides": extra,
            "final": trainer.final_metrics.get(KEY) if trainer.step == trainer.total_steps else None,
            "curve": [(h["step"], h[KEY]) for h in trainer.history if KEY in h], "minutes": round(minutes, 2)}


def run_seed(config: str, seed: int, extra: list[str], out: Path, rows: list[str], done) -> list[dict]:
    """The rows of one seed not yet in ``done``; +entity and +mask branch from one stage-1 checkpoint."""
    from ovseg.checkpoint import read_checkpoint
    from ovseg.train.pretrain import CHECKPOINT_FILE

    results = []
    if "contrastive" in rows and not done("contrastive"):
        t = _trainer(config, "contrastive", seed, extra, out / "scratch" / f"contrastive-{seed}")
        t0 = time.perf_counter()
        t.run()
        results.append(_result("contrastive", seed, config, extra, t, (time.perf_counter() - t0) / 60))
    branch = [r for r in ("+entity", "+mask") if r in rows and not done(r)]
    if not branch:
        return results
    shared = out / "scratch" / f"stage1-{seed}"
    t0 = time.perf_counter()
    first = _trainer(config, "+mask", seed, extra, shared)
    stage1 = first.stages[0][1]
    ckpt_path = shared / f"step-{stage1:08d}" / CHECKPOINT_FILE
    if not ckpt_path.is_file():
        first = _trainer(config, "+mask", seed, extra, shared, stop_after=stage1)
        first.run()
    stage1_minutes = (time.perf_counter() - t0) / 60
    ckpt = read_checkpoint(ckpt_path)
    for row in branch:
        t = _trainer(config, row, seed, extra, out / "scratch" / f"{row}-{seed}")
        t.restore(ckpt)
        t0 = time.perf_counter()
        t.run()
        # the restored history holds stage 1's evaluations: the curve is the whole run's
        results.append(_result(row, seed, config, extra, t, stage1_minutes + (time.perf_counter() - t0) / 60))
    return results


def background_baseline(config: str, extra: list[str]) -> float:
    """mIoU of predicting background everywhere on the split the runs are scored on."""
    import numpy as np

    from ovseg.config import load_config
    from ovseg.data.benchmarks.registry import build_benchmark
    from ovseg.data.synthetic.world import ensure_synthetic_world
    from ovseg.eval.metrics import ConfusionMatrix

    bench = build_benchmark("synthetic", ensure_synthetic_world(load_config(config, extra)) / "val")
    cm = ConfusionMatrix(len(bench.class_names))
    for i in range(len(bench)):
        label = np.asarray(bench[i][1])
        cm.update(np.zeros_like(label, dtype=np.int64), label.astype(np.int64))
    return float(cm.miou())


def table(runs: list[dict]) -> str:
    """Markdown: mean +- standard deviation, each seed, and the paired difference to the row before."""
    final = {(r["row"], r["seed"]): r["final"] for r in runs if r["final"] is not None}
    lines = ["| losses | final mIoU, mean +- sd | per seed | paired difference to the row above, mean +- sd "
             "(per seed) |", "|---|---|---|---|"]
    for i, row in enumerate(ROWS):
        seeds = sorted(s for (r, s) in final if r == row)
        if not seeds:
            continue
        vals = [final[(row, s)] for s in seeds]
        sd = statistics.stdev(vals) if len(vals) > 1 else float("nan")
        diff = ""
        if i > 0:
            paired = [s for s in seeds if (ROWS[i - 1], s) in final]
            d = [final[(row, s)] - final[(ROWS[i - 1], s)] for s in paired]
            if d:
                dsd = statistics.stdev(d) if len(d) > 1 else float("nan")
                diff = (f"{statistics.fmean(d):+.4f} +- {dsd:.4f} ("
                        + " / ".join(f"{v:+.4f}" for v in d) + ")")
        lines.append(f"| {row} | {statistics.fmean(vals):.4f} +- {sd:.4f} | "
                     f"{' / '.join(f'{v:.4f}' for v in vals)} (seeds {', '.join(map(str, seeds))}) | {diff} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--out", default="runs/bench-ablation")
    p.add_argument("--set", nargs="*", default=[], help="dotted overrides for every run")
    args = p.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{out / 'mlflow.db'}")
    results_file = out / "results.jsonl"
    done = [json.loads(line) for line in results_file.read_text().splitlines()] if results_file.exists() else []
    rows = args.rows.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    for seed in seeds:
        def is_done(row, seed=seed):
            return any(r["row"] == row and r["seed"] == seed and r["overrides"] == args.set for r in done)

        for result in run_seed(args.config, seed, args.set, out, rows, is_done):
            print(f"{result['row']} seed {seed}: final mIoU {result['final']:.4f} in {result['minutes']} min",
                  flush=True)
            with results_file.open("a") as f:  # one whole line per finished run
                f.write(json.dumps(result) + "\n")
            done.append(result)
    runs = [r for r in done if r["overrides"] == args.set and r["seed"] in seeds]
    baseline = background_baseline(args.config, args.set)
    print(f"\n{args.config} {' '.join(args.set)}; seeds {seeds}; all-background baseline {baseline:.4f}\n")
    print(table(runs))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    colours = dict(zip(ROWS, ("tab:blue", "tab:orange", "tab:green")))
    styles = ("-", "--", ":", "-.")
    for r in sorted(runs, key=lambda r: (ROWS.index(r["row"]), r["seed"])):
        steps, values = zip(*r["curve"]) if r["curve"] else ((), ())
        ax.plot(steps, values, marker="o", color=colours[r["row"]], alpha=0.85,
                linestyle=styles[r["seed"] % len(styles)], label=f"{r['row']} (seed {r['seed']})")
    ax.axhline(baseline, color="grey", linewidth=1, label="all background")
    ax.set_xlabel("step")
    ax.set_ylabel("zero-shot mIoU (synthetic val)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = out / ".curve.png.partial"
    fig.savefig(tmp, format="png")
    os.replace(tmp, out / "curve.png")
    print(f"\ncurve: {out / 'curve.png'}")


if __name__ == "__main__":
    main()
