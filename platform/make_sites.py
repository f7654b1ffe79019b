"""Split a synthetic world into federated partner sites (non-IID), for simulations and local deployments.

    python platform/make_sites.py --out sites --kinds caption,caption,segmentation,segmentation \
        [--world DIR] [--alpha 0.5] [--seed 0] [--val-fraction 0.1] [--overwrite]

--world defaults to the embedded synthetic world of the `tiny` config (generated on first use). Each site gets
a folder (site.json + captions/ or seg/ + val/ shards); federation.json records the per-site class counts.
Caption sites hold only captioned images, segmentation sites only labelled masks; classes are skewed across
the sites of each kind by a Dirichlet(alpha) draw (small alpha: few classes per site).
"""

from __future__ import annotations

import argparse
import sys

from ovseg.cli import add_debug, command


@command("make_sites")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (must be empty unless --overwrite)")
    p.add_argument("--kinds", default="caption,caption,segmentation,segmentation",
                   help="comma-separated site kinds, one per site: caption | segmentation")
    p.add_argument("--world", default=None, help="a synthetic world folder (default: the tiny config's)")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration of the class skew")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out share of each segmentation site")
    p.add_argument("--overwrite", action="store_true")
    args = add_debug(p).parse_args(argv)
    from ovseg.config import load_config
    from ovseg.data.synthetic.world import ensure_synthetic_world
    from ovseg.federated.split import split_world

    world = args.world or ensure_synthetic_world(load_config("tiny"))
    manifest = split_world(world, args.out, [k.strip() for k in args.kinds.split(",") if k.strip()],
                           alpha=args.alpha, seed=args.seed, val_fraction=args.val_fraction, overwrite=args.overwrite)
    for s in manifest["sites"]:
        top = ", ".join(f"{c} {n}" for c, n in sorted(s["classes"].items(), key=lambda x: -x[1])[:4])
        print(f"{s['name']}: {s['kind']:12s} {s['train']:6d} train, {s['val']:4d} val  (most: {top})")
    print(f"wrote {args.out}/federation.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
