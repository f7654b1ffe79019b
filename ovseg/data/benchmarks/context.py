"""PASCAL Context (``context60``, ``context59``) in mmseg's converted layout, and the converter that makes it.

* ``context60``  VOCdevkit/VOC2010 with mmseg-converted labels, 0 = background, 1..59 the classes.
* ``context59``  same files, background -> ignore, 1..59 -> 0..58.

The converter (``prepare_benchmark.py context60 RAW OUT``; ``context59`` reads the same labels), as
mmsegmentation's ``tools/dataset_converters/pascal_context.py`` does it with the Detail API:

* ``trainval_merged.json`` (PASCAL-in-Detail format: ``images`` with ``image_id``, ``file_name``, ``height``,
  ``width``, ``phase``; ``annos_segmentation`` with ``image_id``, ``category_id`` in the 459-class ids and an
  RLE ``segmentation``) gives each image its class mask: start from 0 and paint every annotation of the image,
  in file order, with its category id, later ones over earlier ones (ccvl/detail-api ``Detail.getMask`` with
  no category: its class-mask branch);
* the 60 ids of ``classes.CONTEXT_459_IDS`` become 0..59 by rank (mmseg's ``np.digitize`` on the sorted
  ``_mapping``); mmseg asserts that no other id occurs, so an image holding one is skipped here, named;
* labels go to ``VOC2010/SegmentationClassContext/<id>.png`` and each split's sorted ids to
  ``VOC2010/ImageSets/SegmentationContext/<split>.txt``; the split is the image's Detail ``phase``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ovseg.data.benchmarks.classes import CONTEXT59_CLASSES, CONTEXT_459_IDS
from ovseg.data.benchmarks.convert import Plan, Sample, converter, out_folder, require
from ovseg.data.benchmarks.registry import SegBenchmark, devkit_benchmark, drop_zero_lut, find, identity_lut, register
from ovseg.data.benchmarks.rle import decode_rle

FOLDER = "VOCdevkit/VOC2010"
LAYOUT = "VOCdevkit/VOC2010/{JPEGImages,SegmentationClassContext,ImageSets/SegmentationContext/<split>.txt}"
JSON_NAME = "trainval_merged.json"
RAW_LAYOUT = f"VOCdevkit/VOC2010/{{JPEGImages/*.jpg, {JSON_NAME}}} (or {JSON_NAME} beside VOCdevkit or VOC2010)"


def _context(root: Path, split: str, name: str, classes: list[str], lut: np.ndarray, bg: float | None):
    return devkit_benchmark(root, name, "VOC2010", "SegmentationContext", "SegmentationClassContext", split, classes,
                            lut, bg)


@register("context60", layout=LAYOUT, bg_thresh=0.35, aliases=("context", "pascal_context"), folder=FOLDER)
def context60(root: Path, split: str | None, bg: float | None) -> SegBenchmark:
    return _context(root, split or "val", "context60", ["background"] + CONTEXT59_CLASSES, identity_lut(60), bg)


@register("context59", layout=LAYOUT, folder=FOLDER)
def context59(root: Path, split: str | None, bg: float | None) -> SegBenchmark:
    return _context(root, split or "val", "context59", list(CONTEXT59_CLASSES), drop_zero_lut(59), None)


_LUT = np.full(max(CONTEXT_459_IDS) + 1, -1, dtype=np.int64)
_LUT[CONTEXT_459_IDS] = np.arange(len(CONTEXT_459_IDS))


def context_labels(mask: np.ndarray, where: str = "mask") -> np.ndarray:
    """A 459-class-id mask -> 60-class labels (0 background, 1..59), uint8; any other id is a ValueError."""
    mask = np.asarray(mask, dtype=np.int64)
    inside = (mask >= 0) & (mask < _LUT.size)
    out = np.where(inside, _LUT[np.clip(mask, 0, _LUT.size - 1)], -1)
    if (out < 0).any():
        bad = np.unique(mask[out < 0])
        raise ValueError(f"{where}: category ids {bad[:10].tolist()} are not background or one of the 59 PASCAL "
                         "Context classes (mmseg's converter accepts only these)")
    return out.astype(np.uint8)


def paint_class_mask(height: int, width: int, annotations: list[dict], where: str) -> np.ndarray:
    """The Detail API's class mask: 0, then each annotation's pixels set to its category id, in order."""
    mask = np.zeros((height, width), dtype=np.int64)
    for k, ann in enumerate(annotations):
        at = f"{where}: annotation {ann.get('id', k)}"
        category = ann.get("category_id")
        if not isinstance(category, int) or isinstance(category, bool):
            raise ValueError(f"{at}: category_id must be an integer, got {category!r}")
        m = decode_rle(ann.get("segmentation"), at)
        if m.shape != (height, width):
            raise ValueError(f"{at}: its mask is {m.shape[1]}x{m.shape[0]} (WxH) but the image is {width}x{height}")
        mask[m] = category
    return mask


def _find_json(raw: Path, base: Path) -> Path:
    for path in (base / JSON_NAME, base.parent / JSON_NAME, raw / JSON_NAME):
        if path.is_file():
            return path
    raise FileNotFoundError(f"context: {JSON_NAME} is in none of {base}, {base.parent}, {raw} "
                            f"(expected layout: {RAW_LAYOUT})")


def _load_detail(path: Path) -> tuple[list[dict], dict[int, list[dict]]]:
    """The images and, per image id, its segmentation annotations in file order; a wrong file is a ValueError."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exn:
        raise ValueError(f"context: {path} is not readable JSON ({exn})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annos_segmentation"), list):
        raise ValueError(f"context: {path} is not in the Detail format (no 'images' and 'annos_segmentation' lists)")
    keys = ("image_id", "file_name", "height", "width", "phase")
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or any(k not in img for k in keys):
            raise ValueError(f"context: {path}: images[{i}] lacks one of {keys}")
    by_image: dict[int, list[dict]] = {}
    for i, ann in enumerate(data["annos_segmentation"]):
        if not isinstance(ann, dict) or "image_id" not in ann:
            raise ValueError(f"context: {path}: annos_segmentation[{i}] has no image_id")
        by_image.setdefault(ann["image_id"], []).append(ann)
    return data["images"], by_image


@converter("context60", "context59", "context", splits=("val", "train"), default_splits=("val",),
           class_names=["background"] + CONTEXT59_CLASSES, raw_layout=RAW_LAYOUT)
def plan_context(raw: Path, out: Path, splits: tuple[str, ...]) -> Plan:
    base, out_base = find(raw, "VOCdevkit", "VOC2010"), out_folder(out, "VOCdevkit", "VOC2010")
    img_dir = require(base / "JPEGImages", "context", RAW_LAYOUT)
    json_path = _find_json(raw, base)
    images, by_image = _load_detail(json_path)
    samples = []
    for img in images:
        if img["phase"] not in splits:
            continue
        file_name = Path(str(img["file_name"])).name
        sample_id = Path(file_name).stem
        where = f"{json_path} image {file_name}"

        def make(img=img, where=where):
            height, width = img["height"], img["width"]
            if not all(isinstance(v, int) and v > 0 for v in (height, width)):
                raise ValueError(f"{where}: height and width must be positive integers")
            return context_labels(paint_class_mask(height, width, by_image.get(img["image_id"], []), where), where)

        samples.append(Sample(img["phase"], Path(f"{json_path}#{file_name}"),
                              out_base / "SegmentationClassContext" / f"{sample_id}.png", make,
                              img_dir / file_name, out_base / "JPEGImages" / file_name))
    missing = [s for s in splits if not any(x.split == s for x in samples)]
    if missing:
        raise ValueError(f"context: {json_path} has no image of phase {missing}")
    samples.sort(key=lambda s: (splits.index(s.split), s.label_dest.name))
    return Plan(samples, {s: out_base / "ImageSets" / "SegmentationContext" / f"{s}.txt" for s in splits})
