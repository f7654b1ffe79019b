"""PAMR (Araslanov and Roth 2020) against a hand-worked 4x4 example and a plain per-pixel loop written here."""

import math
import statistics

import pytest
import torch

from ovseg.eval.pamr import DILATIONS, ITERATIONS, affinity, pamr


def _loop_pamr(image, mask, dilations, iterations):
    """The paper's definition pixel by pixel: image K x H x W, mask C x H x W (nested lists)."""
    K, H, W = len(image), len(image[0]), len(image[0][0])
    C = len(mask)

    def at(a, y, x):  # replicated borders
        return a[min(max(y, 0), H - 1)][min(max(x, 0), W - 1)]

    ring = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    weights = {}
    for y in range(H):
        for x in range(W):
            sigma = [statistics.stdev([at(image[k], y + dy * d, x + dx * d) for d in dilations
                                       for dy in (-1, 0, 1) for dx in (-1, 0, 1)]) for k in range(K)]
            logits = []
            for d in dilations:
                for dy, dx in ring:
                    kern = [-abs(image[k][y][x] - at(image[k], y + dy * d, x + dx * d)) / (0.1 * sigma[k] + 1e-8)
                            for k in range(K)]
                    logits.append(sum(kern) / K)
            z = sum(math.exp(v - max(logits)) for v in logits)
            weights[y, x] = [math.exp(v - max(logits)) / z for v in logits]
    for _ in range(iterations):
        new = [[[0.0] * W for _ in range(H)] for _ in range(C)]
        for y in range(H):
            for x in range(W):
                p = 0
                for d in dilations:
                    for dy, dx in ring:
                        for c in range(C):
                            new[c][y][x] += weights[y, x][p] * at(mask[c], y + dy * d, x + dx * d)
                        p += 1
        mask = new
    return mask


def _edge_image():
    """4x4, one channel: the left two columns 0, the right two 1."""
    return torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 4)[None, None]


def test_one_iteration_one_dilation_by_hand():
    image = _edge_image()
    mask = (torch.arange(16.0) / 16).reshape(1, 1, 4, 4)
    out = pamr(image, mask, iterations=1, dilations=(1,))
    # pixel (0, 0): its 3x3 window (borders replicated) is all 0, sigma = 0, every kernel value 0: the 8
    # neighbours weigh 1/8 each. They are (0,0) x3, (0,1) x2, (1,0) x2, (1,1): (0 + 2 + 8 + 5) / 16 / 8
    assert out[0, 0, 0, 0].item() == pytest.approx(15 / 16 / 8, abs=1e-7)
    # pixel (0, 1): its window holds six 0s and three 1s: mean 1/3, sample variance (6/9 + 12/9) / 8 = 1/4,
    # sigma 1/2. A neighbour across the edge has kernel -1 / (0.1 * 0.5) = -20, one on its side 0: the five
    # same-side neighbours (0,0) (0,1) (0,0) (1,0) (1,1) share the weight, exp(-20) is left for the others:
    # (0 + 1 + 0 + 4 + 5) / 16 / 5 = 2 / 16
    w_far = math.exp(-20) / (5 + 3 * math.exp(-20))
    across = (2 + 2 + 6) / 16  # the neighbours (0,2), (0,2), (1,2) over the edge
    assert out[0, 0, 0, 1].item() == pytest.approx((1 - 3 * w_far) * 2 / 16 + w_far * across, abs=1e-7)
    # and every pixel as the plain loop computes it
    ref = _loop_pamr(image[0].tolist(), mask[0].tolist(), (1,), 1)
    torch.testing.assert_close(out[0], torch.tensor(ref), rtol=0, atol=1e-6)


def test_all_dilations_and_iterations_match_the_loop():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 4, 5, generator=g)
    mask = torch.rand(1, 2, 4, 5, generator=g)
    out = pamr(image, mask)  # the protocol's constants: 10 iterations, dilations 1..24 (wider than the image)
    assert (ITERATIONS, DILATIONS) == (10, (1, 2, 4, 8, 12, 24))
    ref = _loop_pamr(image[0].tolist(), mask[0].tolist(), DILATIONS, ITERATIONS)
    torch.testing.assert_close(out[0], torch.tensor(ref), rtol=1e-5, atol=1e-6)


def test_a_constant_image_weighs_all_neighbours_alike_and_keeps_its_labels():
    image = torch.full((1, 3, 6, 6), 0.7)
    alpha = affinity(image)
    torch.testing.assert_close(alpha, torch.full_like(alpha, 1 / 48))  # no edge anywhere: uniform weights
    g = torch.Generator().manual_seed(1)
    scores = torch.rand(1, 3, 6, 6, generator=g)
    scores[:, 2] += 1.0  # class 2 is the label of every pixel, with scores that vary
    out = pamr(image, scores)
    assert (out.argmax(1) == 2).all()  # a convex mix of class-2 pixels stays class 2
    flat = torch.full((1, 3, 6, 6), 0.25)
    torch.testing.assert_close(pamr(image, flat), flat)  # constant scores are a fixed point


def test_labels_that_follow_the_colour_edges_are_kept():
    image = _edge_image().repeat(1, 3, 1, 1)
    g = torch.Generator().manual_seed(2)
    scores = torch.rand(1, 2, 4, 4, generator=g) * 0.3
    scores[:, 0, :, :2] += 0.5  # class 0 on the dark side, class 1 on the bright one
    scores[:, 1, :, 2:] += 0.5
    labels = scores.argmax(1)
    out = pamr(image, scores)
    assert torch.equal(out.argmax(1), labels)
    assert not torch.allclose(out, scores)  # refined: smoothed within each side


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="same batch and size"):
        pamr(torch.zeros(1, 3, 4, 4), torch.zeros(1, 2, 4, 5))
