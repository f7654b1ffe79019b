"""COCO run-length masks, decoded without pycocotools (for the PASCAL Context conversion).

PASCAL Context's ``trainval_merged.json`` is in the PASCAL-in-Detail format, whose masks are COCO RLE
(ccvl/detail-api ``PythonAPI/detail/__init__.py``: ``decodeMask`` is ``mask.decode``, the COCO API's).
The format, as cocodataset/cocoapi ``common/maskApi.c`` defines it (``rleFrString`` / ``rleDecode``):

* ``{"size": [h, w], "counts": ...}``; the counts are run lengths over the mask read column by column
  (Fortran order), alternating 0-runs and 1-runs and starting with a 0-run (which may be 0 long).
* ``counts`` as a list of ints is the uncompressed form. As a string it is compressed: each count is
  written in 5-bit groups, least significant first, each group as the character ``48 + group``, where
  bit 0x20 says another group follows and bit 0x10 of the last group is the sign; from the fourth count
  on (index > 2) a string stores the difference to the count two places before.

Every malformation (a bad character, a count that does not end, negative runs, runs that do not add up
to ``h * w``) is a ValueError naming ``where``.
"""

from __future__ import annotations

import numpy as np


def counts_from_string(s: str | bytes, where: str = "mask") -> list[int]:
    """The run lengths a compressed COCO RLE string encodes."""
    if isinstance(s, bytes):
        s = s.decode("ascii", errors="replace")
    counts: list[int] = []
    value, shift, more = 0, 0, False
    for pos, char in enumerate(s):
        group = ord(char) - 48
        if not 0 <= group < 64:
            raise ValueError(f"{where}: RLE counts hold {char!r} at position {pos}, not a COCO RLE character")
        value |= (group & 0x1F) << shift
        shift += 5
        more = bool(group & 0x20)
        if more:
            continue
        if group & 0x10:  # the sign bit of the last group: extend the sign
            value -= 1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
        value, shift = 0, 0
    if more:
        raise ValueError(f"{where}: RLE counts end inside a number (a truncated string)")
    return counts


def decode_rle(segmentation, where: str = "mask") -> np.ndarray:
    """A COCO RLE dict -> bool mask (h, w)."""
    if not isinstance(segmentation, dict) or "size" not in segmentation or "counts" not in segmentation:
        raise ValueError(f"{where}: expected an RLE mask {{'size': [h, w], 'counts': ...}}, got "
                         f"{type(segmentation).__name__}")
    size = segmentation["size"]
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in size)):
        raise ValueError(f"{where}: RLE size must be [height, width], got {size!r}")
    h, w = size
    raw = segmentation["counts"]
    if isinstance(raw, (str, bytes)):
        counts = counts_from_string(raw, where)
    elif isinstance(raw, list) and all(isinstance(c, int) and not isinstance(c, bool) for c in raw):
        counts = raw
    else:
        raise ValueError(f"{where}: RLE counts must be a string or a list of integers")
    runs = np.asarray(counts, dtype=np.int64)
    if runs.size and runs.min() < 0:
        raise ValueError(f"{where}: RLE has a negative run length ({int(runs.min())})")
    if int(runs.sum()) != h * w:
        raise ValueError(f"{where}: RLE runs cover {int(runs.sum())} pixels, but the mask is {h}x{w} = {h * w}")
    flat = np.repeat((np.arange(runs.size) % 2).astype(bool), runs)
    return flat.reshape(w, h).T  # the runs go down the columns
