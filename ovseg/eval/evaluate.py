"""Zero-shot evaluation over a benchmark: ``ovseg.eval.segment`` on every image, ``ovseg.eval.metrics`` for mIoU.

Used by pretraining (every N steps), the Flower server (every round) and Tune trials (every report).
Returns the confusion matrix (mergeable), the per-class table and a few overlay images
(image | ground truth | prediction) for the tracker. A sample whose image or label cannot be read (the
benchmark raises ValueError naming the file) is skipped, named on stderr and counted (``skipped``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..config import EvalConfig
from ..data.codecs import IGNORE
from .metrics import ConfusionMatrix
from .protocols import prompt_names, resolve
from .segment import segment
from .textbank import TextBank
from .visualize import comparison_panel


@dataclass
class EvalResult:
    name: str
    class_names: list[str]
    confusion: ConfusionMatrix
    num_images: int  # images scored
    skipped: int = 0  # samples whose image or label could not be read
    overlays: list[Image.Image] = field(default_factory=list)

    @property
    def miou(self) -> float:
        return self.confusion.miou()

    def metrics(self, prefix: str = "zeroshot") -> dict[str, float]:
        """``zeroshot/<dataset>/miou``, ``zeroshot/<dataset>/iou/<class>`` (classes with an IoU) and
        ``zeroshot/<dataset>/skipped`` (samples that could not be read)."""
        out = {f"{prefix}/{self.name}/miou": self.miou, f"{prefix}/{self.name}/skipped": float(self.skipped)}
        for name, iou in zip(self.class_names, self.confusion.iou()):
            if not np.isnan(iou):
                out[f"{prefix}/{self.name}/iou/{_metric_name(name)}"] = float(iou)
        return out

    def table(self) -> str:
        return self.confusion.table(self.class_names)


def _metric_name(name: str) -> str:
    # MLflow metric names allow letters, digits, _ - . space / ; class names like "bed " keep their meaning
    return "".join(c if c.isalnum() or c in "_-. /" else "_" for c in name.strip())


def share(n: int, part: int, parts: int) -> range:
    """Part ``part`` of ``parts`` of the image indices ``0..n-1``: contiguous blocks whose sizes differ by at
    most one, the same split on every process; part 0 starts at image 0 (so the overlays are today's)."""
    if not 0 <= part < parts:
        raise ValueError(f"evaluation part {part} is outside 0..{parts - 1}")
    return range(part * n // parts, (part + 1) * n // parts)


@torch.no_grad()
def evaluate(model, bench, *, protocol: EvalConfig | None = None, max_images: int | None = None,
             num_overlays: int = 0, bg_thresh: float | None = None,
             on_image: Callable[[int], None] | None = None, part: tuple[int, int] = (0, 1)) -> EvalResult:
    """Segment ``bench`` (an ``ovseg.data.benchmarks.SegBenchmark``-like sequence) and score it.

    ``protocol``: the ``eval`` section of a config (GroupViT's values when None), resolved for this benchmark
    (``bench_settings``). ``bg_thresh`` overrides the protocol's background threshold. ``on_image(i)`` is
    called after image ``i`` is scored or skipped (progress bars); a sample that cannot be read is named on
    stderr and counted in ``skipped``.
    ``part=(k, K)``: score only the k-th of K shares of the images (``share``); the K confusion matrices
    summed are the whole benchmark's (``num_images`` is then this share's count).
    """
    names = list(bench.class_names)
    settings = bench_settings(protocol, bench, bg_thresh)
    prompts = prompt_names(settings.protocol, getattr(bench, "name", None), names)  # the protocol's spellings
    cm = ConfusionMatrix(len(names), IGNORE)
    overlays, skipped = [], 0
    n = len(bench) if max_images is None else min(len(bench), max_images)
    indices = share(n, *part)
    bank = TextBank()
    was_training = model.training
    if was_training:
        model.eval()
    try:
        for i in indices:
            try:
                image, label, _ = bench[i]
            except ValueError as e:  # an unreadable or inconsistent file: this sample only
                # tqdm.write: on a line of its own above a progress bar, if one is drawn
                tqdm.write(f"[ovseg] skipped {getattr(bench, 'name', 'dataset')} sample {i}: {e}", file=sys.stderr)
                skipped += 1
                if on_image is not None:
                    on_image(i)
                continue
            pred = segment(model, image, prompts, protocol=settings, bank=bank)
            cm.update(pred, label)
            if len(overlays) < num_overlays:
                overlays.append(comparison_panel(image, label, pred, names))
            if on_image is not None:
                on_image(i)
    finally:
        if was_training:
            model.train()
    return EvalResult(getattr(bench, "name", "dataset"), names, cm, len(indices) - skipped, skipped, overlays)


def bench_settings(eval_cfg, bench, bg_thresh: float | None = None):
    """The ``Settings`` ``evaluate`` scores ``bench`` with: ``eval_cfg``'s protocol for the benchmark's name (and
    its own declared background threshold, for a name the protocol does not list); ``bg_thresh`` overrides."""
    settings = resolve(eval_cfg, getattr(bench, "name", None), getattr(bench, "bg_thresh", None))
    return settings.replace(bg_thresh=bg_thresh)


def describe_protocol(eval_cfg, bench, bg_thresh: float | None = None) -> str:
    """One line naming the protocol ``evaluate`` applies to ``bench`` with ``eval_cfg`` (an ``EvalConfig``)."""
    settings = bench_settings(eval_cfg, bench, bg_thresh)
    names = list(bench.class_names)
    renamed = [f"{a} as {b!r}" for a, b in zip(names, prompt_names(settings.protocol, bench.name, names)) if a != b]
    return settings.describe(names) + (f", prompting {', '.join(renamed)}" if renamed else "")


def parse_eval_sets(specs, default_root: str | Path | None = None, class_names=()):
    """``["synthetic", "voc=/data/VOCdevkit"]`` -> benchmarks; a bare name uses ``default_root``.

    ``class_names``: ``["voc=names.yaml"]`` adds, after each named benchmark, the same benchmark scored under
    the file's class names (``<name>-<file stem>``).
    """
    from ..data.benchmarks.registry import build_benchmark

    out = []
    for spec in specs:
        name, sep, root = spec.partition("=")
        root = root if sep else default_root
        if root is None:
            raise ValueError(f"evaluation set '{spec}' needs a path: write {name}=/path/to/data")
        out.append(build_benchmark(name.strip(), root))
    return with_class_names(out, class_names)


def with_class_names(benches: list, class_names) -> list:
    """``benches`` with, after each one named in a ``"name=FILE"`` spec, its copy under the file's names."""
    from ..data.benchmarks.registry import load_class_names, rename_classes

    by_name: dict[str, list[str]] = {}
    for spec in class_names:
        name, sep, path = (s.strip() for s in spec.partition("="))
        if not sep or not name or not path:
            raise ValueError(f"class names '{spec}': write DATASET=FILE (for example voc=voc-synonyms.yaml)")
        by_name.setdefault(name, []).append(path)
    unknown = sorted(set(by_name) - {b.name for b in benches})
    if unknown:
        raise ValueError(f"class names given for {unknown}, which are not evaluated ({[b.name for b in benches]})")
    out = []
    for bench in benches:
        out.append(bench)
        for path in by_name.get(bench.name, []):
            mapping = load_class_names(path, bench)
            out.append(rename_classes(bench, mapping, f"{bench.name}-{Path(path).stem}", source=f"class names {path}"))
    return out
