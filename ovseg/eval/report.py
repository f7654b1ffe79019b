"""The one evaluate-and-log path: pretraining, the Flower server and ``platform/evaluate.py`` all call it.

For each benchmark: zero-shot segmentation and mIoU (``ovseg.eval.evaluate``), then through the tracker the
metrics ``zeroshot/<dataset>/miou`` and ``zeroshot/<dataset>/iou/<class>`` at ``step``, the per-class IoU
table as ``eval/<dataset>/iou_<label>.csv`` and the comparison panels as ``eval/<dataset>/<label>_<i>.png``
(``iou.csv`` / ``overlay_<i>.png`` without a label), and one line per benchmark on stdout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..config import EvalConfig
from .evaluate import EvalResult, evaluate


def evaluate_and_log(model, benches: Iterable, tracker, step: int, protocol: EvalConfig, *, label: str = "",
                     where: str = "", max_images: int | None = None,
                     progress: Callable[[object, int], Callable[[int], None] | None] | None = None,
                     ) -> tuple[dict[str, float], list[EvalResult]]:
    """Score every benchmark with ``protocol`` and log it at ``step``; returns (all metrics, the results).

    ``where`` names the moment in the printed line ("step 200", "round 3"); ``progress(bench, n)`` may return a
    per-image callback (a progress bar). ``max_images`` defaults to ``protocol.max_images``.
    """
    metrics, results = {}, []
    limit = protocol.max_images if max_images is None else max_images
    for bench in benches:
        n = len(bench) if limit is None else min(len(bench), limit)
        on_image = progress(bench, n) if progress is not None else None
        res = evaluate(model, bench, protocol=protocol, max_images=limit, num_overlays=protocol.num_overlays,
                       bg_thresh=protocol.bg_thresh, on_image=on_image)
        results.append(res)
        metrics.update(res.metrics())
        tracker.log_text(res.table(), f"eval/{res.name}/iou_{label}.csv" if label else f"eval/{res.name}/iou.csv")
        for i, img in enumerate(res.overlays):
            tracker.log_image(img, f"eval/{res.name}/{label or 'overlay'}_{i}.png")
        print(f"[ovseg] {where + ': ' if where else ''}zero-shot {res.name} mIoU {res.miou:.4f} "
              f"({res.num_images} images)", flush=True)
    tracker.log_metrics(metrics, step)
    return metrics, results
