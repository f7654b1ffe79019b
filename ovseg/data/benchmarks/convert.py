"""Raw benchmark downloads -> the mmseg layouts the readers expect: one engine, one converter per family.

``python platform/prepare_benchmark.py NAME RAW OUT`` calls :func:`prepare_benchmark`. A family module
registers its converter with :func:`converter`: a planner that checks RAW's layout and lists the samples,
each a label to compute (the family's id mapping, citing its source) and the image it belongs to. The engine
holds the rules every converter shares:

* OUT is a data root in the reader's layout: the labels are written there and each image is hard-linked
  beside them (copied where a link is impossible); with OUT = RAW the labels go next to the raw files, as
  mmseg's converters do, and the images stay where they are.
* Every file is written atomically (a temporary sibling, then a rename). An existing output is kept, so an
  interrupted conversion resumes; ``overwrite`` replaces labels and id lists, never an existing image.
  Nothing but the engine's own temporary files is ever deleted.
* A bad sample (an unreadable label, a value outside the source's id table, a missing image or one of
  another size, a malformed mask) is skipped, named with its reason on stderr, and counted.
* The summary (counts per split, the classes each written label holds, every skipped sample) is returned
  and written as ``OUT/summary.json``; a ``summary.json`` there that this command did not write is kept
  unless ``overwrite``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ovseg.data.codecs import IGNORE, encode_label_png
from ovseg.data.shardio import atomic_write_bytes

SUMMARY_FORMAT = "ovseg-prepare-benchmark/1"


@dataclass
class Sample:
    split: str
    source: Path                        # the raw file a skip names
    label_dest: Path
    make_label: Callable[[], np.ndarray]  # raises ValueError (with the reason) for a bad sample
    image_src: Path
    image_dest: Path


@dataclass
class Plan:
    samples: list[Sample]
    id_lists: dict[str, Path] = field(default_factory=dict)  # split -> id list to write (VOCdevkit layouts)


@dataclass(frozen=True)
class Converter:
    plan: Callable[[Path, Path, tuple[str, ...]], Plan]  # (raw, out, splits) -> Plan; layout errors raise
    splits: tuple[str, ...]
    default_splits: tuple[str, ...]
    class_names: tuple[str, ...]  # label value -> name, for the summary
    raw_layout: str


CONVERTERS: dict[str, Converter] = {}


def converter(*names: str, splits: tuple[str, ...], default_splits: tuple[str, ...], class_names, raw_layout: str):
    """Decorator: make ``plan(raw, out, splits)`` the converter of the benchmarks ``names``."""
    def deco(plan):
        conv = Converter(plan, splits, default_splits, tuple(class_names), raw_layout)
        for name in names:
            if name in CONVERTERS:
                raise ValueError(f"converter {name!r} is registered twice")
            CONVERTERS[name] = conv
        return plan
    return deco


def out_folder(out: Path, *parts: str) -> Path:
    """Where a dataset folder lies under OUT: OUT itself when it is named like one of ``parts``, else below."""
    for i, part in enumerate(parts):
        if out.name == part:
            return out.joinpath(*parts[i + 1:])
    return out.joinpath(*parts)


def require(path: Path, name: str, layout: str, what: str = "folder") -> Path:
    ok = path.is_dir() if what == "folder" else path.is_file()
    if not ok:
        raise FileNotFoundError(f"{name}: raw {what} {path} does not exist (expected layout: {layout})")
    return path


def place_image(src: Path, dest: Path) -> None:
    """Hard-link ``src`` at ``dest`` (a copy where linking fails), through a temporary sibling and a rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def _image_problem(sample: Sample, shape: tuple[int, ...] | None) -> str | None:
    if not sample.image_src.is_file():
        return f"its image {sample.image_src} does not exist"
    if shape is None:
        return None
    try:
        with Image.open(sample.image_src) as img:
            width, height = img.size
    except Exception as exn:  # noqa: BLE001  PIL raises many types for a corrupt header
        return f"its image {sample.image_src} is not readable ({exn.__class__.__name__})"
    if (height, width) != tuple(shape):
        return f"the label is {shape[1]}x{shape[0]} (WxH) but its image {sample.image_src} is {width}x{height}"
    return None


class _Run:
    def __init__(self, name: str, conv: Converter, overwrite: bool, report: Callable[[str], None]):
        self.name, self.conv, self.overwrite, self.report = name, conv, overwrite, report
        self.splits: dict[str, dict[str, int]] = {}
        self.classes: dict[str, dict[str, int]] = {}
        self.skipped: list[dict[str, str]] = []
        self.ids: dict[str, list[str]] = {}

    def convert(self, s: Sample) -> None:
        counts = self.splits.setdefault(s.split, dict.fromkeys(
            ("samples", "written", "replaced", "kept", "skipped", "images_placed"), 0))
        counts["samples"] += 1
        exists = s.label_dest.exists()
        label = None
        if not exists or self.overwrite:
            try:
                label = s.make_label()
            except ValueError as exn:
                return self._skip(s, counts, str(exn))
        problem = _image_problem(s, None if label is None else label.shape)
        if problem:
            return self._skip(s, counts, problem)
        if s.image_dest.resolve() != s.image_src.resolve() and not s.image_dest.exists():
            place_image(s.image_src, s.image_dest)  # before the label: a label never lies without its image
            counts["images_placed"] += 1
        if label is None:
            counts["kept"] += 1
        else:
            atomic_write_bytes(s.label_dest, encode_label_png(label), perm=0o666)
            counts["replaced" if exists else "written"] += 1
            seen = self.classes.setdefault(s.split, {})
            for value in np.unique(label):
                if value != IGNORE:
                    cls = self.conv.class_names[int(value)]
                    seen[cls] = seen.get(cls, 0) + 1
        self.ids.setdefault(s.split, []).append(s.label_dest.stem)

    def _skip(self, s: Sample, counts: dict[str, int], reason: str) -> None:
        counts["skipped"] += 1
        self.skipped.append({"split": s.split, "file": str(s.source), "reason": reason})
        self.report(f"{self.name}: skipped {s.source}: {reason}")

    def write_id_list(self, split: str, path: Path) -> str:
        text = "".join(f"{i}\n" for i in sorted(self.ids.get(split, [])))
        if path.exists():
            if path.read_text() == text:
                return "kept (the same ids)"
            if not self.overwrite:
                self.report(f"{self.name}: kept {path}, which lists other ids than the converted samples "
                            "(--overwrite replaces it)")
                return "kept (lists other ids; --overwrite replaces it)"
        atomic_write_bytes(path, text.encode(), perm=0o666)
        return "written"


def _check_summary(out: Path, overwrite: bool) -> None:
    path = out / "summary.json"
    if not path.exists() or overwrite:
        return
    try:
        ours = json.loads(path.read_text()).get("format") == SUMMARY_FORMAT
    except (ValueError, OSError, AttributeError):
        ours = False
    if not ours:
        raise FileExistsError(f"{path} exists and was not written by prepare_benchmark; move it or pass --overwrite")


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def prepare_benchmark(name: str, raw: str | Path, out: str | Path, *, splits: tuple[str, ...] | None = None,
                      overwrite: bool = False, report: Callable[[str], None] = _stderr) -> dict:
    """Convert benchmark ``name`` from ``raw`` into ``out``; return the summary (also ``out/summary.json``)."""
    import ovseg.data.benchmarks  # noqa: F401  (the family modules register their converters)

    if name not in CONVERTERS:
        raise ValueError(f"no converter for {name!r}; choose one of {', '.join(sorted(CONVERTERS))}")
    conv = CONVERTERS[name]
    raw, out = Path(raw), Path(out)
    if not raw.is_dir():
        what = "is not a folder" if raw.exists() else "does not exist"
        raise FileNotFoundError(f"{name}: raw folder {raw} {what} (expected layout: {conv.raw_layout})")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{name}: output {out} exists and is not a folder")
    splits = tuple(splits or conv.default_splits)
    unknown = [s for s in splits if s not in conv.splits]
    if unknown:
        raise ValueError(f"{name}: unknown split(s) {unknown}; choose from {', '.join(conv.splits)}")
    _check_summary(out, overwrite)
    plan = conv.plan(raw, out, splits)
    run = _Run(name, conv, overwrite, report)
    for sample in plan.samples:
        run.convert(sample)
    id_lists = {str(path): run.write_id_list(split, path) for split, path in plan.id_lists.items()}
    summary = {"format": SUMMARY_FORMAT, "benchmark": name, "raw": str(raw), "out": str(out),
               "overwrite": overwrite, "splits": {s: run.splits.get(s, {}) for s in splits},
               "classes_seen": {s: dict(sorted(run.classes.get(s, {}).items())) for s in splits},
               "id_lists": id_lists, "skipped": run.skipped}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=2).encode(), perm=0o666)
    return summary
