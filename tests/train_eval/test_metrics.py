"""Confusion-matrix mIoU against a per-class brute-force pixel count."""

import numpy as np
import pytest

from ovseg.eval.metrics import ConfusionMatrix


def _brute_force_iou(preds, targets, C, ignore=255):
    inter, union = [0] * C, [0] * C
    for pred, target in zip(preds, targets):
        for p, t in zip(pred.ravel().tolist(), target.ravel().tolist()):
            if t == ignore:
                continue
            for c in range(C):
                inter[c] += (p == c) and (t == c)
                union[c] += (p == c) or (t == c)
    return [i / u if u else float("nan") for i, u in zip(inter, union)]


def test_miou_matches_brute_force_with_ignored_pixels():
    rng = np.random.default_rng(0)
    C = 5
    preds = [rng.integers(0, C - 1, size=(7, 9)) for _ in range(3)]  # class 4 never predicted
    targets = [rng.integers(0, C - 2, size=(7, 9)) for _ in range(3)]  # classes 3 and 4 never in ground truth
    for t in targets:
        t[rng.random(t.shape) < 0.2] = 255
    cm = ConfusionMatrix(C)
    for p, t in zip(preds, targets):
        cm.update(p, t)
    expected = _brute_force_iou(preds, targets, C)
    got = cm.iou()
    assert np.isnan(got[4]) and np.isnan(expected[4])  # in neither: left out of the mean
    assert np.allclose(got[:4], expected[:4])  # class 3 is predicted but absent: IoU 0, counted
    assert got[3] == 0.0
    assert cm.miou() == pytest.approx(np.nanmean(expected))


def test_matrices_merge_by_addition():
    rng = np.random.default_rng(1)
    a, b, both = ConfusionMatrix(3), ConfusionMatrix(3), ConfusionMatrix(3)
    for i in range(4):
        p, t = rng.integers(0, 3, (5, 5)), rng.integers(0, 3, (5, 5))
        (a if i % 2 else b).update(p, t)
        both.update(p, t)
    assert np.array_equal((a + b).matrix, both.matrix)
    a += b
    assert a.miou() == pytest.approx(both.miou())


def test_bad_labels_are_refused():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="outside"):
        cm.update(np.zeros((2, 2)), np.array([[0, 7], [1, 255]]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 3)), np.zeros((2, 2)))


def test_per_class_table():
    cm = ConfusionMatrix(2).update(np.array([0, 1, 1]), np.array([0, 1, 0]))
    lines = cm.table(["background", "cat"]).splitlines()
    assert lines[0] == "class,iou,gt_pixels,pred_pixels"
    assert lines[1] == "background,0.5000,2,1" and lines[2] == "cat,0.5000,1,2"
