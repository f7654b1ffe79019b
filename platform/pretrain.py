"""Pretrain an OVSegmentor model on Ray Train, tracked in MLflow: the project's main job.

    python platform/pretrain.py                                   # embedded default: tiny model, synthetic world
    python platform/pretrain.py --config vit-b16-cc4m data.train=/data/cc4m/{00000..01242}.tar \\
        eval.datasets=[voc=/data/VOCdevkit,context60=/data/VOCdevkit,coco_object=/data,ade20k=/data]
    ray job submit --working-dir . -- python platform/pretrain.py --config tiny train.run_name=demo
    python platform/pretrain.py --resume train.run_name=demo     # continue from the latest checkpoint

Dotted overrides (``key=value``) follow the config tree in ovseg/config.py. MLflow: MLFLOW_TRACKING_URI,
default ./mlflow.db (open with ``mlflow ui --backend-store-uri sqlite:///mlflow.db``).
"""

from __future__ import annotations

import os

# On a CPU shared with other jobs, OpenMP threads spinning at barriers made a 2-thread training step up to
# 10x slower (docs/results.md); passive waiting avoids that. Set before torch loads; Ray workers inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import sys

from ovseg.cli import add_debug, command
from ovseg.config import load_config


@command("pretrain")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny", help="a named config (ovseg/configs) ...")
    p.add_argument("--config-file", default=None, help="... or a YAML file (e.g. a sweep's best config)")
    p.add_argument("--resume", action="store_true", help="continue the run of the same train.run_name")
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("overrides", nargs="*", help="dotted.key=value")
    args = add_debug(p).parse_args(argv)
    cfg = load_config(args.config_file or args.config, args.overrides)  # a mistake in it: one line (ovseg.cli)
    from ovseg.train.pretrain import check_data

    check_data(cfg)  # shards that exist, epochs whose length is known: before any worker starts
    if cfg.train.bf16_cpu and not cfg.train.use_gpu and not (args.address or os.environ.get("RAY_ADDRESS")):
        import torch

        from ovseg.train.engine import autocast_dtype_for

        autocast_dtype_for(torch.device("cpu"), cfg.train.bf16, True)  # local CPU workers: this CPU decides

    from ovseg.integrations.ray_train import run_pretraining

    metrics = run_pretraining(cfg, resume=args.resume, address=args.address)
    print(json.dumps({k: v for k, v in metrics.items() if "/iou/" not in k}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
