"""Captions per second of the entity matcher on ONE core (the CC12M -> CC4M filter's inner loop).

    python bench/entity_pipeline.py                 # 200k generated captions, batched pipe() and match()
    python bench/entity_pipeline.py --captions 50000

Captions are generated from a fixed word list (entity words, plurals, filler words, punctuation), about
the length of CC12M captions (10-20 words). Target from the data issue: 40,000 captions/s or more on one
core. Prints the command, the machine and the date beside the numbers.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import sys
import time

from ovseg.data.captions.entities import EntityMatcher, EntityVocab

FILLER = ("a the of in on with and at near two some old red small large view photo street night sky "
          "people's walking sitting standing beautiful wooden my his her, . ! ; -").split()


def make_captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = list(EntityVocab.default().surface_to_canonical) + ["dogs", "buses", "knives", "T-shirts", "Cats"]
    out = []
    for _ in range(n):
        k = rng.randint(10, 20)
        out.append(" ".join(rng.choice(words) if rng.random() < 0.15 else rng.choice(FILLER) for _ in range(k)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--captions", type=int, default=200_000)
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, as the target says
    captions = make_captions(args.captions)
    matcher = EntityMatcher()
    matcher.match("warm up")
    print(f"command: {' '.join([sys.executable] + sys.argv)}")
    print(f"machine: {platform.node()} {platform.machine()} {platform.processor() or ''} python "
          f"{platform.python_version()}, pinned to 1 core; date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    for name, run in [("pipe (batched)", lambda: matcher.pipe(captions)),
                      ("match (one by one)", lambda: [matcher.match(c) for c in captions])]:
        start = time.perf_counter()
        spans = run()
        seconds = time.perf_counter() - start
        kept = sum(1 for s in spans if s)
        print(f"{name:20s} {len(captions) / seconds:10,.0f} captions/s  ({len(captions)} captions, "
              f"{kept} with an entity, {seconds:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
