"""PASCAL Context (``context60``, ``context59``) in mmseg's converted layout.

* ``context60``  VOCdevkit/VOC2010 with mmseg-converted labels, 0 = background, 1..59 the classes.
* ``context59``  same files, background -> ignore, 1..59 -> 0..58.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ovseg.data.benchmarks.classes import CONTEXT59_CLASSES
from ovseg.data.benchmarks.registry import SegBenchmark, devkit_benchmark, drop_zero_lut, identity_lut, register

LAYOUT = "VOCdevkit/VOC2010/{JPEGImages,SegmentationClassContext,ImageSets/SegmentationContext/<split>.txt}"


def _context(root: Path, split: str, name: str, classes: list[str], lut: np.ndarray, bg: float | None):
    return devkit_benchmark(root, name, "VOC2010", "SegmentationContext", "SegmentationClassContext", split, classes,
                            lut, bg)


@register("context60", layout=LAYOUT, bg_thresh=0.35, aliases=("context", "pascal_context"))
def context60(root: Path, split: str | None, bg: float | None) -> SegBenchmark:
    return _context(root, split or "val", "context60", ["background"] + CONTEXT59_CLASSES, identity_lut(60), bg)


@register("context59", layout=LAYOUT)
def context59(root: Path, split: str | None, bg: float | None) -> SegBenchmark:
    return _context(root, split or "val", "context59", list(CONTEXT59_CLASSES), drop_zero_lut(59), None)
