"""Byte-level helpers shared by the shard writers, the benchmark readers and the synthetic world.

Why a module of its own: three writers (segmentation shards, the COCO-Object converter, the synthetic
world) must all obey the same two rules, and getting them right once is cheaper than three times:

* nothing half-written is ever visible under its final name: every file is written to a temporary name
  in the same folder and moved into place with ``os.replace`` (atomic on POSIX);
* the same content gives the same bytes: tar members carry a fixed mtime, owner and mode, and images
  are encoded with fixed encoder settings, so a seeded generator is byte-for-byte reproducible.

It also holds the few image codecs the data layer needs (JPEG/PNG in, uint8 / integer arrays out) and
the PASCAL VOC colour palette used for palette-PNG label maps.
"""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

JPEG_QUALITY = 95


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary sibling file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        # Leave no partial file behind, whatever interrupted us (disk full, KeyboardInterrupt, ...).
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def tar_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    """Build a tar archive in memory with reproducible headers (mtime 0, root owner, mode 0644).

    Members keep the order given: webdataset groups consecutive members sharing a key into a sample,
    so callers pass each sample's files together.
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_tar(path: str | os.PathLike, members: Iterable[tuple[str, bytes]]) -> Path:
    """Write a reproducible tar atomically (see :func:`tar_bytes`)."""
    return atomic_write_bytes(path, tar_bytes(members))


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """RGB uint8 HxWx3 -> JPEG bytes. 4:4:4 chroma keeps colour edges of small images sharp."""
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def encode_png(image: np.ndarray) -> bytes:
    """RGB uint8 HxWx3 -> PNG bytes (lossless)."""
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def encode_label_png(label: np.ndarray, palette: bool = False) -> bytes:
    """Integer HxW class-index map -> PNG bytes.

    Values up to 255 are stored as 8-bit (grey, or palette when ``palette`` is set, as VOC does);
    larger values (datasets with more than 255 classes) need a 16-bit grey PNG.
    """
    if label.ndim != 2:
        raise ValueError(f"a label map must be 2-D (H, W), got shape {label.shape}")
    if label.size and (label.min() < 0 or label.max() > 65535):
        raise ValueError(f"label values must lie in 0..65535, got {label.min()}..{label.max()}")
    buf = io.BytesIO()
    if label.size == 0 or label.max() <= 255:
        img = Image.fromarray(label.astype(np.uint8), "L")
        if palette:
            img = img.convert("P")
            img.putpalette(voc_palette())
    else:
        img = Image.fromarray(label.astype(np.uint16))  # mode I;16
    img.save(buf, format="PNG")
    return buf.getvalue()


def decode_rgb(data: bytes) -> np.ndarray:
    """JPEG/PNG bytes -> RGB uint8 HxWx3. Raises on corrupt or truncated bytes (PIL's default)."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return np.array(img.convert("RGB"), dtype=np.uint8)  # a writable copy (torch warns on read-only)


def label_array(img: Image.Image) -> np.ndarray:
    """A single-channel label image (palette, 8-bit or 16-bit grey) -> int64 HxW class indices.

    A palette PNG's pixel values are the palette indices, i.e. the class ids (the VOC convention);
    colour (RGB) label images are rejected because their class ids would need a colour lookup.
    """
    if img.mode not in ("P", "L", "I;16", "I;16B", "I;16L", "I"):
        raise ValueError(f"expected a single-channel label image (palette or grey), got mode {img.mode}")
    return np.asarray(img).astype(np.int64)


def decode_label(data: bytes) -> np.ndarray:
    """PNG bytes of a label map -> int64 HxW (see :func:`label_array`)."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return label_array(img)


def voc_palette(num: int = 256) -> list[int]:
    """The PASCAL VOC colour map (bit-interleaved class index), flattened for ``putpalette``."""
    out = []
    for i in range(num):
        r = g = b = 0
        c = i
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        out += [r, g, b]
    return out
