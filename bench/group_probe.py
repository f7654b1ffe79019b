"""How an image's groups develop during pretraining: patch shares, group cosines, foreground purity.

    python bench/group_probe.py --steps 200 --every 25 seed=2 model.vision.center_keys=true

Runs the real ``Pretrainer`` on ``tiny`` (plus the overrides) and, every ``--every`` steps (and at step 0,
before any update), encodes the first 128 images of the world's val split and prints one JSON line:
``area`` each group's share of the patches (sorted, mean over images), ``pair_cos`` the mean cosine between
an image's group embeddings, ``fg_purity`` / ``fg_recall`` of the group that covers most foreground
(the fraction of its patches that are foreground, and of the foreground it covers; patches are foreground
when at least half their pixels are). A collapsed run shows one group taking most patches with low purity.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny")
    p.add_argument("--steps", type=int, default=200, help="stop after this many steps (the schedule stays the config's)")
    p.add_argument("--every", type=int, default=25)
    p.add_argument("--images", type=int, default=128)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from ovseg.config import load_config
    from ovseg.data.benchmarks.registry import build_benchmark
    from ovseg.data.captions.transforms import IMAGENET_MEAN, IMAGENET_STD
    from ovseg.data.synthetic.world import ensure_synthetic_world
    from ovseg.train.pretrain import Pretrainer, WorkerEnv

    cfg = load_config(args.config, [*args.overrides, f"train.eval_every={args.every}", "train.ckpt_every=1000000",
                                    f"train.stop_after={args.steps}"])
    bench = build_benchmark("synthetic", ensure_synthetic_world(cfg) / "val")
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    images, labels = [], []
    for i in range(min(args.images, len(bench))):
        image, label, _ = bench[i]
        images.append((torch.as_tensor(image).permute(2, 0, 1).float() / 255 - mean) / std)
        labels.append(torch.as_tensor(label))
    x, y = torch.stack(images), torch.stack(labels)

    def probe(trainer) -> dict:
        model = trainer.model
        was = model.training
        model.eval()
        with torch.no_grad():
            _, groups, assign = model.encode_image(x)
            G = groups.shape[1]
            fg = F.interpolate(((y > 0) & (y != 255)).float()[:, None], size=assign.shape[-2:], mode="area")[:, 0] > 0.5
            owner = assign.argmax(1)
            share = torch.stack([(owner == g).float().mean((1, 2)) for g in range(G)], 1)
            fg_in = torch.stack([((owner == g) & fg).float().sum((1, 2)) for g in range(G)], 1)
            best = fg_in.argmax(1, keepdim=True)
            size = share.gather(1, best)[:, 0] * owner[0].numel()
            covered = fg_in.gather(1, best)[:, 0]
            pair = ((groups @ groups.transpose(1, 2)).sum((1, 2)) - G) / (G * (G - 1))
        model.train(was)
        row = {"step": trainer.step, "area": [round(v, 3) for v in share.sort(1, descending=True).values.mean(0).tolist()],
               "pair_cos": round(pair.mean().item(), 3),
               "fg_purity": round((covered / size.clamp(min=1)).mean().item(), 3),
               "fg_recall": round((covered / fg.float().sum((1, 2)).clamp(min=1)).mean().item(), 3)}
        print(json.dumps(row), flush=True)
        return {}

    trainer = Pretrainer(cfg, WorkerEnv())
    trainer.evaluate = lambda: probe(trainer)  # the probe replaces the zero-shot evaluation at every evaluation
    probe(trainer)
    trainer.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
