"""Keep the captions that name a vocabulary entity; annotate them with entities and cross-image pairs.

Builds CC4M-style training data from img2dataset caption shards (paper section 4.1, reference 5.1):

    python platform/prepare_captions.py "/data/cc12m/{00000..01242}.tar" /data/cc4m --workers 16
    python platform/prepare_captions.py /data/cc12m_shards /data/cc4m --shard-size 10000 --pairs 10 --seed 0
    python platform/prepare_captions.py captions.parquet /data/cc4m_table        # a caption table, no images
    python platform/prepare_captions.py shards/ out/ --vocab my_entities.txt     # lines "canonical: syn, syn"

INPUT is a folder of *.tar shards, a brace pattern, or a .tsv (with a header) / .parquet caption table
with a ``caption`` column and a ``key``, ``image_id`` or ``url`` column. OUTPUT is a folder; it receives
the annotated shards (or table) and summary.json. The logic lives in ovseg.data.captions.prepare.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from ovseg.cli import add_debug, command
from ovseg.data.captions.prepare import prepare_captions


@command("prepare_captions")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="shard folder, brace pattern, or .tsv/.parquet caption table")
    parser.add_argument("output", help="output folder")
    parser.add_argument("--vocab", help="entity vocabulary file (default: the paper's 73 entities)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: every core)")
    parser.add_argument("--shard-size", type=int, default=None,
                        help="samples per output shard (default: one output shard per input shard)")
    parser.add_argument("--pairs", type=int, default=10, help="pair candidates stored per sample")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pair draw")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = add_debug(parser).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    summary = prepare_captions(args.input, args.output, vocab_path=args.vocab, workers=args.workers,
                               shard_size=args.shard_size, pairs=args.pairs, seed=args.seed, progress=not args.quiet)
    print(f"read {summary['samples_read']}, kept {summary['kept']}, without a pair {summary['without_pair']}")
    print("dropped:", json.dumps(summary["dropped"]))
    print("per entity:", json.dumps(summary["entities"]))
    print(f"wrote {len(summary['outputs'])} file(s) and {args.output}/summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
