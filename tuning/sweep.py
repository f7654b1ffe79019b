"""Ray Tune sweep over loss weights, group counts and the learning rate, ASHA on zero-shot mIoU, in MLflow.

    python tuning/sweep.py                                  # tiny on the synthetic world, default space, 4 trials
    python tuning/sweep.py --config vit-b16-cc4m --space my_space.yaml --num-samples 32 data.train=[...]
    python tuning/sweep.py --resume --name sweep-1          # continue an interrupted sweep
    python platform/pretrain.py --config-file runs/sweeps/sweep-1.best.yaml    # train the winner

Named spaces ship in ovseg/configs/spaces/*.yaml (``fixed`` overrides + ``search`` samplers over dotted config keys).
"""

from __future__ import annotations

import os

# On a CPU shared with other jobs, OpenMP threads spinning at barriers made a 2-thread training step up to
# 10x slower (docs/results.md); passive waiting avoids that. Set before torch loads; Ray workers inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import sys

from ovseg.cli import add_debug, command
from ovseg.config import load_config


@command("sweep")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny")
    p.add_argument("--config-file", default=None)
    p.add_argument("--space", default="default", help="a space name in ovseg/configs/spaces or a YAML file")
    p.add_argument("--num-samples", type=int, default=4)
    p.add_argument("--max-concurrent", type=int, default=None)
    p.add_argument("--name", default="sweep", help="the sweep's folder and MLflow parent run name")
    p.add_argument("--output", default="runs/sweeps")
    p.add_argument("--resume", action="store_true")
    p.add_argument("overrides", nargs="*", help="dotted.key=value applied to every trial")
    args = add_debug(p).parse_args(argv)

    from ovseg.integrations.ray_tune import fixed_overrides, load_space, run_sweep

    space = load_space(args.space)  # a mistake in the space, config or overrides: one line (ovseg.cli)
    base = load_config(args.config_file or args.config, fixed_overrides(space) + args.overrides)
    run_sweep(base, space, num_samples=args.num_samples, name=args.name, output=args.output,
              resume=args.resume, max_concurrent=args.max_concurrent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
