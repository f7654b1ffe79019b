"""Zero-shot semantic segmentation with a trained model, under a named protocol (``ovseg.eval.protocols``).

class names -> prompts (the protocol's templates) -> text bank (``ovseg.eval.textbank``, cached by the caller).
The image is resized to a short side of 448 (the long side capped at 2048, as the released configs'
``img_scale=(2048, 448)``) and read in 448 x 448 windows with stride 224. In each window: the soft
group-to-patch attention is upsampled to the window and every pixel takes its argmax group; each group scores
the classes as ``softmax(A restricted to the image's top-5 classes) * softmax(A)`` with
``A = s * group_emb . text_bank`` (GroupViT / OVSegmentor, reference section 7); PAMR may refine these class
maps with the window's image (``eval.pamr``). Background, when the first class is "background", follows the
protocol's rule:

* ``threshold`` (groupvit): a 0/1 channel, 1 where the best class score is below
  ``min(bg_thresh, best group score of the window)``;
* ``constant`` (tcl): a channel equal to ``bg_thresh`` everywhere, which competes with the class scores.

Window scores are averaged, resized to the input, and arg-maxed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..config import EvalConfig
from ..data.captions.transforms import IMAGENET_MEAN, IMAGENET_STD
from .pamr import pamr
from .protocols import Settings, check, resolve
from .textbank import TextBank


def group_class_scores(group_emb: torch.Tensor, image_emb: torch.Tensor, bank: torch.Tensor, scale: torch.Tensor,
                       top_k: int = 5) -> torch.Tensor:
    """(B, G, E), (B, E), (C, E) -> (B, G, C): softmax over the image's top-k classes times softmax over all."""
    logits = scale * group_emb @ bank.t()  # (B, G, C)
    image_probs = (scale * image_emb @ bank.t()).softmax(-1)  # (B, C)
    top = image_probs.topk(min(top_k, bank.shape[0]), dim=-1).indices  # (B, k)
    keep = torch.zeros_like(image_probs, dtype=torch.bool).scatter_(1, top, True)
    restricted = logits.masked_fill(~keep[:, None, :], float("-inf")).softmax(-1)
    return restricted * logits.softmax(-1)


def window_logits(model, windows: torch.Tensor, bank: torch.Tensor, background: bool, bg_thresh: float,
                  top_k: int, bg_rule: str = "threshold", refine: bool = False) -> torch.Tensor:
    """(B, 3, h, w) normalised windows -> (B, C_out, h, w) class scores (background channel first if any).

    ``bg_rule`` "threshold" (GroupViT) or "constant" (TCL); ``refine``: PAMR on the class scores with the
    window as its image, before the background channel is added (TCL refines its masks, then concatenates it).
    """
    image_emb, group_emb, assign = model.encode_image(windows)
    scores = group_class_scores(group_emb, image_emb, bank, model.scale(), top_k)  # (B, G, C)
    assign = F.interpolate(assign, size=windows.shape[-2:], mode="bilinear", align_corners=False)
    onehot = F.one_hot(assign.argmax(1), assign.shape[1]).to(scores.dtype)  # (B, h, w, G)
    fg = torch.einsum("bhwg,bgc->bchw", onehot, scores)
    if refine:
        fg = pamr(windows, fg)
    if not background:
        return fg
    if bg_rule == "constant":
        return constant_background(fg, bg_thresh)
    if bg_rule != "threshold":
        raise ValueError(f"unknown background rule {bg_rule!r}; choose 'threshold' or 'constant'")
    thr = scores.flatten(1).amax(1).clamp(max=bg_thresh)[:, None, None]  # min(bg_thresh, max S), per window
    bg = (fg.amax(1) < thr).to(fg.dtype)[:, None]
    return torch.cat([bg, fg], dim=1)


def constant_background(fg: torch.Tensor, bg_thresh: float) -> torch.Tensor:
    """(B, C, h, w) class scores -> (B, 1 + C, h, w): a constant ``bg_thresh`` channel first (TCL's rule:
    tcl_seg.py ``torch.full([B, 1, H, W], bg_thresh)`` concatenated before the masks). After the window
    average, the argmax is background wherever no class scores above ``bg_thresh`` (a tie goes to background:
    argmax takes the first)."""
    return torch.cat([torch.full_like(fg[:, :1], bg_thresh), fg], dim=1)


def scaled_size(height: int, width: int, short_side: int, long_side: int | None) -> tuple[int, int]:
    """The size an image is read at: the short side to ``short_side`` unless that makes the long side exceed
    ``long_side`` (MMSegmentation's keep-ratio rescale: one factor, ``min(short / min(H, W), long / max(H,
    W))``, sizes rounded half up as ``mmcv.rescale_size`` rounds them)."""
    factor = short_side / min(height, width)
    if long_side is not None:
        factor = min(factor, long_side / max(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def slide_windows(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """MMSegmentation's sliding-window grid: windows of crop x crop (clipped to the image) every ``stride``."""
    ch, cw = min(crop, height), min(crop, width)
    rows = max(height - ch + stride - 1, 0) // stride + 1
    cols = max(width - cw + stride - 1, 0) // stride + 1
    out = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride + ch, height), min(c * stride + cw, width)
            out.append((y2 - ch, x2 - cw, y2, x2))
    return out


def _to_uint8_rgb(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be a PIL image or an H x W x 3 uint8 array, got {image.dtype} {image.shape}")
    if min(image.shape[:2]) < 1:
        raise ValueError(f"image has no pixels: {image.shape}")
    return image


def segment(model, image, class_names: list[str], **options) -> np.ndarray:
    """Label every pixel of ``image`` with an index into ``class_names``; returns an (H, W) int64 array:
    the argmax of :func:`segment_logits` (same options)."""
    return segment_logits(model, image, class_names, **options).argmax(0).cpu().numpy().astype(np.int64)


@torch.no_grad()
def segment_logits(model, image, class_names: list[str], *, protocol: EvalConfig | Settings | None = None,
                   dataset: str | None = None, bank: TextBank | None = None, templates: tuple[str, ...] | None = None,
                   short_side: int | None = None, crop_size: int | None = None, stride: int | None = None,
                   bg_thresh: float | None = None, top_k: int | None = None, background: bool | None = None,
                   window_batch: int | None = None, pamr: bool | None = None) -> torch.Tensor:
    """The averaged window scores of ``image`` resized to it: (C, H, W), C = ``len(class_names)``.

    The model is read through its declared contract only: ``tokenizer``, ``encode_text``, ``encode_image``,
    ``scale()``, ``logit_scale``. Protocol values come from ``protocol``: a config's ``eval`` section (its
    named protocol, with the values it sets) resolved for ``dataset`` (a benchmark name; None: the protocol's
    defaults), or ``Settings`` already resolved (``ovseg.eval.protocols.resolve``); the GroupViT protocol when
    None. Keyword arguments override single values (``pamr`` also picks the protocol's threshold for it when
    ``protocol`` is a config). ``bank`` caches the class embeddings across calls (pass
    one ``TextBank`` when segmenting many images). ``background`` defaults to whether the first class name is
    "background"; that class gets no prompt and is assigned by the protocol's background rule.
    ``window_batch`` windows go through the model at once (``protocol.window_batch``), so memory is bounded by
    it and by the scaled image's score map, not by the number of windows; the result does not depend on it.
    """
    if isinstance(protocol, Settings):
        settings = protocol
    else:  # a config: ``pamr`` may change the protocol's background threshold (TCL: 0.4 with PAMR)
        settings = resolve(protocol, dataset, pamr=pamr, check_values=False)
    settings = settings.replace(templates=tuple(templates) if templates else None, short_side=short_side,
                                crop_size=crop_size, stride=stride, bg_thresh=bg_thresh, top_k=top_k,
                                window_batch=window_batch, pamr=pamr)
    check(settings)
    names = list(class_names)
    if background is None:
        background = bool(names) and names[0].strip().lower() == "background"
    fg_names = names[1:] if background else names
    if not fg_names:
        raise ValueError("segment needs at least one class name besides 'background'")
    rgb = _to_uint8_rgb(image)
    H, W = rgb.shape[:2]
    was_training = model.training
    if was_training:
        model.eval()
    try:
        text_emb = (bank or TextBank())(model, fg_names, settings.templates)
        device = text_emb.device
        x = torch.from_numpy(np.ascontiguousarray(rgb).copy()).to(device).permute(2, 0, 1)[None].float() / 255.0
        h, w = scaled_size(H, W, settings.short_side, settings.long_side)
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        mean = torch.tensor(IMAGENET_MEAN, device=device)[:, None, None]
        std = torch.tensor(IMAGENET_STD, device=device)[:, None, None]
        x = (x - mean) / std
        boxes = slide_windows(h, w, settings.crop_size, settings.stride)
        total = torch.zeros(1, len(names), h, w, device=device)
        count = torch.zeros(1, 1, h, w, device=device)
        step = settings.window_batch
        for start in range(0, len(boxes), step):  # window_batch windows at a time: bounded memory
            chunk = boxes[start:start + step]
            windows = torch.cat([x[:, :, y1:y2, x1:x2] for y1, x1, y2, x2 in chunk])
            scores = window_logits(model, windows, text_emb, background, settings.bg_thresh, settings.top_k,
                                   settings.background, settings.pamr)  # (b, C, h', w')
            for (y1, x1, y2, x2), s in zip(chunk, scores):
                total[:, :, y1:y2, x1:x2] += s
                count[:, :, y1:y2, x1:x2] += 1
        logits = F.interpolate(total / count, size=(H, W), mode="bilinear", align_corners=False)
        return logits[0]
    finally:
        if was_training:
            model.train()
