"""The paper's ablation on the synthetic world: contrastive only / + entity completion / + mask consistency.

    python bench/ablation.py [--seeds 0,1,2] [--config tiny] [--out runs/bench-ablation] [--set key=value ...]

Each row is the main job's recipe (the config's schedule, evaluation and fixed background threshold) with
the losses switched as in OVSegmentor's Table 4, trained in-process (the same Pretrainer that Ray Train runs)
for the same total number of steps:
  contrastive   stage 1 only (stage1_steps + stage2_steps steps), loss.entity_weight=0
  +entity       stage 1 only (stage1_steps + stage2_steps steps)
  +mask         stage 1 then stage 2 (cross-image mask consistency), exactly the main job
Every evaluation of every run is kept in OUT/results.jsonl (one line per finished run: a rerun skips the
runs already there). Prints a markdown table (final zero-shot mIoU, mean and each seed, with the all-background
baseline of the same split) and writes OUT/curve.png (mIoU against step, one line per run).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

KEY = "zeroshot/synthetic/miou"
ROWS = ("contrastive", "+entity", "+mask")


def overrides(row: str, stage1: int, stage2: int) -> list[str]:
    if row == "+mask":
        return []
    extra = [f"train.stage1_steps={stage1 + stage2}", "train.stage2_steps=0"]
    return extra + (["loss.entity_weight=0"] if row == "contrastive" else [])


def run_one(config: str, row: str, seed: int, extra: list[str], out: Path) -> dict:
    from ovseg.config import load_config
    from ovseg.data.synthetic.world import ensure_synthetic_world
    from ovseg.train.pretrain import Pretrainer, WorkerEnv

    base = load_config(config, extra)
    cfg = load_config(config, [*extra, *overrides(row, base.train.stage1_steps, base.train.stage2_steps),
                               f"seed={seed}", f"train.output_dir={out / 'runs'}"])
    ensure_synthetic_world(cfg)
    scratch = out / "scratch" / f"{row}-{seed}"
    scratch.mkdir(parents=True, exist_ok=True)
    trainer = Pretrainer(cfg, WorkerEnv(report=lambda metrics, path: None, scratch=scratch))
    t0 = time.perf_counter()
    final = trainer.run()
    return {"row": row, "seed": seed, "config": config, "overrides": extra, "final": final.get(KEY),
            "curve": [(h["step"], h[KEY]) for h in trainer.history if KEY in h],
            "minutes": round((time.perf_counter() - t0) / 60, 2)}


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--out", default="runs/bench-ablation")
    p.add_argument("--set", nargs="*", default=[], help="dotted overrides for every run")
    args = p.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{out / 'mlflow.db'}")
    results_file = out / "results.jsonl"
    done = [json.loads(line) for line in results_file.read_text().splitlines()] if results_file.exists() else []
    for row in args.rows.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            if any(r["row"] == row and r["seed"] == seed and r["overrides"] == args.set for r in done):
                continue
            result = run_one(args.config, row, seed, args.set, out)
            print(f"{row} seed {seed}: final mIoU {result['final']:.4f} in {result['minutes']} min", flush=True)
            with results_file.open("a") as f:  # one whole line per finished run
                f.write(json.dumps(result) + "\n")
            done.append(result)
    runs = [r for r in done if r["overrides"] == args.set]
    baseline = background_baseline(args.config, args.set)
    print(f"\n{args.config} {' '.join(args.set)}; all-background baseline {baseline:.4f}\n")
    print("| losses | final zero-shot mIoU (mean) | per seed |\n|---|---|---|")
    for row in ROWS:
        finals = [r["final"] for r in sorted(runs, key=lambda r: r["seed"]) if r["row"] == row]
        if finals:
            print(f"| {row} | {sum(finals) / len(finals):.4f} | {' / '.join(f'{v:.4f}' for v in finals)} |")
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
