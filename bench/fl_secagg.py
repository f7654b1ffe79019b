"""What secure aggregation (SecAgg+) costs per round: the same simulated federation with and without it.

    python bench/fl_secagg.py [--sites 3] [--rounds 3] [--repeats 2] [--config debug] [--out runs/bench-secagg]

Each repeat runs the plain federation and the SecAgg+ one back to back (interleaved, so a noisy machine slows
both alike), on the same sites and seeds. Per round: wall seconds between the server's evaluations (the round's
training, aggregation and protocol stages; the central evaluation is the same in both), from the MLflow metric
timestamps; and, after the last round, the largest difference between the two global models (SecAgg+ quantises
each value of each site's delta to 2 x fed.secagg_clip / 2^22).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path


def run(root: Path, sites: Path, world: Path, config: str, rounds: int, name: str, secagg: bool) -> float:
    from flwr.simulation import run_simulation

    from ovseg.integrations.flower import make_client_app, make_server_app

    rc = {"config": config, "fed.rounds": rounds, "fed.local_steps": 2, "fed.local_batch": 8,
          "fed.min_sites": len(list(sites.glob("site-*"))), "fed.sites_dir": str(sites),
          "data.synthetic_dir": str(world), "fed.output_dir": str(root / "runs"), "fed.run_name": name,
          "eval.max_images": 6, "fed.secagg": secagg, "fed.fraction_evaluate": 0.0}
    t0 = time.perf_counter()
    run_simulation(make_server_app(rc), make_client_app(run_config=rc), num_supernodes=rc["fed.min_sites"],
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": os.cpu_count() or 2, "num_gpus": 0}})
    return time.perf_counter() - t0


def round_seconds(uri: str, name: str) -> list[float]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("ovseg-federated")
    (r,) = client.search_runs([exp.experiment_id], f"tags.mlflow.runName = '{name}'")
    hist = sorted((m.step, m.timestamp) for m in client.get_metric_history(r.info.run_id, "zeroshot/synthetic/miou"))
    return [(b - a) / 1000 for (_, a), (_, b) in zip(hist, hist[1:])]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--config", default="debug")
    p.add_argument("--out", default="runs/bench-secagg")
    args = p.parse_args()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    from ovseg.checkpoint import read_checkpoint
    from ovseg.config import load_config
    from ovseg.data.synthetic.world import generate_world
    from ovseg.federated import build_site_model, exchange_keys
    from ovseg.federated.split import split_world

    root = Path(args.out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    world, sites = root / "world", root / f"sites-{args.sites}"
    if not (world / "manifest.json").is_file():
        generate_world(world, seed=3, num_train=120, num_val=6, num_seg=60, shard_size=60)
    if not (sites / "federation.json").is_file():
        kinds = ["caption" if i % 2 == 0 else "segmentation" for i in range(args.sites)]
        split_world(world, sites, kinds, alpha=1.0, seed=1, val_fraction=0.1)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    model, cfg = build_site_model(load_config(args.config))
    keys = exchange_keys(model, cfg)
    rows = []
    for rep in range(args.repeats):
        pair = {}
        for secagg in (False, True):
            name = f"{stamp}-{rep}-{'secagg' if secagg else 'plain'}"
            total = run(root, sites, world, args.config, args.rounds, name, secagg)
            per_round = round_seconds(uri, name)
            pair[secagg] = name
            rows.append({"repeat": rep, "secagg": secagg, "total_s": total, "round_s": per_round})
            print(f"repeat {rep} {'SecAgg+' if secagg else 'plain  '}: {total:6.1f} s in all, rounds "
                  + ", ".join(f"{s:.1f}" for s in per_round) + " s", flush=True)
        last = f"round-{args.rounds:04d}.safetensors"
        a = read_checkpoint(root / "runs" / pair[False] / last).weights
        b = read_checkpoint(root / "runs" / pair[True] / last).weights
        rows[-1]["max_abs_diff_last_round"] = max(float((a[k] - b[k]).abs().max()) for k in keys)
    plain = [s for r in rows if not r["secagg"] for s in r["round_s"]]
    secure = [s for r in rows if r["secagg"] for s in r["round_s"]]
    summary = {"sites": args.sites, "rounds": args.rounds, "repeats": args.repeats, "config": args.config,
               "plain_round_s_median": statistics.median(plain), "secagg_round_s_median": statistics.median(secure),
               "overhead_s_per_round": statistics.median(secure) - statistics.median(plain),
               "max_abs_diff": [r.get("max_abs_diff_last_round") for r in rows if r["secagg"]],
               "machine": f"{os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=1))
    out = Path("bench/results/fl-secagg-results.json")
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=1))
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
