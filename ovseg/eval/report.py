"""The one evaluate-and-log path: pretraining, the Flower server and ``platform/evaluate.py`` all call it.

For each benchmark: zero-shot segmentation and mIoU (``ovseg.eval.evaluate``), then through the tracker the
metrics ``zeroshot/<dataset>/miou``, ``zeroshot/<dataset>/iou/<class>`` and ``zeroshot/<dataset>/skipped``
(samples whose files could not be read) at ``step``, the per-class IoU table as ``eval/<dataset>/iou_<label>.csv``
and the comparison panels as ``eval/<dataset>/<label>_<i>.png`` (``iou.csv`` / ``overlay_<i>.png`` without a
label), and one line per benchmark on stdout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from ..config import EvalConfig
from .evaluate import EvalResult, evaluate, share


def evaluate_and_log(model, benches: Iterable, tracker, step: int, protocol: EvalConfig, *, label: str = "",
                     where: str = "", max_images: int | None = None,
                     progress: Callable[[object, int], Callable[[int], None] | None] | None = None,
                     part: tuple[int, int] = (0, 1),
                     reduce: Callable[[np.ndarray], np.ndarray] | None = None,
                     ) -> tuple[dict[str, float], list[EvalResult]]:
    """Score every benchmark with ``protocol`` and log it at ``step``; returns (all metrics, the results).

    ``where`` names the moment in the printed line ("step 200", "round 3"); ``progress(bench, n)`` may return a
    per-image callback (a progress bar). ``max_images`` defaults to ``protocol.max_images``.

    Several processes (``part=(k, K)``, ``reduce`` a sum over the K processes of an int64 array, e.g. one
    ``all_reduce``): each scores its share of every benchmark's images, then ONE reduction sums all their
    confusion matrices, image counts and skip counts, so every process returns the whole benchmarks' metrics;
    only part 0 logs, prints and draws overlays (of its share, which starts at image 0).
    """
    results = []
    limit = protocol.max_images if max_images is None else max_images
    main = part[0] == 0
    for bench in benches:
        n = len(bench) if limit is None else min(len(bench), limit)
        on_image = progress(bench, len(share(n, *part))) if progress is not None and main else None
        results.append(evaluate(model, bench, protocol=protocol, max_images=limit,
                                num_overlays=protocol.num_overlays if main else 0, bg_thresh=protocol.bg_thresh,
                                on_image=on_image, part=part))
    if reduce is not None and part[1] > 1:
        local = np.concatenate([np.append(r.confusion.matrix.ravel(), (r.num_images, r.skipped))
                                for r in results]) if results else np.zeros(0, np.int64)
        total = np.asarray(reduce(local.astype(np.int64)), dtype=np.int64)
        offset = 0
        for r in results:
            size = r.confusion.matrix.size
            r.confusion.matrix = total[offset:offset + size].reshape(r.confusion.matrix.shape).copy()
            r.num_images, r.skipped = int(total[offset + size]), int(total[offset + size + 1])
            offset += size + 2
    metrics = {}
    for res in results:
        metrics.update(res.metrics())
        if not main:
            continue
        tracker.log_text(res.table(), f"eval/{res.name}/iou_{label}.csv" if label else f"eval/{res.name}/iou.csv")
        for i, img in enumerate(res.overlays):
            tracker.log_image(img, f"eval/{res.name}/{label or 'overlay'}_{i}.png")
        print(f"[ovseg] {where + ': ' if where else ''}zero-shot {res.name} mIoU {res.miou:.4f} "
              f"({res.num_images} images{f', {res.skipped} skipped' if res.skipped else ''})", flush=True)
    if main:
        tracker.log_metrics(metrics, step)
    return metrics, results
