"""Convert a benchmark's raw download into the mmseg layout its reader expects, with a summary of what it wrote.

    python platform/prepare_benchmark.py coco_stuff /data/coco_stuff164k /data/coco_stuff164k   # in place
    python platform/prepare_benchmark.py coco_object /data/coco_stuff164k /data                # same folder
    python platform/prepare_benchmark.py context60 /raw/VOCdevkit /data --splits val,train     # Detail JSON
    python platform/prepare_benchmark.py cityscapes /raw/cityscapes /data/cityscapes

NAME: coco_object, coco_stuff (from the COCO-Stuff-164k stuffthingmaps), context60 / context59 (one set of labels
for both, from trainval_merged.json), cityscapes (gtFine *_labelIds.png -> *_labelTrainIds.png). VOC and ADE20K
are read as downloaded. RAW is the raw dataset folder (or a parent on the mmseg path); OUT receives the labels,
the images (hard-linked) and summary.json; OUT may be RAW. Existing outputs are kept (an interrupted run resumes)
unless --overwrite; nothing is deleted. A bad sample is named on stderr, skipped and counted: exit code 1.
The logic lives in ovseg.data.benchmarks.convert and the family modules.
"""

from __future__ import annotations

import argparse
import json
import sys

from ovseg.cli import add_debug, command


@command("prepare_benchmark")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="benchmark: coco_object, coco_stuff, context60, context59, cityscapes")
    parser.add_argument("raw", help="the raw dataset folder")
    parser.add_argument("out", help="output data root (may be RAW)")
    parser.add_argument("--splits", default=None,
                        help="comma-separated splits (default: the benchmark's val split)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing labels and id lists")
    args = add_debug(parser).parse_args(argv)

    from ovseg.data.benchmarks.convert import prepare_benchmark

    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip()) if args.splits else None
    summary = prepare_benchmark(args.name, args.raw, args.out, splits=splits, overwrite=args.overwrite)
    for split, counts in summary["splits"].items():
        print(f"{split}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        print(f"  classes seen (labels written holding each): {json.dumps(summary['classes_seen'][split])}")
    for path, what in summary["id_lists"].items():
        print(f"id list {path}: {what}")
    skipped = summary["skipped"]
    print(f"skipped {len(skipped)} sample(s)" + (" (named above and in summary.json)" if skipped else ""))
    print(f"wrote {args.out}/summary.json")
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
