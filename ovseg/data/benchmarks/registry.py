"""The benchmark registry: the sample interface every benchmark returns, and ``build_benchmark``.

Every benchmark returns ``(image uint8 HxWx3 RGB, label int64 HxW, sample_id)`` with 255 = ignore and labels
already remapped to indices into ``class_names``. Listed files are checked when the benchmark is built (a
missing file names itself); a file that does not decode (or whose header declares too many pixels:
``codecs.MAX_PIXELS``), image/label size and label values are checked when a sample is read, and a
violation raises ValueError naming the file, which ``ovseg.eval.evaluate`` skips and counts.

A family module (voc.py, context.py, coco_object.py, coco_stuff.py, cityscapes.py, ade.py) registers each of its
benchmarks with :func:`register` (name, aliases, folder layout, usual folder under a data root, protocol
background threshold); the package's
``__init__`` imports the family modules, so every benchmark is registered whatever module is imported first.
The helpers here (label lookup tables, id-list and folder layouts, mmseg path search) are shared by them.
``SUITES`` names benchmark tables (``eight``: TCL's/SCLIP's); ``suite_specs`` spells one out for ``eval.datasets``.
"""


from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ovseg.data.codecs import IGNORE, read_label_file, read_rgb_file

LUT_SIZE = 65536  # label PNGs are at most 16-bit
INVALID = -1


def label_lut(valid: dict[int, int]) -> np.ndarray:
    """A lookup table raw label value -> output label; values not in ``valid`` map to INVALID."""
    lut = np.full(LUT_SIZE, INVALID, dtype=np.int64)
    for raw, out in valid.items():
        lut[raw] = out
    return lut


def identity_lut(num_classes: int) -> np.ndarray:
    return label_lut({**{i: i for i in range(num_classes)}, IGNORE: IGNORE})


def drop_zero_lut(num_classes: int) -> np.ndarray:
    """0 -> ignore, 1..K -> 0..K-1 (255 stays ignore), as mmseg's reduce_zero_label."""
    return label_lut({0: IGNORE, **{i + 1: i for i in range(num_classes)}, IGNORE: IGNORE})


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
        try:
            image = read_rgb_file(image_path)
        except ValueError as e:
            raise ValueError(f"{self.name}: image {image_path}: {e}") from None
        try:
            raw = read_label_file(label_path)
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


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: folder {path} does not exist (expected layout: {REGISTRY[what].layout})")
    return path


def split_items(name: str, split_file: Path, img_dir: Path, lbl_dir: Path, lbl_suffix: str = ".png"):
    """Items from an id list (VOC, Context): every listed id must have its JPEG and its label."""
    if not split_file.is_file():
        raise FileNotFoundError(f"{name}: split file {split_file} does not exist")
    ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"{name}: split file {split_file} lists no image ids")
    items = [(i, img_dir / f"{i}.jpg", lbl_dir / f"{i}{lbl_suffix}") for i in ids]
    _check_exist(name, items, f"listed in {split_file}")
    return items


def _folder_items(name: str, img_dir: Path, lbl_dir: Path, lbl_suffix: str, img_suffix: str = ".jpg",
                  recursive: bool = False):
    """Items from an image folder (COCO, ADE, Cityscapes): each image's label is found by suffix, as mmseg does.

    An image is a file whose name ends with ``img_suffix`` (any case); its id is the name without it, and its
    label is ``<id><lbl_suffix>`` in the same relative folder under ``lbl_dir``. ``recursive``: images sit in
    subfolders (Cityscapes' ``<split>/<city>/``), where two images with one id are an error.
    """
    pattern = "**/*" if recursive else "*"
    suffix = img_suffix.lower()
    images = sorted(p for p in require_dir(img_dir, name).glob(pattern)
                    if p.name.lower().endswith(suffix) and len(p.name) > len(suffix) and p.is_file())
    require_dir(lbl_dir, name)
    if not images:
        raise ValueError(f"{name}: no *{img_suffix} images in {img_dir}")
    items, seen = [], {}
    for p in images:
        sample_id = p.name[:-len(suffix)]
        if sample_id in seen:
            raise ValueError(f"{name}: images {seen[sample_id]} and {p} share the id {sample_id!r}")
        seen[sample_id] = p
        items.append((sample_id, p, lbl_dir / p.parent.relative_to(img_dir) / f"{sample_id}{lbl_suffix}"))
    _check_exist(name, items, f"for the images in {img_dir}")
    return items


def rename_classes(bench: SegBenchmark, mapping: dict[str, str], name: str | None = None,
                   source: str = "the mapping") -> SegBenchmark:
    """The same images and labels scored under other class names (open-vocabulary evaluation).

    ``mapping``: canonical name -> the name to prompt with; classes it leaves out keep theirs, "background"
    (assigned by threshold, never prompted) cannot be renamed, and a key that names no class is an error.
    """
    unknown = sorted(set(mapping) - set(bench.class_names))
    if unknown:
        raise ValueError(f"{source}: {bench.name} has no class(es) {unknown}; its classes are {bench.class_names}")
    if bench.has_background and mapping.get("background", "background") != "background":
        raise ValueError(f"{source}: 'background' is assigned by threshold, not by name: it cannot be renamed")
    bad = [k for k, v in mapping.items() if not isinstance(v, str) or not v.strip()]
    if bad:
        raise ValueError(f"{source}: the new name of {bad} must be a non-empty string")
    names = [mapping.get(c, c).strip() for c in bench.class_names]
    if len(set(names)) != len(names):
        raise ValueError(f"{source}: two classes of {bench.name} would share a name: {names}")
    return dataclasses.replace(bench, name=name or bench.name, class_names=names)


def load_class_names(path: str | Path, bench: SegBenchmark) -> dict[str, str]:
    """A class-name file for ``bench``: a YAML/JSON mapping {canonical: new name}, or a text file with one name
    per line in the benchmark's class order (background line included when it has one)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exn:
        raise ValueError(f"class names {path}: unreadable ({exn})") from None
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        import yaml

        try:
            mapping = yaml.safe_load(text)
        except yaml.YAMLError as exn:
            raise ValueError(f"class names {path}: not valid YAML/JSON ({exn})") from None
        if not isinstance(mapping, dict):
            raise ValueError(f"class names {path}: expected a mapping canonical name -> new name")
        return {str(k): v for k, v in mapping.items()}
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) != len(bench.class_names):
        raise ValueError(f"class names {path}: {len(lines)} names for the {len(bench.class_names)} classes of "
                         f"{bench.name} ({bench.class_names})")
    return dict(zip(bench.class_names, lines))


def _check_exist(name: str, items, context: str) -> None:
    missing = [p for _, img, lbl in items for p in (img, lbl) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{name}: {len(missing)} file(s) {context} are missing, e.g. {missing[0]}")


def devkit_benchmark(root: Path, name: str, year: str, sets: str, labels: str, split: str, classes: list[str],
                     lut: np.ndarray, bg: float | None) -> SegBenchmark:
    """A benchmark in the VOCdevkit layout: ``VOCdevkit/<year>/{JPEGImages, <labels>, ImageSets/<sets>/<split>.txt}``
    (VOC, the Context conversion, the synthetic world's val split)."""
    base = require_dir(find(root, "VOCdevkit", year), name)
    items = split_items(name, base / "ImageSets" / sets / f"{split}.txt", require_dir(base / "JPEGImages", name),
                        require_dir(base / labels, name))
    return SegBenchmark(name, classes, items, lut, bg)


def find(root: Path, *parts: str) -> Path:
    """Accept the dataset folder itself or a parent on the mmseg path (``data`` / ``VOCdevkit`` / ``VOC2012``)."""
    for i, part in enumerate(parts):
        if root.name == part:
            return root.joinpath(*parts[i + 1:])
    below = root.joinpath(*parts)
    return below if below.is_dir() else root


def folder_benchmark(name: str, base: Path, split: str, suffix: str, classes: list[str], lut: np.ndarray,
                     bg: float | None, *, images: str = "images", labels: str = "annotations",
                     img_suffix: str = ".jpg", recursive: bool = False) -> SegBenchmark:
    """COCO / ADE layout: ``base/images/<split>/*.jpg`` with labels ``base/annotations/<split>/<stem><suffix>``;
    other folder names, image suffixes and nested folders (Cityscapes) through the keywords."""
    items = _folder_items(name, base / images / split, base / labels / split, suffix, img_suffix, recursive)
    return SegBenchmark(name, classes, items, lut, bg)


# ------------------------------------------------------------------ the registry

Builder = Callable[[Path, "str | None", "float | None"], SegBenchmark]


@dataclass(frozen=True)
class Entry:
    build: Builder          # (root, split or None for the default, bg_thresh) -> SegBenchmark
    layout: str             # the expected folder layout, shown when a folder is missing
    bg_thresh: float | None  # the protocol's background threshold (None: no background class)
    folder: str | None = None  # its usual folder under a common data root (mmseg's ``data/`` layout)


REGISTRY: dict[str, Entry] = {}   # benchmark name -> entry, in registration order
ALIASES: dict[str, str] = {}      # other spellings -> benchmark name
BG_THRESH: dict[str, float] = {}  # protocol background thresholds (OVS configs; GroupViT uses 0.95 for COCO-Object)

# Named suites: the eight-benchmark table of TCL, SCLIP and the papers after them (with background: VOC21,
# Context60, COCO-Object; without: VOC20, Context59, COCO-Stuff-171, Cityscapes, ADE20K-150), in their order.
SUITES: dict[str, tuple[str, ...]] = {
    "eight": ("voc", "context60", "coco_object", "voc20", "context59", "coco_stuff", "cityscapes", "ade20k"),
}


def register(name: str, *, layout: str, bg_thresh: float | None = None, aliases: tuple[str, ...] = (),
             folder: str | None = None):
    """Decorator: make ``build(root, split, bg_thresh)`` the reader of benchmark ``name``; ``folder`` is where it
    usually lies under a common data root (``suite_specs``)."""
    def deco(build: Builder) -> Builder:
        if name in REGISTRY or name in ALIASES:
            raise ValueError(f"benchmark {name!r} is registered twice")
        REGISTRY[name] = Entry(build, layout, bg_thresh, folder)
        if bg_thresh is not None:
            BG_THRESH[name] = bg_thresh
        ALIASES.update({alias: name for alias in aliases})
        return build
    return deco


def build_benchmark(name: str, root: str | Path, split: str | None = None,
                    bg_thresh: float | None = None) -> SegBenchmark:
    """Build benchmark ``name`` from ``root`` (the dataset folder or a parent in the mmseg layout).

    ``bg_thresh`` overrides the protocol default for datasets with a background class.
    """
    key = ALIASES.get(name, name)
    if key not in REGISTRY:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {', '.join(REGISTRY)}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{key}: data root {root} does not exist")
    bench = REGISTRY[key].build(root, split, bg_thresh if bg_thresh is not None else BG_THRESH.get(key))
    if not bench.has_background:
        bench.bg_thresh = None
    return bench


def suite_names(suite: str) -> tuple[str, ...]:
    """The benchmark names of suite ``suite`` (``SUITES``)."""
    if suite not in SUITES:
        raise ValueError(f"unknown benchmark suite {suite!r}; choose one of {', '.join(SUITES)}")
    return SUITES[suite]


def suite_specs(suite: str, root: str | Path) -> list[str]:
    """``eval.datasets`` entries ``"name=path"`` for every benchmark of ``suite``, each in its usual folder under
    ``root`` (``VOCdevkit/VOC2012``, ``VOCdevkit/VOC2010``, ``coco_stuff164k``, ``cityscapes``,
    ``ade/ADEChallengeData2016``, as mmseg's and TCL's configs place them under ``data/``)."""
    specs = []
    for name in suite_names(suite):
        folder = REGISTRY[name].folder
        assert folder is not None, f"benchmark {name} of suite {suite} has no usual folder"
        specs.append(f"{name}={Path(root) / folder}")
    return specs
