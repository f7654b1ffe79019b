"""PAMR: pixel-adaptive mask refinement (Araslanov and Roth, "Single-Stage Semantic Segmentation from Image
Labels", CVPR 2020, section 3.2), an option of both zero-shot protocols (``eval.pamr``).

Class score maps are made locally consistent with the image: each pixel's scores become, ten times over, an
affinity-weighted mean of its neighbours' scores, where neighbours that look like the pixel weigh more.

* neighbours: the 8 pixels around (i, j) of a 3 x 3 window at each dilation d in ``DILATIONS``
  (8 x 6 = 48), image borders replicated;
* kernel, per colour channel: ``k = -|I(i,j) - I(neighbour)| / (LAMBDA * sigma(i,j) + EPS)``, ``sigma(i,j)``
  the channel's standard deviation over all the pixels of those windows (each window's centre included);
* affinity: ``alpha = softmax over the 48 neighbours of the mean of k over the channels``;
* update: ``m(i,j) <- sum over neighbours of alpha * m(neighbour)``, ``ITERATIONS`` times.

The definition is the paper's; the constants are those of the authors' code (visinf/1-stage-wseg
models/mods/pamr.py and core/config.py: PAMR_KERNEL [1, 2, 4, 8, 12, 24], PAMR_ITER 10) as TCL runs it
(kakaobrain/tcl@bc2b551 models/tcl/pamr.py, models/tcl/tcl.py ``apply_pamr``): ``sigma`` scaled by 0.1
(a sharper kernel), ``EPS`` 1e-8, the standard deviation with Bessel's correction (torch.std). Pure torch:
the only Python loops run over the 48 neighbour offsets, never over pixels. Memory: a few copies of the
score map plus a (48, H, W) affinity per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DILATIONS = (1, 2, 4, 8, 12, 24)  # 1-stage-wseg core/config.py PAMR_KERNEL; TCL models/tcl/tcl.py apply_pamr
ITERATIONS = 10  # 1-stage-wseg core/config.py PAMR_ITER (configs/voc_resnet38.yaml); TCL apply_pamr pamr_iter
LAMBDA = 0.1  # sigma's scale in the kernel (1-stage-wseg / TCL pamr.py: "0.1 * x_std")
EPS = 1e-8  # 1-stage-wseg / TCL pamr.py: "1e-8 + 0.1 * x_std"
RING = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))  # the 8 neighbours


def _shifted(x: torch.Tensor, d: int, offsets) -> list[torch.Tensor]:
    """(B, C, H, W) -> x shifted to each offset (dy, dx) * d, borders replicated: out[k][..., i, j] is x at
    (i + dy * d, j + dx * d) clamped to the image (views into one padded copy)."""
    H, W = x.shape[-2:]
    padded = F.pad(x, (d, d, d, d), mode="replicate")  # replicate padding accepts d >= H, W (it clamps)
    return [padded[..., d + dy * d:d + dy * d + H, d + dx * d:d + dx * d + W] for dy, dx in offsets]


def affinity(image: torch.Tensor, dilations=DILATIONS) -> torch.Tensor:
    """(B, K, H, W) image -> (B, 8 * len(dilations), H, W) weights, summing to 1 over dim 1 at every pixel."""
    x = image.float()
    window = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))  # the 3 x 3 window, centre included
    n = len(window) * len(dilations)
    mean = sum(s for d in dilations for s in _shifted(x, d, window)) / n
    var = sum(((s - mean) ** 2 for d in dilations for s in _shifted(x, d, window))) / (n - 1)  # as torch.std
    scale = LAMBDA * var.sqrt() + EPS  # (B, K, H, W)
    logits = [-((x - s).abs() / scale).mean(1) for d in dilations for s in _shifted(x, d, RING)]  # each (B, H, W)
    return torch.stack(logits, 1).softmax(1)


def pamr(image: torch.Tensor, scores: torch.Tensor, iterations: int = ITERATIONS,
         dilations=DILATIONS) -> torch.Tensor:
    """Refine (B, C, H, W) class scores with the (B, K, H, W) image they were computed on (same H, W)."""
    if image.dim() != 4 or scores.dim() != 4 or image.shape[0] != scores.shape[0] or \
            image.shape[-2:] != scores.shape[-2:]:
        raise ValueError(f"pamr needs an image (B, K, H, W) and scores (B, C, H, W) of the same batch and size, "
                         f"got {tuple(image.shape)} and {tuple(scores.shape)}")
    if iterations < 0 or not dilations or min(dilations) < 1:
        raise ValueError(f"pamr needs iterations >= 0 and dilations >= 1, got {iterations} and {list(dilations)}")
    # Far neighbours' affinities and a model's small class scores fall below float32's normal range (1e-38); on
    # x86 CPUs each multiplication with such a subnormal number is up to 100x slower (a 32 x 32 window took
    # 0.04 s or 4.6 s depending on its content). Flushed to zero here, they change no score by more than 1e-38.
    flush = torch.set_flush_denormal(True)
    try:
        alpha = affinity(image, dilations)  # (B, P, H, W)
        m = scores.float()
        for _ in range(iterations):
            out = torch.zeros_like(m)
            p = 0
            for d in dilations:
                for s in _shifted(m, d, RING):
                    out.addcmul_(alpha[:, p:p + 1], s)  # in place: no temporary the size of the score map
                    p += 1
            m = out
    finally:
        if flush:
            torch.set_flush_denormal(False)
    return m.to(scores.dtype)
