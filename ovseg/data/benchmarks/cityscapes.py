"""Cityscapes (``cityscapes``): its reader and the labelIds -> trainIds converter.

The reader: mmseg's layout ``cityscapes/leftImg8bit/<split>/<city>/<id>_leftImg8bit.png`` (PNG images) with
labels ``cityscapes/gtFine/<split>/<city>/<id>_gtFine_labelTrainIds.png`` (open-mmlab/mmsegmentation
``mmseg/datasets/cityscapes.py``: ``img_suffix``/``seg_map_suffix``); 19 classes (trainIds 0..18,
``classes.CITYSCAPES_CLASSES``), 255 = void = ignore, no background class. TCL scores the 500 ``val``
images (``segmentation/configs/_base_/datasets/cityscapes.py``: ``leftImg8bit/val``, ``gtFine/val``).

The converter: the official download's ``*_gtFine_labelIds.png`` (ids 0..33) -> ``*_gtFine_labelTrainIds.png``
with cityscapesScripts' id -> trainId table (``cityscapesscripts/helpers/labels.py``; ``classes.
CITYSCAPES_TRAIN_IDS``: 19 ids become 0..18, every other id 255). mmseg draws the trainId image from the
``*_polygons.json`` instead (``tools/dataset_converters/cityscapes.py`` -> ``json2labelImg``); the labelIds PNG is
drawn from the same polygons in the same order, skipping the same id -1 (license plate), so the pixelwise
remap gives the same image. A value above 33 is a wrong input file: the sample is skipped and named.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ovseg.data.benchmarks.classes import CITYSCAPES_CLASSES, CITYSCAPES_NUM_IDS, CITYSCAPES_TRAIN_IDS
from ovseg.data.benchmarks.convert import Plan, Sample, converter, out_folder, require
from ovseg.data.benchmarks.registry import SegBenchmark, find, folder_benchmark, identity_lut, register
from ovseg.data.codecs import IGNORE, read_label_file

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelTrainIds.png"
RAW_SUFFIX = "_gtFine_labelIds.png"
RAW_LAYOUT = "cityscapes/{leftImg8bit/<split>/<city>/*_leftImg8bit.png, gtFine/<split>/<city>/*_gtFine_labelIds.png}"


@register("cityscapes", folder="cityscapes",
          layout="cityscapes/{leftImg8bit,gtFine}/<split>/<city>/ with *_gtFine_labelTrainIds.png labels")
def cityscapes(root: Path, split: str | None, bg: float | None) -> SegBenchmark:
    return folder_benchmark("cityscapes", find(root, "cityscapes"), split or "val", LABEL_SUFFIX,
                            list(CITYSCAPES_CLASSES), identity_lut(19), None, images="leftImg8bit",
                            labels="gtFine", img_suffix=IMAGE_SUFFIX, recursive=True)


_LUT = np.full(CITYSCAPES_NUM_IDS, IGNORE, dtype=np.int64)
for _id, _train_id in CITYSCAPES_TRAIN_IDS.items():
    _LUT[_id] = _train_id


def label_ids_to_train_ids(raw: np.ndarray, where: str = "label") -> np.ndarray:
    """A Cityscapes labelIds map (0..33) -> trainIds (0..18, 255 = void), uint8."""
    raw = np.asarray(raw)
    bad = (raw < 0) | (raw >= CITYSCAPES_NUM_IDS)
    if bad.any():
        raise ValueError(f"{where}: values {np.unique(raw[bad])[:10].tolist()} are not Cityscapes label ids "
                         f"(0..{CITYSCAPES_NUM_IDS - 1})")
    return _LUT[raw.astype(np.int64)].astype(np.uint8)


@converter("cityscapes", splits=("val", "train"), default_splits=("val",), class_names=CITYSCAPES_CLASSES,
           raw_layout=RAW_LAYOUT)
def plan_cityscapes(raw: Path, out: Path, splits: tuple[str, ...]) -> Plan:
    base, out_base = find(raw, "cityscapes"), out_folder(out, "cityscapes")
    samples = []
    for split in splits:
        gt_dir = require(base / "gtFine" / split, "cityscapes", RAW_LAYOUT)
        img_dir = require(base / "leftImg8bit" / split, "cityscapes", RAW_LAYOUT)
        sources = sorted(gt_dir.glob(f"*/*{RAW_SUFFIX}"))
        if not sources:
            raise ValueError(f"cityscapes: no <city>/*{RAW_SUFFIX} files in {gt_dir} (expected layout: {RAW_LAYOUT})")
        for src in sources:
            city, sample_id = src.parent.name, src.name[:-len(RAW_SUFFIX)]
            samples.append(Sample(split, src, out_base / "gtFine" / split / city / f"{sample_id}{LABEL_SUFFIX}",
                                  lambda src=src: label_ids_to_train_ids(read_label_file(src), str(src)),
                                  img_dir / city / f"{sample_id}{IMAGE_SUFFIX}",
                                  out_base / "leftImg8bit" / split / city / f"{sample_id}{IMAGE_SUFFIX}"))
    return Plan(samples)
