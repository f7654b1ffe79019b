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
* Pixel value ``i`` means ``classes[i]``; ``ignore_index`` (default 255) marks unlabelled pixels. It is
  an integer outside the class range (a class's pixels must never read as unlabelled). Any other value is
  an error. The class list travels with every sample, so shards from different sites (different
  vocabularies) can be mixed; a site whose class 0 is "background" says so by name.
* At most 255 classes: the reader gives labels with 255 = ignore, the value every loss and metric uses, so
  a class 255 cannot be told from unlabelled pixels (16-bit label PNGs still carry an ignore value > 255).
* The label map has exactly the image's height and width. A key is used once in a shard (as with
  webdataset, a sample is named by shard and key), and a sample's members lie in one folder of the tar
  (the key leaves the folder out, so members of two folders would merge).

Reading never silently replaces a bad sample: it is skipped, its reason is counted in a
``shardio.SkipCounter`` and logged with the shard and key (tars are read by ``shardio.read_tar`` with its
``SEGMENTATION`` layout). Reasons: ``missing_image``, ``corrupt_image``,
``missing_mask``, ``corrupt_mask``, ``missing_meta``, ``corrupt_meta``, ``size_mismatch``,
``label_out_of_range``, ``too_many_classes``, ``duplicate_key`` (a key read earlier in the shard: the first
stays; or consecutive members of two samples with one key, which cannot be told apart: none stays),
``mixed_folders``, ``truncated_tar`` (the shard ends mid-file; samples before it are kept) and
``unreadable_shard`` (missing file, or not a tar at all). ``corrupt_meta`` covers a json that does not
parse or is nested too deeply (``shardio.load_json``), and a class list or ``ignore_index`` that breaks the
rules above (a float, bool, NaN or 1e999 is not an integer).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from ovseg.data.codecs import IGNORE, decode_label, decode_rgb, encode_jpeg, encode_label_png, encode_png
from ovseg.data.shardio import SEGMENTATION, SkipCounter, expand_urls, load_json, read_tar, write_tar

IMAGE_EXTS = ("jpg", "jpeg", "png")
MASK_EXT = "seg.png"
META_EXT = "json"
SKIP_REASONS = (
    "missing_image", "corrupt_image", "missing_mask", "corrupt_mask", "missing_meta", "corrupt_meta",
    "size_mismatch", "label_out_of_range", "too_many_classes", "duplicate_key", "mixed_folders",
    "truncated_tar", "unreadable_shard",
)
MAX_CLASSES = IGNORE  # class indices 0..254: 255 is the ignore value of the labels the reader gives


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


def check_ignore_index(value, num_classes: int) -> int:
    """``value`` as the ignore index of a ``num_classes`` class list; ValueError unless it is an integer
    (not a bool or a float) outside ``0..num_classes - 1``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"ignore_index must be an integer, got {value!r}")
    if 0 <= value < num_classes:
        raise ValueError(f"ignore_index {value} is a class (classes are 0..{num_classes - 1}): its pixels would "
                         "read as unlabelled; it must lie outside the class range")
    return int(value)


def _too_many_classes(num_classes: int) -> str | None:
    if num_classes <= MAX_CLASSES:
        return None
    return (f"{num_classes} classes, over {MAX_CLASSES}: class {IGNORE} would read as the ignore value {IGNORE} "
            "of training and evaluation")


def encode_sample(s: SegSample) -> list[tuple[str, bytes]]:
    """Validate one sample and return its tar members. Raises ValueError naming the sample."""
    _check_key(s.key)
    try:
        ignore_index = check_ignore_index(s.ignore_index, len(s.class_names))
    except ValueError as exn:
        raise ValueError(f"sample {s.key}: {exn}") from None
    if _too_many_classes(len(s.class_names)):
        raise ValueError(f"sample {s.key}: {_too_many_classes(len(s.class_names))}")
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
    bad = _out_of_range(label, len(s.class_names), ignore_index)
    if bad.size:
        raise ValueError(f"sample {s.key}: label values {bad[:10].tolist()} are outside 0..{len(s.class_names) - 1} "
                         f"and not the ignore index {ignore_index}")
    meta = {"classes": list(s.class_names), "ignore_index": ignore_index}
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
        meta = load_json(files[META_EXT])
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
        classes = meta["classes"]
        if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
            raise ValueError("'classes' must be a non-empty list of strings")
        ignore_index = check_ignore_index(meta.get("ignore_index", IGNORE), len(classes))
    except (ValueError, KeyError) as e:
        counter.add("corrupt_meta", where, f"bad {META_EXT}: {e}")
        return None
    if _too_many_classes(len(classes)):
        counter.add("too_many_classes", where, _too_many_classes(len(classes)))
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
    if ignore_index != IGNORE:
        # Downstream code (losses, mIoU) uses 255 as the one ignore value.
        label = np.where(label == ignore_index, IGNORE, label)
    return image, label, list(classes), key


def _grouping_problem(key: str, members: list[tuple[str, str, bytes]], seen: set[str]) -> tuple[str, str] | None:
    """Why the members ``read_tar`` grouped under ``key`` are not one sample: (reason, detail), or None."""
    folders = sorted({name.rpartition("/")[0] for name, _, _ in members})
    if len(folders) > 1:
        return "mixed_folders", f"its members lie in folders {folders[:5]}: {[n for n, _, _ in members[:6]]}"
    repeated = sorted(e for e, n in Counter(ext for _, ext, _ in members).items() if n > 1)
    if repeated:
        return "duplicate_key", f"two samples share the key ({repeated} members repeat); neither is used"
    if key in seen:
        return "duplicate_key", "an earlier sample of this shard has this key; the first one stays"
    return None


def iter_seg_shards(urls: str | Sequence[str], counter: SkipCounter | None = None):
    """Yield (image uint8 HxWx3, label int64 HxW with 255 = ignore, class_names, key) from shards.

    Bad samples are skipped and counted in ``counter`` (create one to read the counts afterwards).
    """
    counter = counter if counter is not None else SkipCounter(SKIP_REASONS)
    for url in expand_urls(urls, check=False):
        seen: set[str] = set()  # keys of this shard so far
        for key, members in read_tar(url, counter, SEGMENTATION):
            problem = _grouping_problem(key, members, seen)
            seen.add(key)
            if problem:
                counter.add(problem[0], f"{url}:{key}", problem[1])
                continue
            files = {ext: data for _, ext, data in members}
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
