"""Pictures of label maps: palette PNGs and overlays with a legend, drawn with Pillow only.

A label map is saved as a palette ("P" mode) PNG whose pixel values are the class indices and whose palette
is the PASCAL VOC colour map (``ovseg.eval.evaluate.palette``), so any viewer shows it in colour and any reader
gets the indices back with ``np.array(Image.open(path))``. The overlay blends the image with the same
colours and adds a legend panel on the right: one row per class, a swatch in the class's exact palette
colour and its name with the share of pixels. Text is drawn without anti-aliasing in a colour outside the
palette, so the only pixels of a class's colour in the legend are its swatch.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..data.codecs import palette

TEXT = (20, 20, 20)  # not a VOC palette colour (those are multiples of 32)
PANEL = (255, 255, 255)


def label_image(labels: np.ndarray) -> Image.Image:
    """(H, W) class indices (< 256) -> a palette PNG image holding the indices."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"a label map must be H x W, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"a palette PNG holds class indices 0..255, got {labels.min()}..{labels.max()}")
    h, w = labels.shape
    img = Image.frombytes("P", (w, h), np.ascontiguousarray(labels, dtype=np.uint8).tobytes())
    img.putpalette(palette(256).reshape(-1).tolist())
    return img


def _font(height: int):
    size = int(np.clip(height // 25, 11, 28))
    try:
        return ImageFont.load_default(size=size), size
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default(), 11


def overlay_with_legend(image: np.ndarray, labels: np.ndarray, class_names: list[str],
                        alpha: float = 0.5) -> Image.Image:
    """The image blended with class colours (weight ``alpha``), plus a legend panel on its right."""
    image = np.asarray(image, dtype=np.uint8)
    H, W = labels.shape
    if image.shape[:2] != (H, W):
        raise ValueError(f"image {image.shape[:2]} and label map {labels.shape} differ in size")
    pal = palette(256)
    colours = pal[np.clip(labels, 0, 255)]
    blended = Image.blend(Image.fromarray(image), Image.fromarray(colours), alpha)
    font, size = _font(H)
    swatch, pad, row = size, max(4, size // 3), size + max(4, size // 3)
    counts = np.bincount(labels.ravel(), minlength=len(class_names))
    texts = [f"{name}  {counts[i] / max(labels.size, 1):.1%}" for i, name in enumerate(class_names)]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max(probe.textbbox((0, 0), t, font=font)[2] for t in texts)
    panel_w = pad + swatch + pad + text_w + pad
    panel_h = pad + row * len(class_names)
    canvas = Image.new("RGB", (W + panel_w, max(H, panel_h)), PANEL)
    canvas.paste(blended, (0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.fontmode = "1"  # no anti-aliasing: text pixels are exactly TEXT
    for i, text in enumerate(texts):
        x, y = W + pad, pad + i * row
        draw.rectangle((x, y, x + swatch - 1, y + swatch - 1), fill=tuple(int(c) for c in pal[i]), outline=TEXT)
        draw.text((x + swatch + pad, y), text, fill=TEXT, font=font)
    return canvas


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def comparison_panel(image: np.ndarray, label: np.ndarray, pred: np.ndarray, class_names: list[str],
                     min_side: int = 256) -> Image.Image:
    """image | ground truth | prediction, each enlarged (nearest neighbour) to at least ``min_side`` pixels,
    with a titled legend naming the colour of every class present in either map. This is the overlay the
    evaluation logs to MLflow: readable even for 64-pixel synthetic images."""
    image, label, pred = np.asarray(image, dtype=np.uint8), np.asarray(label), np.asarray(pred)
    H, W = label.shape
    k = max(1, int(np.ceil(min_side / max(1, min(H, W)))))
    pal = palette(256)
    panels = [Image.fromarray(image), Image.fromarray(pal[np.clip(label, 0, 255)]),
              Image.fromarray(pal[np.clip(pred, 0, 255)])]
    panels = [p.resize((W * k, H * k), Image.NEAREST) for p in panels]
    font, size = _font(max(H * k, 300))
    pad, swatch = max(4, size // 3), size
    titles = ("image", "ground truth", "prediction")
    present = sorted(set(np.unique(label).tolist()) | set(np.unique(pred).tolist()))
    entries = [(i, class_names[i] if i < len(class_names) else ("ignore" if i == 255 else f"class {i}"))
               for i in present if 0 <= i <= 255]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max([probe.textbbox((0, 0), n, font=font)[2] for _, n in entries] + [1])
    legend_w = pad + swatch + pad + text_w + pad
    top = size + 2 * pad
    width = 3 * W * k + 4 * pad + legend_w
    height = top + max(H * k, len(entries) * (size + pad) + pad)
    canvas = Image.new("RGB", (width, height), PANEL)
    draw = ImageDraw.Draw(canvas)
    draw.fontmode = "1"
    for j, (panel, title) in enumerate(zip(panels, titles)):
        x = pad + j * (W * k + pad)
        canvas.paste(panel, (x, top))
        draw.text((x, pad), title, fill=TEXT, font=font)
    x0 = 3 * (W * k + pad) + pad
    for row, (i, name) in enumerate(entries):
        y = top + row * (size + pad)
        draw.rectangle((x0, y, x0 + swatch - 1, y + swatch - 1), fill=tuple(int(c) for c in pal[i]), outline=TEXT)
        draw.text((x0 + swatch + pad, y), name, fill=TEXT, font=font)
    return canvas
