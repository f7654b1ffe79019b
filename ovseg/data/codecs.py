"""Image and label-map codecs and the one colour palette, shared by shards, benchmarks and pictures.

Fixed encoder settings, so a seeded generator is byte-for-byte reproducible; label maps are single-channel
PNGs (8-bit grey or palette for up to 256 classes, 16-bit grey above), read back as int64 class indices.
The palette is PASCAL VOC's colour map (bit-interleaved class index), with the ignore value drawn white.
Image and label files given by a user (benchmarks, ``platform/predict.py``) are read by ``read_rgb_file`` /
``read_label_file``: every failure is a ValueError saying why, and a header declaring more than
``MAX_PIXELS`` pixels is refused before any pixel is decoded.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

JPEG_QUALITY = 95
IGNORE = 255
# PIL's decompression-bomb error limit (twice its default MAX_IMAGE_PIXELS), fixed here so that a file read by
# read_rgb_file / read_label_file is bounded whatever another library sets Image.MAX_IMAGE_PIXELS to
MAX_PIXELS = 2 * 89_478_485


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
            img.putpalette(_png_palette())
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


def _read_file(path: str | Path, decode) -> np.ndarray:
    """Open ``path``, check the size its header declares, then ``decode(img)``; any failure -> ValueError."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise ValueError(f"its header declares {width} x {height} pixels, more than the {MAX_PIXELS} "
                                 "an image may have (a corrupt or hostile file?)")
            return decode(img)
    except ValueError:
        raise
    except FileNotFoundError:
        raise ValueError("no such file") from None
    except Exception as e:  # noqa: BLE001  PIL raises many types for corrupt bytes (OSError, SyntaxError...)
        raise ValueError(f"not a readable image ({e.__class__.__name__}: {e})") from None


def read_rgb_file(path: str | Path, upright: bool = False) -> np.ndarray:
    """An image file -> RGB uint8 HxWx3; ``upright``: turned as its EXIF orientation says (as a viewer shows it)."""
    def decode(img: Image.Image) -> np.ndarray:
        img.load()
        if upright:
            img = ImageOps.exif_transpose(img)
        return np.array(img.convert("RGB"), dtype=np.uint8)
    return _read_file(path, decode)


def read_label_file(path: str | Path) -> np.ndarray:
    """A label-map file -> int64 HxW class indices (see :func:`label_array`)."""
    def decode(img: Image.Image) -> np.ndarray:
        img.load()
        return label_array(img)
    return _read_file(path, decode)


def palette(n: int = 256, ignore: int | None = IGNORE) -> np.ndarray:
    """The PASCAL VOC colour map (bit-interleaved class index) for ``max(n, 256)`` classes, (N, 3) uint8.

    ``ignore`` (255) is drawn white, as the evaluation pictures show it; ``ignore=None`` keeps VOC's own
    colour there, as VOC's palette PNGs (and :func:`encode_label_png`) carry it.
    """
    pal = np.zeros((max(n, 256), 3), dtype=np.uint8)
    for i in range(len(pal)):
        c, r, g, b = i, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        pal[i] = (r, g, b)
    if ignore is not None:
        pal[ignore] = (255, 255, 255)
    return pal


def _png_palette() -> list[int]:
    """VOC's own palette, flattened for ``putpalette`` (``encode_label_png``'s ``palette`` flag shadows the name)."""
    return palette(ignore=None).ravel().tolist()
