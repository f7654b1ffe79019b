"""COCO-Stuff-164k (``coco_stuff``): its reader, its converter, and the raw layout COCO-Object is derived from too.

The reader: mmseg's layout ``coco_stuff164k/{images,annotations}/val2017/`` with ``*_labelTrainIds.png`` labels,
171 classes (80 things + 91 stuff, ``classes.COCO_STUFF_CLASSES``), 255 = unlabelled = ignore, no background
class (the TCL/SCLIP protocol scores it without one: TCL ``segmentation/configs/_base_/datasets/stuff.py``).

The converter, raw COCO-Stuff maps -> trainIds, as mmsegmentation's
``tools/dataset_converters/coco_stuff164k.py`` defines it: the raw ``stuffthingmaps`` PNGs hold 0-based
COCO ids (things 0..90 with 11 ids COCO never assigned, stuff 91..181) and 255 for unlabelled; the 171 used
ids become trainIds 0..170 in id order and 255 stays 255. mmseg leaves any other value unchanged, which would
silently label a pixel with another class; such a file is skipped here, named and counted.

Raw layout (mmseg's dataset_prepare: ``images/`` from COCO's train2017/val2017 zips, ``annotations/`` from
``stuffthingmaps_trainval2017.zip``): ``coco_stuff164k/images/<split>/<id>.jpg`` and
``coco_stuff164k/annotations/<split>/<id>.png``. Files whose name holds ``TrainIds`` are outputs, never inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ovseg.data.benchmarks.classes import COCO_STUFF_CLASSES, COCO_STUFF_IDS
from ovseg.data.benchmarks.convert import Plan, Sample, converter, out_folder, require
from ovseg.data.benchmarks.registry import SegBenchmark, find, folder_benchmark, identity_lut, register
from ovseg.data.codecs import IGNORE, read_label_file

OUTPUT_SUFFIX = "_labelTrainIds.png"
RAW_LAYOUT = "coco_stuff164k/{images/<split>/*.jpg, annotations/<split>/*.png (raw stuffthingmaps)}"
SPLITS = ("val2017", "train2017")


@register("coco_stuff", layout="coco_stuff164k/{images,annotations}/<split>/ with *_labelTrainIds.png labels",
          aliases=("coco_stuff164k", "coco_stuff171"), folder="coco_stuff164k")
def coco_stuff(root: Path, split: str | None, bg: float | None) -> SegBenchmark:
    return folder_benchmark("coco_stuff", find(root, "coco_stuff164k"), split or "val2017", OUTPUT_SUFFIX,
                            list(COCO_STUFF_CLASSES), identity_lut(171), None)


def raw_map_lut(valid: dict[int, int]) -> np.ndarray:
    """An 8-bit lookup table raw COCO-Stuff value -> output label; -1 for a value no COCO-Stuff map holds."""
    lut = np.full(256, -1, dtype=np.int64)
    for raw, label in valid.items():
        lut[raw] = label
    return lut


_TRAIN_ID_LUT = raw_map_lut({**{raw: i for i, raw in enumerate(COCO_STUFF_IDS)}, IGNORE: IGNORE})


def map_raw(raw: np.ndarray, lut: np.ndarray, where: str) -> np.ndarray:
    """Apply a raw-map lookup table; a value outside it is a ValueError naming ``where`` and the values."""
    raw = np.asarray(raw)
    if raw.size and (raw.min() < 0 or raw.max() > 255):
        raise ValueError(f"{where}: COCO-Stuff labels are 8-bit, got values {raw.min()}..{raw.max()}")
    out = lut[raw.astype(np.int64)]
    if (out < 0).any():
        bad = np.unique(raw[out < 0])
        raise ValueError(f"{where}: values {bad[:10].tolist()} are not COCO-Stuff class ids (0..181 minus the 11 "
                         "unused thing ids, or 255)")
    return out.astype(np.uint8)


def coco_stuff_to_train_ids(raw: np.ndarray, where: str = "label") -> np.ndarray:
    """Raw COCO-Stuff map (0-based ids, 255) -> 171-class trainIds (0..170, 255), uint8."""
    return map_raw(raw, _TRAIN_ID_LUT, where)


def coco_plan(name: str, raw: Path, out: Path, splits: tuple[str, ...], suffix: str,
              mapping: Callable[[np.ndarray, str], np.ndarray]) -> Plan:
    """Every raw map of ``splits`` -> ``<id><suffix>`` by ``mapping``, in the coco_stuff164k layout under OUT."""
    base, out_base = find(raw, "coco_stuff164k"), out_folder(out, "coco_stuff164k")
    samples = []
    for split in splits:
        lbl_dir = require(base / "annotations" / split, name, RAW_LAYOUT)
        img_dir = require(base / "images" / split, name, RAW_LAYOUT)
        sources = sorted(p for p in lbl_dir.glob("*.png") if "TrainIds" not in p.name)
        if not sources:
            raise ValueError(f"{name}: no raw COCO-Stuff label PNGs in {lbl_dir} (expected layout: {RAW_LAYOUT})")
        for src in sources:
            samples.append(Sample(split, src, out_base / "annotations" / split / f"{src.stem}{suffix}",
                                  lambda src=src: mapping(read_label_file(src), str(src)),
                                  img_dir / f"{src.stem}.jpg", out_base / "images" / split / f"{src.stem}.jpg"))
    return Plan(samples)


@converter("coco_stuff", splits=SPLITS, default_splits=("val2017",), class_names=COCO_STUFF_CLASSES,
           raw_layout=RAW_LAYOUT)
def plan_coco_stuff(raw: Path, out: Path, splits: tuple[str, ...]) -> Plan:
    return coco_plan("coco_stuff", raw, out, splits, OUTPUT_SUFFIX, coco_stuff_to_train_ids)
