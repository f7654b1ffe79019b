"""Mosaics of two images: a localisation signal from captions alone (this project's addition, not the paper's).

Image 2m and image 2m + 1 of a batch make mosaic m; which patches show which image is known by construction,
with no mask. A group that covers patches of both images, or carries the meaning of the image it does not lie
on, is wrong by construction (``losses.mosaic_loss``). Two layouts:

* ``paste``: image 2m + 1, average-pooled to half size, is pasted over image 2m at a random patch-aligned
  position (so that no fixed position separates the two: groups cannot pass by splitting the image by place);
* ``side``: both at half size, side by side (the right half is always image 2m + 1: a positional shortcut).

``region`` marks, per mosaic, the patches of image 2m + 1 on the vision tower's patch grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LAYOUTS = ("paste", "side")


def compose(images: torch.Tensor, patch: int, layout: str = "paste", generator: torch.Generator | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) -> (mosaics (M, C, H', W'), region (M, H'/patch, W'/patch) bool), M = B // 2 (an odd
    last image is left out). ``paste`` keeps (H, W); ``side`` gives (H/2, W)."""
    B, _, H, W = images.shape
    if B < 2:
        raise ValueError(f"a mosaic needs at least 2 images, got a batch of {B}")
    if H % (2 * patch) or W % (2 * patch):
        raise ValueError(f"mosaics need image sides divisible by 2 x patch ({2 * patch}), got {H}x{W}")
    n = B // 2 * 2
    base, small = images[:n:2], F.avg_pool2d(images[1:n:2], 2)
    M, h, w = n // 2, H // patch, W // patch
    if layout == "side":
        mosaics = torch.cat([F.avg_pool2d(base, 2), small], dim=-1)
        region = torch.zeros(M, h // 2, w, dtype=torch.bool, device=images.device)
        region[:, :, w // 2:] = True
        return mosaics, region
    if layout != "paste":
        raise ValueError(f"mosaic layout must be one of {LAYOUTS}, got {layout!r}")
    mosaics = base.clone()
    region = torch.zeros(M, h, w, dtype=torch.bool, device=images.device)
    rows = torch.randint(0, h // 2 + 1, (M,), generator=generator).tolist()
    cols = torch.randint(0, w // 2 + 1, (M,), generator=generator).tolist()
    for m, (r, c) in enumerate(zip(rows, cols)):
        mosaics[m, :, r * patch:r * patch + H // 2, c * patch:c * patch + W // 2] = small[m]
        region[m, r:r + h // 2, c:c + w // 2] = True
    return mosaics, region


def per_image(patch_values: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """(M, N, C) values of the mosaics' patches -> (2M, N, C) per source image, in batch order, -inf on the
    patches that show the other image: row 2m is image 2m (outside ``region``), row 2m + 1 image 2m + 1."""
    inside = region.flatten(1).unsqueeze(-1)  # (M, N, 1)
    if inside.shape[:2] != patch_values.shape[:2]:
        raise ValueError(f"mosaic region {tuple(region.shape)} does not match patch values "
                         f"{tuple(patch_values.shape)}")
    neg = torch.tensor(float("-inf"), dtype=patch_values.dtype, device=patch_values.device)
    outside = torch.where(inside, neg, patch_values)
    pasted = torch.where(inside, patch_values, neg)
    return torch.stack([outside, pasted], 1).flatten(0, 1)
