"""Generate the synthetic caption world (the embedded default data set) on disk.

    python platform/make_synthetic.py --out data/synthetic --seed 0 --num-train 10000 --num-val 500 \
        [--num-seg 1000] [--image-size 64] [--min-objects 1 --max-objects 4] \
        [--min-scale 0.3 --max-scale 0.6] [--classes cat,dog,car,...] [--shard-size 1000] [--workers 1]

Writes train/ caption shards, seg/ segmentation shards, a VOC-layout val/ split, manifest.json and
ovseg-world.json, the list of the files written (layout: ovseg/data/synthetic/world.py). The same seed and
arguments give byte-identical files. --overwrite replaces only an earlier world (a valid ovseg-world.json), and
deletes only the files it lists; any other non-empty --out is refused and left as it is.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from ovseg.cli import add_debug, command, fail
from ovseg.data.synthetic.scene import DEFAULT_CLASSES, SyntheticConfig
from ovseg.data.synthetic.world import generate_world


@command("make_synthetic")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (must be empty unless --overwrite)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-train", type=int, default=10000, help="images in the caption shards")
    p.add_argument("--num-val", type=int, default=500, help="images in the VOC-layout val split")
    p.add_argument("--num-seg", type=int, default=0, help="images in the segmentation shards")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--min-objects", type=int, default=1)
    p.add_argument("--max-objects", type=int, default=4)
    p.add_argument("--min-scale", type=float, default=0.3, help="smallest object diameter / image side")
    p.add_argument("--max-scale", type=float, default=0.6, help="largest object diameter / image side")
    p.add_argument("--classes", default=",".join(DEFAULT_CLASSES), help="comma-separated CC4M entities")
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--workers", type=int, default=1, help="processes; the output does not depend on it")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier world in --out (only the files its ovseg-world.json lists)")
    args = add_debug(p).parse_args(argv)
    try:
        cfg = SyntheticConfig(classes=tuple(c.strip() for c in args.classes.split(",") if c.strip()),
                              image_size=args.image_size, min_objects=args.min_objects,
                              max_objects=args.max_objects, min_scale=args.min_scale, max_scale=args.max_scale)
        start = time.perf_counter()
        manifest = generate_world(args.out, seed=args.seed, num_train=args.num_train, num_val=args.num_val,
                                  num_seg=args.num_seg, config=cfg, shard_size=args.shard_size,
                                  num_workers=args.workers, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as e:
        return fail("make_synthetic", e, args.debug)
    seconds = time.perf_counter() - start
    images = sum(s["images"] for s in manifest["splits"].values())
    summary = {split: {k: s[k] for k in ("images", "shards", "foreground_fraction")}
               for split, s in manifest["splits"].items()}
    print(json.dumps(summary, indent=2))
    print(f"wrote {images} images to {args.out} in {seconds:.1f} s ({images / seconds:.0f} images/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
