"""Segmentation shards: the format partner sites use to contribute labelled images.

DESIGN.md's hybrid federation lets a site train on private *segmentation* data next to caption data.
Those sites need one documented, self-describing format; this module defines it, writes it, converts
the standard benchmarks into it, and reads it back while skipping and counting bad samples.

Format (a plain tar, readable by ``webdataset.WebDataset`` as well as by this module)::

    shard-000000.tar
      {key}.jpg   or {key}.png   the image, RGB (grey/RGBA are converted to RGB on read)
      {key}.seg.png              the label map: 8-bit or 16-bit single-channel PNG (palette PNGs count:
                                 their pixel values are the class indices, as in VOC)
      {key}.json                 {"classes": ["background", "cat", ...], "ignore_index": 255}

* A sample's members are consecutive in the tar and share ``key``; keys contain no dots (webdataset
  splits the extension at the first dot, so ``abc.seg.png`` is member ``seg.png`` of sample ``abc``).
* Pixel value ``i`` means ``classes[i]``; ``ignore_index`` (default 255) marks unlabelled pixels.
  Any other value is an error. The class list travels with every sample, so shards from different
  sites (different vocabularies) can be mixed; a site whose class 0 is "background" says so by name.
* The label map has exactly the image's height and width.

Reading never silently replaces a bad sample: it is skipped, its reason is counted in a
``shardio.SkipCounter`` and logged with the shard and key (tars are read by ``shardio.read_tar`` with its
``SEGMENTATION`` layout). Reasons: ``missing_image``, ``corrupt_image``,
``missing_mask``, ``corrupt_mask``, ``missing_meta``, ``corrupt_meta``, ``size_mismatch``,
``label_out_of_range``, ``truncated_tar`` (the shard ends mid-file; samples before it are kept) and
``unreadable_shard`` (missing file, or not a tar at all).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from ovseg.data.codecs import decode_label, decode_rgb, encode_jpeg, encode_label_png, encode_png
from ovseg.data.shardio import SEGMENTATION, SkipCounter, expand_urls, read_tar, write_tar

IMAGE_EXTS = ("jpg", "jpeg", "png")
MASK_EXT = "seg.png"
META_EXT = "json"
SKIP_REASONS = (
    "missing_image", "corrupt_image", "missing_mask", "corrupt_mask", "missing_meta", "corrupt_meta",
    "size_mismatch", "label_out_of_range", "truncated_tar", "unreadable_shard",
)


@dataclass
class SegSample:
    """One labelled image. ``image_bytes`` (already-encoded JPEG/PNG) avoids a lossy re-encode."""

    key: str
    label: np.ndarray                    # (H, W) integer class indices
    class_names: Sequence[str]
    image: np.ndarray | None = None      # (H, W, 3) uint8 RGB
    image_bytes: bytes | None = None
    image_ext: str = "jpg"
    ignore_index: int = 255


def _check_key(key: str) -> None:
    if not key or "." in key or "/" in key:
        raise ValueError(f"sample key {key!r} must be non-empty and contain no '.' or '/'")


def encode_sample(s: SegSample) -> list[tuple[str, bytes]]:
    """Validate one sample and return its tar members. Raises ValueError naming the sample."""
    _check_key(s.key)
    label = np.asarray(s.label)
    if label.ndim != 2:
        raise ValueError(f"sample {s.key}: label must be (H, W), got shape {label.shape}")
    if s.image_bytes is None:
        if s.image is None or s.image.ndim != 3 or s.image.shape[2] != 3 or s.image.dtype != np.uint8:
            raise ValueError(f"sample {s.key}: image must be uint8 (H, W, 3)")
        if s.image.shape[:2] != label.shape:
            raise ValueError(f"sample {s.key}: label {label.shape} differs from image {s.image.shape[:2]}")
        image_bytes = encode_jpeg(s.image) if s.image_ext == "jpg" else encode_png(s.image)
    else:
        image_bytes = s.image_bytes
    if s.image_ext not in IMAGE_EXTS:
        raise ValueError(f"sample {s.key}: image_ext must be one of {IMAGE_EXTS}, got {s.image_ext!r}")
    bad = _out_of_range(label, len(s.class_names), s.ignore_index)
    if bad.size:
        raise ValueError(f"sample {s.key}: label values {bad[:10].tolist()} are outside 0..{len(s.class_names) - 1} "
                         f"and not the ignore index {s.ignore_index}")
    meta = {"classes": list(s.class_names), "ignore_index": int(s.ignore_index)}
    return [(f"{s.key}.{s.image_ext}", image_bytes),
            (f"{s.key}.{MASK_EXT}", encode_label_png(label)),
            (f"{s.key}.{META_EXT}", json.dumps(meta, sort_keys=True).encode())]


def _out_of_range(label: np.ndarray, num_classes: int, ignore_index: int) -> np.ndarray:
    values = np.unique(label)
    return values[((values < 0) | (values >= num_classes)) & (values != ignore_index)]


def write_seg_shards(samples: Iterable[SegSample], out_dir: str | Path, shard_size: int = 1000,
                     prefix: str = "shard") -> list[Path]:
    """Write samples into ``out_dir/{prefix}-000000.tar, ...``, ``shard_size`` samples each.

    Each shard is built in memory and renamed into place, so an interrupted run leaves only whole
    shards. Samples are validated first (see :func:`encode_sample`); a bad one raises, because a
    writer that silently drops a partner's data would hide the bug that produced it.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    out_dir = Path(out_dir)
    paths: list[Path] = []
    members: list[tuple[str, bytes]] = []
    count, seen = 0, set()

    def flush() -> None:
        paths.append(write_tar(out_dir / f"{prefix}-{len(paths):06d}.tar", members))
        members.clear()

    for sample in samples:
        if sample.key in seen:
            raise ValueError(f"sample key {sample.key!r} appears twice")
        seen.add(sample.key)
        members.extend(encode_sample(sample))
        count += 1
        if count % shard_size == 0:
            flush()
    if members:
        flush()
    return paths


def benchmark_to_seg_shards(bench, out_dir: str | Path, shard_size: int = 1000, prefix: str = "shard") -> list[Path]:
    """Convert a :class:`ovseg.data.benchmarks.registry.SegBenchmark` into segmentation shards.

    The original image bytes are copied (no JPEG re-encode); the label is the benchmark's remapped
    one (255 = ignore), with the benchmark's class list.
    """
    def gen() -> Iterator[SegSample]:
        for i in range(len(bench)):
            image, label, sample_id = bench[i]
            path = bench.image_path(i)
            ext = path.suffix.lower().lstrip(".")
            key = sample_id.replace(".", "_").replace("/", "_")
            yield SegSample(key=key, label=label, class_names=bench.class_names, image_bytes=path.read_bytes(),
                            image_ext="jpg" if ext == "jpeg" else ext)
    return write_seg_shards(gen(), out_dir, shard_size, prefix)


def decode_seg_sample(url: str, key: str, files: dict[str, bytes], counter: SkipCounter):
    """Decode and check one sample; return (image, label, classes, key) or None after counting why."""
    where = f"{url}:{key}"
    image_ext = next((e for e in IMAGE_EXTS if e in files), None)
    if image_ext is None:
        counter.add("missing_image", where, f"no {'/'.join(IMAGE_EXTS)} member (has {sorted(files)})")
        return None
    if MASK_EXT not in files:
        counter.add("missing_mask", where, f"no {MASK_EXT} member (has {sorted(files)})")
        return None
    if META_EXT not in files:
        counter.add("missing_meta", where, f"no {META_EXT} member with the class list")
        return None
    try:
        meta = json.loads(files[META_EXT])
        classes = meta["classes"]
        ignore_index = int(meta.get("ignore_index", 255))
        if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
            raise ValueError("'classes' must be a non-empty list of strings")
    except (ValueError, KeyError, TypeError) as e:
        counter.add("corrupt_meta", where, f"bad {META_EXT}: {e}")
        return None
    try:
        image = decode_rgb(files[image_ext])
    except Exception as e:  # PIL raises many types for corrupt bytes
        counter.add("corrupt_image", where, f"{image_ext} does not decode: {e}")
        return None
    try:
        label = decode_label(files[MASK_EXT])
    except Exception as e:
        counter.add("corrupt_mask", where, f"{MASK_EXT} does not decode: {e}")
        return None
    if label.shape != image.shape[:2]:
        counter.add("size_mismatch", where, f"mask {label.shape[::-1]} vs image {image.shape[1::-1]} (WxH)")
        return None
    bad = _out_of_range(label, len(classes), ignore_index)
    if bad.size:
        counter.add("label_out_of_range", where,
                    f"values {bad[:10].tolist()} outside 0..{len(classes) - 1} (ignore {ignore_index})")
        return None
    if ignore_index != 255:
        # Downstream code (losses, mIoU) uses 255 as the one ignore value.
        label = np.where(label == ignore_index, 255, label)
    return image, label, list(classes), key


def iter_seg_shards(urls: str | Sequence[str], counter: SkipCounter | None = None):
    """Yield (image uint8 HxWx3, label int64 HxW with 255 = ignore, class_names, key) from shards.

    Bad samples are skipped and counted in ``counter`` (create one to read the counts afterwards).
    """
    counter = counter if counter is not None else SkipCounter(SKIP_REASONS)
    for url in expand_urls(urls, check=False):
        for key, members in read_tar(url, counter, SEGMENTATION):
            files = {ext: data for _, ext, data in members}  # a repeated extension: the later member wins
            sample = decode_seg_sample(url, key, files, counter)
            if sample is not None:
                yield sample


class SegShardDataset(torch.utils.data.IterableDataset):
    """Streams segmentation shards; shards are split across distributed ranks and loader workers.

    Each worker process holds its own ``counter`` (counts are logged as they happen); iterate in the
    main process, or read ``counter`` of a ``num_workers=0`` loader, to get the totals in one place.
    """

    def __init__(self, urls: str | Sequence[str], transform=None, shuffle_shards: bool = False, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.urls = expand_urls(urls, check=False)
        if not self.urls:
            raise ValueError(f"no segmentation shards match {urls!r}")
        self.transform, self.shuffle_shards, self.seed = transform, shuffle_shards, seed
        self.rank, self.world_size, self.epoch = rank, world_size, 0
        self.counter = SkipCounter(SKIP_REASONS)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        urls = list(self.urls)
        if self.shuffle_shards:
            np.random.default_rng([self.seed, self.epoch]).shuffle(urls)
        info = torch.utils.data.get_worker_info()
        workers, worker_id = (info.num_workers, info.id) if info else (1, 0)
        urls = urls[self.rank * workers + worker_id::self.world_size * workers]
        for sample in iter_seg_shards(urls, self.counter):
            yield self.transform(*sample) if self.transform else sample
