"""COCO-Object (``coco_object``): its reader, and the converter that makes its labels from COCO-Stuff-164k.

The reader: coco_stuff164k with GroupViT's ``*_instanceTrainIds.png`` labels, background + the 80 thing
classes, background threshold 0.9. The converter, COCO-Stuff-164k raw maps -> COCO-Object labels:

COCO-Object, the third benchmark of OVSegmentor/GroupViT (and of TCL's and SCLIP's tables), is not
distributed: it is derived from the COCO-Stuff pixel maps by GroupViT's
``convert_dataset/convert_coco_object.py`` (the same script as kakaobrain/tcl
``convert_dataset/convert_coco_object.py`` and wangf3014/SCLIP ``datasets/cvt_coco_object.py``). The
mapping (a fact read from that script, re-implemented here):

* raw COCO-Stuff ids are 0-based; the 80 thing classes use ids 0..90 except the 11 ids COCO never
  assigned (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90), and become labels 1..80 in id order;
* every stuff id (91..181) and the unlabelled value 255 become 0 = background (so COCO-Object has no
  ignore pixels).

GroupViT leaves any other raw value unchanged; such values mean a wrong input file, so the converter skips
it, naming the file. Output: ``annotations/<split>/<id>_instanceTrainIds.png`` (8-bit) in the
coco_stuff164k layout under OUT (``python platform/prepare_benchmark.py coco_object RAW OUT``).
TCL's README mentions building COCO-Object from COCO's instance annotations instead; the script it ships
(above) reads the stuff maps, and so does this converter: COCO's polygon masks are not decoded here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ovseg.data.benchmarks.classes import COCO_OBJECT_CLASSES, COCO_THING_IDS
from ovseg.data.benchmarks.coco_stuff import RAW_LAYOUT, SPLITS, coco_plan, map_raw, raw_map_lut
from ovseg.data.benchmarks.convert import Plan, converter
from ovseg.data.benchmarks.registry import SegBenchmark, find, folder_benchmark, identity_lut, register

OUTPUT_SUFFIX = "_instanceTrainIds.png"
CLASSES = ["background"] + COCO_OBJECT_CLASSES


@register("coco_object", layout="coco_stuff164k/{images,annotations}/<split>/ with *_instanceTrainIds.png labels",
          bg_thresh=0.9, aliases=("coco",), folder="coco_stuff164k")
def coco_object(root: Path, split: str | None, bg: float | None) -> SegBenchmark:
    return folder_benchmark("coco_object", find(root, "coco_stuff164k"), split or "val2017", OUTPUT_SUFFIX,
                            list(CLASSES), identity_lut(81), bg)


_LUT = raw_map_lut({**{raw: i for i, raw in enumerate(COCO_THING_IDS, start=1)},  # things -> 1..80
                    **dict.fromkeys(range(91, 182), 0), 255: 0})                   # stuff, unlabelled -> 0


def coco_stuff_to_object(raw: np.ndarray, where: str = "label") -> np.ndarray:
    """Map a COCO-Stuff raw label array (values 0..181, 255) to COCO-Object labels (0..80), uint8."""
    return map_raw(raw, _LUT, where)


@converter("coco_object", splits=SPLITS, default_splits=("val2017",), class_names=CLASSES, raw_layout=RAW_LAYOUT)
def plan_coco_object(raw: Path, out: Path, splits: tuple[str, ...]) -> Plan:
    return coco_plan("coco_object", raw, out, splits, OUTPUT_SUFFIX, coco_stuff_to_object)
