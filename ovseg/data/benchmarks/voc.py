"""PASCAL VOC 2012 (``voc``, ``voc20``) and the synthetic world's val split, which uses the VOC layout.

* ``voc``        VOCdevkit/VOC2012, 21 classes (0 = background), 255 = boundary/ignore.
* ``voc20``      same files, background -> ignore and 1..20 -> 0..19 (the TCL "VOC20" variant).
* ``synthetic``  the synthetic world's val split: VOC layout + ``class_names.txt`` (background first), so
                 the embedded default exercises the same reader code as VOC.
* ``synthetic-unseen``  the same images and labels, each class named by a word no caption of the world uses
                 (the manifest's ``unseen_names``; worlds written before it carried them: the scene table).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ovseg.data.benchmarks.classes import VOC20_CLASSES
from ovseg.data.benchmarks.registry import (
    SegBenchmark,
    devkit_benchmark,
    drop_zero_lut,
    identity_lut,
    register,
    rename_classes,
)

VOC_LAYOUT = "VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation/<split>.txt}"


def voc_layout(root: Path, split: str, name: str, classes: list[str], lut: np.ndarray,
               bg: float | None) -> SegBenchmark:
    return devkit_benchmark(root, name, "VOC2012", "Segmentation", "SegmentationClass", split, classes, lut, bg)


@register("voc", layout=VOC_LAYOUT, bg_thresh=0.95, aliases=("voc21", "voc12"), folder="VOCdevkit/VOC2012")
def voc(root: Path, split: str | None, bg: float | None) -> SegBenchmark:
    return voc_layout(root, split or "val", "voc", ["background"] + VOC20_CLASSES, identity_lut(21), bg)


@register("voc20", layout=VOC_LAYOUT, folder="VOCdevkit/VOC2012")
def voc20(root: Path, split: str | None, bg: float | None) -> SegBenchmark:
    return voc_layout(root, split or "val", "voc20", list(VOC20_CLASSES), drop_zero_lut(20), None)


@register("synthetic", bg_thresh=0.95,
          layout="class_names.txt + VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation}")
def synthetic(root: Path, split: str | None, bg: float | None) -> SegBenchmark:
    if (root / "val" / "class_names.txt").is_file():
        root = root / "val"  # the world's top folder was given
    names_file = root / "class_names.txt"
    if not names_file.is_file():
        raise FileNotFoundError(f"synthetic: {names_file} does not exist (expected a synthetic world's val folder)")
    classes = [c.strip() for c in names_file.read_text().splitlines() if c.strip()]
    if len(classes) < 2 or classes[0] != "background":
        raise ValueError(f"synthetic: {names_file} must list 'background' first and at least one class")
    return voc_layout(root, split or "val", "synthetic", classes, identity_lut(len(classes)), bg)


@register("synthetic-unseen", bg_thresh=0.95,
          layout="a synthetic world's val folder (its manifest.json one level up names the unseen words)")
def synthetic_unseen(root: Path, split: str | None, bg: float | None) -> SegBenchmark:
    from ovseg.data.synthetic.scene import UNSEEN_NAMES

    bench = synthetic(root, split, bg)
    val = root / "val" if (root / "val" / "class_names.txt").is_file() else root
    manifest = val.parent / "manifest.json"
    names = dict(UNSEEN_NAMES)
    if manifest.is_file():
        try:
            names = json.loads(manifest.read_text()).get("unseen_names") or names
        except (ValueError, OSError) as exn:
            raise ValueError(f"synthetic-unseen: {manifest} is unreadable: {exn}") from None
    missing = [c for c in bench.class_names[1:] if c not in names]
    if missing:
        raise ValueError(f"synthetic-unseen: no unseen name for class(es) {missing} (manifest {manifest})")
    return rename_classes(bench, names, "synthetic-unseen")
