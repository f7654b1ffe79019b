"""Zero-shot segmentation benchmarks read from their usual (mmsegmentation) folder layouts.

OVSegmentor (paper §4, eval protocol inherited from GroupViT) reports mIoU on PASCAL VOC 2012,
PASCAL Context and COCO-Object, and the CVPR version adds ADE20K. This module reads those sets without
mmseg, with the class names the released code prompts with and its background thresholds
(reference/ovsegmentor.md §7), plus the synthetic world's val split, which uses the VOC layout so the
same reader code is exercised by the embedded default.

Every dataset returns ``(image uint8 HxWx3 RGB, label int64 HxW, sample_id)`` with 255 = ignore, and
labels already remapped to indices into ``class_names``:

* ``voc``        VOCdevkit/VOC2012, 21 classes (0 = background), 255 = boundary/ignore.
* ``voc20``      same files, background -> ignore and 1..20 -> 0..19 (the TCL "VOC20" variant).
* ``context60``  VOCdevkit/VOC2010 with mmseg-converted labels, 0 = background, 1..59 the classes.
* ``context59``  same files, background -> ignore, 1..59 -> 0..58.
* ``coco_object`` coco_stuff164k with GroupViT's ``*_instanceTrainIds.png`` (see ``convert_coco_object``).
* ``ade20k``     ADEChallengeData2016, 150 classes; 0 ("other") -> ignore, 1..150 -> 0..149
                 (mmseg's ``reduce_zero_label``).
* ``synthetic``  the synthetic world's val split: VOC layout + ``class_names.txt`` (background first).

Listed files are checked when the benchmark is built (a missing file names itself); image/label size
and label values are checked when a sample is read, and a violation raises ValueError naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ovseg.data.benchmark_classes import ADE20K_CLASSES, COCO_OBJECT_CLASSES, CONTEXT59_CLASSES, VOC20_CLASSES
from ovseg.data.shardio import label_array

IGNORE = 255
# Protocol background thresholds (OVS configs; GroupViT uses 0.95 for COCO-Object).
BG_THRESH = {"voc": 0.95, "context60": 0.35, "coco_object": 0.9, "synthetic": 0.95}
LUT_SIZE = 65536  # label PNGs are at most 16-bit
INVALID = -1


def _lut(valid: dict[int, int]) -> np.ndarray:
    """A lookup table raw label value -> output label; values not in ``valid`` map to INVALID."""
    lut = np.full(LUT_SIZE, INVALID, dtype=np.int64)
    for raw, out in valid.items():
        lut[raw] = out
    return lut


def _identity_lut(num_classes: int) -> np.ndarray:
    return _lut({**{i: i for i in range(num_classes)}, IGNORE: IGNORE})


def _drop_zero_lut(num_classes: int) -> np.ndarray:
    """0 -> ignore, 1..K -> 0..K-1 (255 stays ignore), as mmseg's reduce_zero_label."""
    return _lut({0: IGNORE, **{i + 1: i for i in range(num_classes)}, IGNORE: IGNORE})


@dataclass
class SegBenchmark:
    """A list of (sample_id, image path, label path) with the protocol's class list and label remap."""

    name: str
    class_names: list[str]
    items: list[tuple[str, Path, Path]]
    lut: np.ndarray
    bg_thresh: float | None = None

    @property
    def has_background(self) -> bool:
        return self.class_names[0] == "background"

    def __len__(self) -> int:
        return len(self.items)

    def image_path(self, i: int) -> Path:
        return self.items[i][1]

    def label_path(self, i: int) -> Path:
        return self.items[i][2]

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, str]:
        sample_id, image_path, label_path = self.items[i]
        with Image.open(image_path) as img:
            image = np.array(img.convert("RGB"), dtype=np.uint8)
        with Image.open(label_path) as img:
            try:
                raw = label_array(img)
            except ValueError as e:
                raise ValueError(f"{self.name}: label {label_path}: {e}") from None
        if raw.shape != image.shape[:2]:
            raise ValueError(f"{self.name}: label {label_path} is {raw.shape[1]}x{raw.shape[0]} (WxH) but image "
                             f"{image_path} is {image.shape[1]}x{image.shape[0]}")
        if raw.size and raw.max() >= LUT_SIZE:
            raise ValueError(f"{self.name}: label {label_path} has values above 16 bits (max {raw.max()})")
        label = self.lut[raw]
        if (label == INVALID).any():
            bad = np.unique(raw[label == INVALID])
            raise ValueError(f"{self.name}: label {label_path} has values {bad[:10].tolist()} outside the "
                             f"{len(self.class_names)}-class range of this benchmark")
        return image, label, sample_id


LAYOUTS = {
    "voc": "VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation/<split>.txt}",
    "voc20": "VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation/<split>.txt}",
    "context60": "VOCdevkit/VOC2010/{JPEGImages,SegmentationClassContext,ImageSets/SegmentationContext/<split>.txt}",
    "context59": "VOCdevkit/VOC2010/{JPEGImages,SegmentationClassContext,ImageSets/SegmentationContext/<split>.txt}",
    "coco_object": "coco_stuff164k/{images,annotations}/<split>/ with *_instanceTrainIds.png labels",
    "ade20k": "ADEChallengeData2016/{images,annotations}/<split>/",
    "synthetic": "class_names.txt + VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation}",
}


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: folder {path} does not exist (expected layout: {LAYOUTS[what]})")
    return path


def _split_items(name: str, split_file: Path, img_dir: Path, lbl_dir: Path, lbl_suffix: str = ".png"):
    """Items from an id list (VOC, Context): every listed id must have its JPEG and its label."""
    if not split_file.is_file():
        raise FileNotFoundError(f"{name}: split file {split_file} does not exist")
    ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"{name}: split file {split_file} lists no image ids")
    items = [(i, img_dir / f"{i}.jpg", lbl_dir / f"{i}{lbl_suffix}") for i in ids]
    _check_exist(name, items, f"listed in {split_file}")
    return items


def _folder_items(name: str, img_dir: Path, lbl_dir: Path, lbl_suffix: str):
    """Items from an image folder (COCO, ADE): each image's label is found by suffix, as mmseg does."""
    images = sorted(p for p in _require_dir(img_dir, name).iterdir() if p.suffix.lower() == ".jpg")
    _require_dir(lbl_dir, name)
    if not images:
        raise ValueError(f"{name}: no .jpg images in {img_dir}")
    items = [(p.stem, p, lbl_dir / f"{p.stem}{lbl_suffix}") for p in images]
    _check_exist(name, items, f"for the images in {img_dir}")
    return items


def _check_exist(name: str, items, context: str) -> None:
    missing = [p for _, img, lbl in items for p in (img, lbl) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{name}: {len(missing)} file(s) {context} are missing, e.g. {missing[0]}")


def _find(root: Path, *parts: str) -> Path:
    """Accept the dataset folder itself or a parent on the mmseg path (``data`` / ``VOCdevkit`` / ``VOC2012``)."""
    for i, part in enumerate(parts):
        if root.name == part:
            return root.joinpath(*parts[i + 1:])
    below = root.joinpath(*parts)
    return below if below.is_dir() else root


def _voc(root: Path, split: str, name: str, classes: list[str], lut: np.ndarray, bg: float | None) -> SegBenchmark:
    base = _require_dir(_find(root, "VOCdevkit", "VOC2012"), name)
    items = _split_items(name, base / "ImageSets" / "Segmentation" / f"{split}.txt",
                         _require_dir(base / "JPEGImages", name),
                         _require_dir(base / "SegmentationClass", name))
    return SegBenchmark(name, classes, items, lut, bg)


def _context(root: Path, split: str, name: str, classes: list[str], lut: np.ndarray, bg: float | None):
    base = _require_dir(_find(root, "VOCdevkit", "VOC2010"), name)
    items = _split_items(name, base / "ImageSets" / "SegmentationContext" / f"{split}.txt",
                         _require_dir(base / "JPEGImages", name), _require_dir(base / "SegmentationClassContext", name))
    return SegBenchmark(name, classes, items, lut, bg)


def _folder(name: str, base: Path, split: str, suffix: str, classes: list[str], lut: np.ndarray, bg: float | None):
    """COCO / ADE layout: ``base/images/<split>/*.jpg`` with labels ``base/annotations/<split>/<stem><suffix>``."""
    items = _folder_items(name, base / "images" / split, base / "annotations" / split, suffix)
    return SegBenchmark(name, classes, items, lut, bg)


def _synthetic(root: Path, split: str, bg: float | None) -> SegBenchmark:
    if (root / "val" / "class_names.txt").is_file():
        root = root / "val"  # the world's top folder was given
    names_file = root / "class_names.txt"
    if not names_file.is_file():
        raise FileNotFoundError(f"synthetic: {names_file} does not exist (expected a synthetic world's val folder)")
    classes = [c.strip() for c in names_file.read_text().splitlines() if c.strip()]
    if len(classes) < 2 or classes[0] != "background":
        raise ValueError(f"synthetic: {names_file} must list 'background' first and at least one class")
    return _voc(root, split, "synthetic", classes, _identity_lut(len(classes)), bg)


def _builders() -> dict[str, Callable[[Path, str | None, float | None], SegBenchmark]]:
    voc21 = ["background"] + VOC20_CLASSES
    ctx60 = ["background"] + CONTEXT59_CLASSES
    coco = ["background"] + COCO_OBJECT_CLASSES
    return {
        "voc": lambda r, s, bg: _voc(r, s or "val", "voc", voc21, _identity_lut(21), bg),
        "voc20": lambda r, s, bg: _voc(r, s or "val", "voc20", list(VOC20_CLASSES), _drop_zero_lut(20), None),
        "context60": lambda r, s, bg: _context(r, s or "val", "context60", ctx60, _identity_lut(60), bg),
        "context59": lambda r, s, bg: _context(r, s or "val", "context59", list(CONTEXT59_CLASSES),
                                               _drop_zero_lut(59), None),
        "coco_object": lambda r, s, bg: _folder("coco_object", _find(r, "coco_stuff164k"), s or "val2017",
                                                "_instanceTrainIds.png", coco, _identity_lut(81), bg),
        "ade20k": lambda r, s, bg: _folder("ade20k", _find(r, "ADEChallengeData2016"), s or "validation", ".png",
                                           list(ADE20K_CLASSES), _drop_zero_lut(150), None),
        "synthetic": lambda r, s, bg: _synthetic(r, s or "val", bg),
    }


BENCHMARKS = ("voc", "voc20", "context60", "context59", "coco_object", "ade20k", "synthetic")
ALIASES = {"voc21": "voc", "voc12": "voc", "context": "context60", "pascal_context": "context60",
           "coco": "coco_object", "ade": "ade20k"}


def build_benchmark(name: str, root: str | Path, split: str | None = None,
                    bg_thresh: float | None = None) -> SegBenchmark:
    """Build benchmark ``name`` from ``root`` (the dataset folder or a parent in the mmseg layout).

    ``bg_thresh`` overrides the protocol default for datasets with a background class.
    """
    key = ALIASES.get(name, name)
    if key not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{key}: data root {root} does not exist")
    bench = _builders()[key](root, split, bg_thresh if bg_thresh is not None else BG_THRESH.get(key))
    if not bench.has_background:
        bench.bg_thresh = None
    return bench
