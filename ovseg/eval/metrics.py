"""Mean IoU from a streaming confusion matrix, as MMSegmentation computes it.

The matrix is a plain (C, C) int64 count of (ground truth, prediction) pixel pairs, so workers, data shards
and federated rounds combine by adding matrices. Pixels whose ground truth is the ignore index (255) are not
counted. Per-class IoU = TP / (TP + FP + FN); a class with an empty union (absent from both the ground truth
and the predictions) has no IoU (NaN) and is left out of the mean, as in MMSegmentation.
"""

from __future__ import annotations

import numpy as np


class ConfusionMatrix:
    def __init__(self, num_classes: int, ignore_index: int = 255):
        if num_classes < 1:
            raise ValueError("num_classes must be at least 1")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)  # rows: ground truth, cols: prediction

    def update(self, pred, target) -> "ConfusionMatrix":
        """Count one prediction against its ground truth (arrays or tensors of the same shape)."""
        pred, target = _numpy(pred), _numpy(target)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {target.shape}")
        valid = target != self.ignore_index
        t, p = target[valid].astype(np.int64), pred[valid].astype(np.int64)
        C = self.num_classes
        if t.size and (t.min() < 0 or t.max() >= C):
            bad = np.unique(t[(t < 0) | (t >= C)])[:10]
            raise ValueError(f"ground-truth labels {bad.tolist()} are outside [0, {C}) and not the ignore index")
        if p.size and (p.min() < 0 or p.max() >= C):
            raise ValueError(f"predicted labels outside [0, {C}): {np.unique(p[(p < 0) | (p >= C)])[:10].tolist()}")
        self.matrix += np.bincount(t * C + p, minlength=C * C).reshape(C, C)
        return self

    def __add__(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        out = ConfusionMatrix(self.num_classes, self.ignore_index)
        out.matrix = self.matrix.copy()
        out += other
        return out

    def __iadd__(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        if other.matrix.shape != self.matrix.shape:
            raise ValueError(f"cannot merge a {other.num_classes}-class matrix into a {self.num_classes}-class one")
        self.matrix += other.matrix
        return self

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN where the class is in neither the ground truth nor the predictions."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    def miou(self) -> float:
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")

    def table(self, class_names: list[str]) -> str:
        """Per-class IoU as CSV text: class,iou,gt_pixels,pred_pixels."""
        if len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names for a {self.num_classes}-class matrix")
        iou, gt, pr = self.iou(), self.matrix.sum(1), self.matrix.sum(0)
        rows = ["class,iou,gt_pixels,pred_pixels"]
        rows += [f"{n},{'' if np.isnan(v) else f'{v:.4f}'},{g},{p}" for n, v, g, p in zip(class_names, iou, gt, pr)]
        return "\n".join(rows) + "\n"


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)
