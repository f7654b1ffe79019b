"""A federated simulation on one machine: virtual partner sites on Ray, the real ServerApp and ClientApp.

    python platform/simulate.py [--sites DIR] [--kinds caption,caption,segmentation,segmentation] \
        [--num-sites N] [--alpha 0.5] [--config tiny] [dotted.overrides=... e.g. fed.rounds=5 fed.strategy=fedprox]
    python platform/simulate.py --kinds caption,segmentation --num-sites 32 --alpha 2 \
        fed.fraction_train=0.25 fed.round_timeout=60     # 32 sites, 8 sampled per round, a 60 s deadline

Without --sites, the tiny config's synthetic world is split into sites (platform/make_sites.py) under
runs/federated/sites-<world>-<kinds>[-n<N>]-a<alpha>; --num-sites repeats the --kinds pattern to N sites.
Virtual node i trains on site-<i>. fed.min_sites defaults to the sites sampled per round (fed.fraction_train x
sites: a minimum of every site would undo client sampling). Rounds are scored on the world's held-out split and
logged to MLflow (MLFLOW_TRACKING_URI, default ./mlflow.db; experiment fed.experiment), checkpoints go to
fed.output_dir/fed.run_name, and a second invocation with more fed.rounds resumes.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ovseg.cli import add_debug, command


@command("simulate")
def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny")
    p.add_argument("--sites", default=None, help="a folder made by platform/make_sites.py")
    p.add_argument("--kinds", default="caption,caption,segmentation,segmentation")
    p.add_argument("--num-sites", type=int, default=None, help="repeat --kinds to this many sites")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs Ray may use")
    p.add_argument("--cpus-per-site", type=float, default=1.0)
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. fed.rounds=5")
    args = add_debug(p).parse_args(argv)

    from ovseg.config import flat_overrides, load_config
    from ovseg.data.synthetic.world import ensure_synthetic_world
    from ovseg.federated.split import split_world

    cfg = load_config(args.config, args.overrides)  # fails early, naming a bad key (one line: ovseg.cli)
    sites = args.sites
    if sites is None:
        kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
        tag = "-".join(k[:3] for k in kinds)
        if args.num_sites is not None:
            if args.num_sites < 1 or not kinds:
                print(f"simulate: error: --num-sites must be >= 1 with a non-empty --kinds, got {args.num_sites}",
                      file=sys.stderr)
                return 2
            kinds, tag = [kinds[i % len(kinds)] for i in range(args.num_sites)], f"{tag}-n{args.num_sites}"
        world = ensure_synthetic_world(cfg)
        sites = str(Path(cfg.fed.output_dir) / f"sites-{world.name}-{tag}-a{args.alpha:g}")
        if not (Path(sites) / "federation.json").is_file():
            try:
                split_world(world, sites, kinds, alpha=args.alpha, seed=cfg.seed)
            except ValueError as e:  # e.g. a site left without samples
                print(f"simulate: error: {e}", file=sys.stderr)
                return 2
    num = len([d for d in Path(sites).glob("site-*") if d.is_dir()])
    if num == 0:
        raise FileNotFoundError(f"{sites} holds no site-* folders (make them with platform/make_sites.py)")
    run_config = {"config": args.config, "fed.sites_dir": str(Path(sites).resolve()),
                  **flat_overrides(args.overrides)}
    if "fed.min_sites" not in run_config:  # Flower samples max(fraction x sites, min_sites) sites per round
        run_config["fed.min_sites"] = str(max(1, int(num * cfg.fed.fraction_train)))

    from flwr.simulation import run_simulation

    from ovseg.integrations.flower import make_client_app, make_server_app

    run_simulation(make_server_app(run_config), make_client_app(run_config=run_config), num_supernodes=num,
                   backend_config={"client_resources": {"num_cpus": args.cpus_per_site, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": args.cpus, "num_gpus": 0}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
