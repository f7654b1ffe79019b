"""Does hybrid data help? A caption-pretrained tiny model, then federations with the same rounds and sites:
caption-only (4 caption sites), hybrid (2 caption + 2 segmentation sites) and segmentation-only (4
segmentation sites, the labelled upper reference), on the synthetic world.

    python bench/fl_hybrid.py [--init CKPT | --pretrain-steps 300] [--rounds 5] [--local-steps 20] \
        [--seeds 0,1] [--setups caption-only,hybrid,segmentation-only] [--out runs/bench-fl-hybrid] \
        [--set eval.bg_thresh=0.2 ...]
    python bench/fl_hybrid.py --plot runs/bench-fl-hybrid/results.json [--png OUT.png]   # the curves again

Without --init, the tiny model is first pretrained on captions alone (stage 1, in-process) for
--pretrain-steps steps and saved; every federation starts from that checkpoint. Each federation is a Flower
simulation on Ray (the real ServerApp and ClientApp); its zero-shot mIoU on the world's held-out split comes
from the server's round checkpoints, and each segmentation site's mIoU on its own val/ split from the
server's history. Prints a markdown table (mean and each seed) and the per-round curves; writes results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

KEY = "zeroshot/synthetic/miou"


def pretrain(out: Path, steps: int, seed: int) -> Path:
    from ovseg.config import load_config
    from ovseg.data.synthetic.world import ensure_synthetic_world
    from ovseg.train.pretrain import Pretrainer, WorkerEnv

    cfg = load_config("tiny", [f"train.stage1_steps={steps}", "train.stage2_steps=0", f"seed={seed}",
                               f"train.eval_every={steps}", f"train.ckpt_every={steps}"])
    ensure_synthetic_world(cfg)
    kept = out / "caption-pretrained.safetensors"

    def report(metrics, path):
        if path is not None:
            kept.write_bytes(Path(path).read_bytes())

    env = WorkerEnv(report=report, scratch=out / "pretrain")
    t0 = time.perf_counter()
    metrics = Pretrainer(cfg, env).run()
    print(f"caption pretraining: {steps} steps in {(time.perf_counter() - t0) / 60:.1f} min, "
          f"mIoU {metrics.get(KEY, float('nan')):.4f} -> {kept}", flush=True)
    return kept


def federate(init: Path, sites: Path, name: str, out: Path, rounds: int, local_steps: int, seed: int,
             extra: dict | None = None) -> list:
    from flwr.simulation import run_simulation

    from ovseg.checkpoint import read_checkpoint
    from ovseg.integrations.flower import make_client_app, make_server_app

    num = len(list(sites.glob("site-*")))
    rc = {"config": "tiny", "seed": seed, "fed.rounds": rounds, "fed.local_steps": local_steps,
          "fed.min_sites": num, "fed.sites_dir": str(sites), "fed.init_checkpoint": str(init),
          "fed.output_dir": str(out / "runs"), "fed.run_name": name, "fed.lr": 2e-4, "fed.local_batch": 32,
          **(extra or {})}
    run_simulation(make_server_app(rc), make_client_app(run_config=rc), num_supernodes=num,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": os.cpu_count() or 2, "num_gpus": 0}})
    ckpts = [read_checkpoint(out / "runs" / name / f"round-{r:04d}.safetensors") for r in range(rounds + 1)]
    sites_val = [h.get("site_val_miou", {}) for h in ckpts[-1].state.get("history", [])]
    return [c.metrics[KEY] for c in ckpts], sites_val


def plot(results: dict, png: Path) -> None:
    """Zero-shot mIoU against round: each seed thin, the mean thick, one colour per federation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for i, (name, curves) in enumerate(results["curves"].items()):
        colour = f"C{i}"
        for c in curves:
            ax.plot(range(len(c)), c, color=colour, alpha=0.3, lw=1)
        mean = [sum(c[r] for c in curves) / len(curves) for r in range(len(curves[0]))]
        ax.plot(range(len(mean)), mean, color=colour, lw=2.5, label=f"{name} (mean of {len(curves)})")
    ax.set_xlabel("round")
    ax.set_ylabel("zero-shot mIoU (synthetic val)")
    ax.set_title(f"{results['rounds']} rounds x {results['local_steps']} local steps x 4 sites")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = png.with_name(png.name + ".partial.png")
    fig.savefig(tmp)
    tmp.replace(png)
    print(f"wrote {png}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--init", default=None,
                   help="a caption-pretrained checkpoint, or a pretraining run's folder (default: pretrain one)")
    p.add_argument("--pretrain-steps", type=int, default=300)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--local-steps", type=int, default=20)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--setups", default="caption-only,hybrid,segmentation-only")
    p.add_argument("--out", default="runs/bench-fl-hybrid")
    p.add_argument("--set", nargs="*", default=[], help="dotted run-config overrides for every federation")
    p.add_argument("--plot", default=None, help="only draw the curves of an earlier run's results.json")
    p.add_argument("--png", default=None, help="where the curves go (default: next to results.json)")
    args = p.parse_args()
    if args.plot:
        src = Path(args.plot)
        if not src.is_file():
            p.error(f"--plot: {src} does not exist")
        plot(json.loads(src.read_text()), Path(args.png) if args.png else src.with_name("fl-hybrid-curve.png"))
        return
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{Path(args.out).resolve() / 'mlflow.db'}")
    from ovseg.checkpoint import find_checkpoint
    from ovseg.config import flat_overrides, load_config
    from ovseg.data.synthetic.world import ensure_synthetic_world
    from ovseg.federated.split import split_world

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    world = ensure_synthetic_world(load_config("tiny"))
    init = find_checkpoint(args.init) if args.init else pretrain(out, args.pretrain_steps, 0)
    extra = flat_overrides(args.set)
    known = {"caption-only": ["caption"] * 4, "hybrid": ["caption", "caption", "segmentation", "segmentation"],
             "segmentation-only": ["segmentation"] * 4}
    names = [s.strip() for s in args.setups.split(",") if s.strip()]
    bad = [n for n in names if n not in known]
    if bad:
        p.error(f"--setups: unknown {bad}; choose from {sorted(known)}")
    setups = {n: known[n] for n in names}
    results: dict[str, list[list[float]]] = {k: [] for k in setups}
    site_val: dict[str, list] = {k: [] for k in setups}
    t0 = time.perf_counter()
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name, kinds in setups.items():
            sites = out / f"sites-{name}-s{seed}"
            if not (sites / "federation.json").is_file():
                split_world(world, sites, kinds, alpha=args.alpha, seed=seed)
            curve, own = federate(init, sites, f"{name}-s{seed}", out, args.rounds, args.local_steps, seed, extra)
            results[name].append(curve)
            site_val[name].append(own)
            print(f"{name} seed {seed}: " + " ".join(f"{v:.4f}" for v in curve), flush=True)
            if any(own):
                print(f"  sites' own val mIoU per round: {own}", flush=True)
    print(f"\n{args.rounds} rounds x {args.local_steps} local steps x 4 sites, batch 32, from {init} "
          f"({(time.perf_counter() - t0) / 60:.1f} min)\n")
    print("| federation | start mIoU | final mIoU (mean) | per seed |")
    print("|---|---|---|---|")
    for name, curves in results.items():
        finals = [c[-1] for c in curves]
        print(f"| {name} | {curves[0][0]:.4f} | {sum(finals) / len(finals):.4f} | "
              f"{', '.join(f'{v:.4f}' for v in finals)} |")
    print("\n| federation | " + " | ".join(f"round {r}" for r in range(args.rounds + 1)) + " |")
    print("|---|" + "---|" * (args.rounds + 1))
    for name, curves in results.items():
        mean = [sum(c[r] for c in curves) / len(curves) for r in range(args.rounds + 1)]
        print(f"| {name} (mean) | " + " | ".join(f"{v:.4f}" for v in mean) + " |")
    tmp = out / "results.json.partial"
    tmp.write_text(json.dumps({"rounds": args.rounds, "local_steps": args.local_steps, "init": str(init),
                               "seeds": args.seeds, "curves": results, "site_val_miou": site_val}, indent=2))
    tmp.replace(out / "results.json")
    plot(json.loads((out / "results.json").read_text()), out / "fl-hybrid-curve.png")


if __name__ == "__main__":
    main()
