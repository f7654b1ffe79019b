"""The drawing primitives of the synthetic world: class shapes, class textures, cluttered backgrounds.

The synthetic world (see ``scene.py``) must be a fair test of learning segmentation from captions:
a class may be recognisable only by its *form*, never by its colour. So every class owns one
silhouette and one texture (a two-colour pattern drawn in the object's own frame, so it rotates and
scales with the object), while both colours are drawn at random per object. Backgrounds are clutter
built from things no class uses: smooth colour fields, pixel noise, soft blobs and thin lines.

Everything works in an object's local frame: ``u, v`` in [-1, 1] are pixel offsets from the object's
centre, rotated and divided by its radius, so shapes are resolution-free and fully vectorised.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def _polar(u, v):
    return np.hypot(u, v), np.arctan2(v, u)


def _regular(u, v, sides: int, apothem: float):
    """Inside a regular polygon with ``sides`` sides and the given inner radius."""
    angles = 2 * np.pi * np.arange(sides) / sides + np.pi / 2
    proj = np.stack([u * np.cos(a) + v * np.sin(a) for a in angles])
    return proj.max(0) <= apothem


# Silhouettes: (u, v) -> bool. Each fills a good part of the unit disk so objects are not tiny.
SHAPES = {
    "star": lambda u, v: _polar(u, v)[0] <= 0.42 + 0.58 * ((np.cos(5 * _polar(u, v)[1]) + 1) / 2) ** 2,
    "ring": lambda u, v: (np.hypot(u, v) <= 1.0) & (np.hypot(u, v) >= 0.55),
    "square": lambda u, v: np.maximum(abs(u), abs(v)) <= 0.78,
    "triangle": lambda u, v: _regular(u, v, 3, 0.52),
    "crescent": lambda u, v: (np.hypot(u, v) <= 1.0) & (np.hypot(u - 0.5, v) >= 0.72),
    "cross": lambda u, v: ((abs(u) <= 0.32) & (abs(v) <= 0.95)) | ((abs(v) <= 0.32) & (abs(u) <= 0.95)),
    "hexagon": lambda u, v: _regular(u, v, 6, 0.85),
    "gear": lambda u, v: np.hypot(u, v) <= 0.72 + 0.25 * (np.cos(8 * np.arctan2(v, u)) > 0),
    "semicircle": lambda u, v: (np.hypot(u, v + 0.35) <= 1.0) & (v >= -0.35),
    "diamond": lambda u, v: abs(u) / 0.75 + abs(v) <= 1.0,
    "frame": lambda u, v: (np.maximum(abs(u), abs(v)) <= 0.85) & (np.maximum(abs(u), abs(v)) >= 0.5),
    "ellipse": lambda u, v: (u / 1.0) ** 2 + (v / 0.5) ** 2 <= 1.0,
    "bowtie": lambda u, v: (abs(v) <= 0.1 + 0.85 * abs(u)) & (abs(u) <= 0.9),
    "arrow": lambda u, v: ((abs(v) <= 0.22) & (u >= -0.95) & (u <= 0.2)) | ((u > 0.2) & (abs(v) <= 0.9 * (0.95 - u))),
    "ell": lambda u, v: ((abs(u + 0.55) <= 0.3) & (abs(v) <= 0.9)) | ((abs(v - 0.6) <= 0.3) & (abs(u) <= 0.85)),
    "tee": lambda u, v: ((abs(v + 0.6) <= 0.28) & (abs(u) <= 0.9)) | ((abs(u) <= 0.26) & (v >= -0.6) & (v <= 0.95)),
}


def _frac(x):
    return x - np.floor(x)


# Textures: (u, v, phase) -> pattern in [0, 1]; 0 picks the object's first colour, 1 its second.
# Periods are 3-4 per object diameter so the pattern survives at 64 px.
TEXTURES = {
    "solid": lambda u, v, p: np.zeros_like(u),
    "stripes": lambda u, v, p: (np.sin(np.pi * 3.0 * u + p) > 0).astype(np.float32),
    "checker": lambda u, v, p: ((np.floor(u * 2.2 + p) + np.floor(v * 2.2)) % 2).astype(np.float32),
    "dots": lambda u, v, p: (np.hypot(_frac(u * 2.2 + p) - 0.5, _frac(v * 2.2) - 0.5) < 0.28).astype(np.float32),
    "zigzag": lambda u, v, p: (np.sin(np.pi * 3.0 * (v + 0.35 * abs(_frac(u * 2.5) * 2 - 1)) + p) > 0)
    .astype(np.float32),
    "grid": lambda u, v, p: ((_frac(u * 2.2 + p) < 0.3) | (_frac(v * 2.2 + p) < 0.3)).astype(np.float32),
    "rings": lambda u, v, p: (np.sin(np.pi * 4.0 * np.hypot(u, v) + p) > 0).astype(np.float32),
    "spokes": lambda u, v, p: (np.sin(6 * np.arctan2(v, u) + p) > 0).astype(np.float32),
    "diagonal": lambda u, v, p: (np.sin(np.pi * 2.4 * (u + v) + p) > 0).astype(np.float32),
    "waves": lambda u, v, p: (np.sin(np.pi * 3.0 * u + 1.8 * np.sin(np.pi * 2.0 * v) + p) > 0).astype(np.float32),
    "gradient": lambda u, v, p: np.clip((u + 1) / 2, 0, 1).astype(np.float32),
}

# Class -> (shape, texture). Shapes are unique to a class; the ten default classes also have ten
# different textures. Every class is a canonical entity of the CC4M vocabulary (73 classes).
CLASS_STYLES = {
    "cat": ("star", "dots"),
    "dog": ("ring", "stripes"),
    "car": ("square", "checker"),
    "bird": ("triangle", "zigzag"),
    "boat": ("crescent", "solid"),
    "bicycle": ("cross", "grid"),
    "sofa": ("hexagon", "rings"),
    "clock": ("gear", "spokes"),
    "umbrella": ("semicircle", "diagonal"),
    "house": ("diamond", "waves"),
    "bus": ("frame", "gradient"),
    "bottle": ("ellipse", "stripes"),
    "chair": ("bowtie", "checker"),
    "bag": ("arrow", "dots"),
    "tv": ("ell", "grid"),
    "aeroplane": ("tee", "zigzag"),
}


def local_frame(size: int, cx: float, cy: float, radius: float, angle: float, box):
    """Rotated, radius-normalised coordinates of the pixel centres inside ``box`` (y0, y1, x0, x1)."""
    y0, y1, x0, x1 = box
    ys = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy
    xs = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx
    c, s = np.cos(angle), np.sin(angle)
    return (c * xs + s * ys) / radius, (-s * xs + c * ys) / radius


def random_colour_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two random RGB colours far enough apart that the texture stays visible."""
    first = rng.uniform(0, 255, 3)
    for _ in range(8):
        second = rng.uniform(0, 255, 3)
        if np.abs(first - second).sum() >= 180:
            break
    else:
        second = np.where(first < 128, first + 128, first - 128)  # 128 apart in every channel
    return first.astype(np.float32), second.astype(np.float32)


BACKGROUNDS = ("cluttered", "smooth")


def cluttered_background(rng: np.random.Generator, size: int, kind: str = "cluttered") -> np.ndarray:
    """A (size, size, 3) uint8 background of smooth colour fields, noise, soft blobs and thin lines.

    ``kind="smooth"`` keeps the colour field and the soft blobs but draws no pixel noise and no lines.
    """
    if kind not in BACKGROUNDS:
        raise ValueError(f"background must be one of {BACKGROUNDS}, got {kind!r}")
    cells = int(rng.integers(2, 6))
    field = rng.uniform(0, 255, (cells, cells, 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(field, "RGB").resize((size, size), Image.BICUBIC), dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for _ in range(int(rng.integers(1, 5))):  # soft blobs: smooth, so never confused with hard-edged classes
        cx, cy = rng.uniform(0, size, 2)
        sigma = rng.uniform(0.06, 0.2) * size
        alpha = 0.8 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma ** 2))
        img += alpha[..., None] * (rng.uniform(0, 255, 3) - img)
    if kind == "smooth":
        return np.clip(img, 0, 255).astype(np.uint8)
    img += rng.normal(0, rng.uniform(4, 14), img.shape)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(out)
    for _ in range(int(rng.integers(1, 6))):  # thin scribbles: 1 px wide, unlike any class shape
        pts = [tuple(float(c) for c in rng.uniform(0, size, 2)) for _ in range(int(rng.integers(2, 4)))]
        draw.line(pts, fill=tuple(int(c) for c in rng.integers(0, 256, 3)), width=1)
    return np.asarray(out, dtype=np.uint8).copy()
