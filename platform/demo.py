"""Zero-shot segmentation with an untrained tiny model: the core API end to end, in seconds, on the CPU.

    python platform/demo.py [--config tiny] [--out demo.png]

Builds the model, draws a small scene, segments it into the given class names and writes the label map.
An untrained model segments at random; this shows the API, not quality (train with platform/pretrain.py).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from PIL import Image, ImageDraw

import ovseg
from ovseg.cli import add_debug, command


def _scene(height: int = 375, width: int = 500) -> np.ndarray:
    img = Image.new("RGB", (width, height), (90, 120, 90))
    draw = ImageDraw.Draw(img)
    draw.ellipse((60, 80, 220, 240), fill=(200, 60, 40))
    draw.rectangle((280, 150, 460, 330), fill=(40, 60, 200))
    return np.asarray(img)


@command("demo")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny")
    p.add_argument("--classes", default="background,cat,dog,car")
    p.add_argument("--out", default=None, help="write the label map as a PNG here")
    args = add_debug(p).parse_args(argv)
    t0 = time.perf_counter()
    model = ovseg.build_model(args.config)
    n_params = sum(p.numel() for p in model.parameters())
    names = args.classes.split(",")
    labels = ovseg.segment(model, _scene(), names)
    counts = np.bincount(labels.ravel(), minlength=len(names))
    print(f"model {args.config}: {n_params / 1e6:.2f} M parameters; segmented a 375 x 500 image into {names}")
    for name, c in zip(names, counts):
        print(f"  {name:12s} {c / labels.size:6.1%} of pixels")
    print(f"done in {time.perf_counter() - t0:.1f} s (untrained weights: the split is arbitrary)")
    if args.out:
        Image.fromarray((labels * (255 // max(1, len(names) - 1))).astype(np.uint8)).save(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
