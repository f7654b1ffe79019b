"""ADE20K (``ade20k``): ADEChallengeData2016, 150 classes; 0 ("other") -> ignore, 1..150 -> 0..149
(mmseg's ``reduce_zero_label``). No background class, so no background threshold."""

from __future__ import annotations

from pathlib import Path

from ovseg.data.benchmarks.classes import ADE20K_CLASSES
from ovseg.data.benchmarks.registry import SegBenchmark, drop_zero_lut, find, folder_benchmark, register


@register("ade20k", layout="ADEChallengeData2016/{images,annotations}/<split>/", aliases=("ade",),
          folder="ade/ADEChallengeData2016")  # TCL configs/_base_/datasets/ade20k.py: data_root ./data/ade
def ade20k(root: Path, split: str | None, bg: float | None) -> SegBenchmark:
    return folder_benchmark("ade20k", find(root, "ADEChallengeData2016"), split or "validation", ".png",
                            list(ADE20K_CLASSES), drop_zero_lut(150), None)
