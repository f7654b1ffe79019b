"""Tiny img2dataset-layout caption shards for the caption tests, written with tarfile and PIL.

Shared by test_captions.py and test_prepare_captions.py; not a test module itself.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def jpeg_bytes(seed: int, size: int = 48) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def write_shard(path: Path, samples: list[dict]) -> Path:
    """``samples``: dicts ``{"key": str, "jpg"|"png"|...: bytes, "txt": bytes|str, "json": dict}``;
    absent entries are left out of the tar (to build broken samples)."""
    with tarfile.open(path, "w") as tar:
        for s in samples:
            for ext, value in s.items():
                if ext == "key":
                    continue
                if isinstance(value, str):
                    value = value.encode()
                elif isinstance(value, dict):
                    value = json.dumps(value).encode()
                info = tarfile.TarInfo(f"{s['key']}.{ext}")
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value))
    return path


def good_sample(key: str, caption: str, seed: int = 0) -> dict:
    return {"key": key, "jpg": jpeg_bytes(seed), "txt": caption, "json": {"key": key, "caption": caption}}


CAPTIONS = [
    "a dog on a sofa", "two cats and a dog", "a red bus in the street", "people riding bikes",
    "a cat sleeping on a bed", "a man holding an umbrella", "a pizza on a table", "the bus stop at night",
    "a horse in a field", "sheep grazing near a house", "a view of the night sky", "a boy with a kite",
]


def make_shards(folder: Path, num_shards: int, per_shard: int, start: int = 0) -> list[Path]:
    """``num_shards`` shards of good samples with unique keys ``{shard:03d}{index:04d}``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(num_shards):
        samples = [good_sample(f"{s + start:03d}{i:04d}", CAPTIONS[(s * per_shard + i) % len(CAPTIONS)],
                               seed=s * 1000 + i) for i in range(per_shard)]
        paths.append(write_shard(folder / f"{s + start:05d}.tar", samples))
    return paths
