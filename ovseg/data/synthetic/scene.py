"""The synthetic caption world: the project's embedded default data set (DESIGN.md, "The embedded default").

No real data set can be downloaded on a fresh machine, so the default run trains on a world it makes.
It must be a fair test of learning segmentation from captions alone, so:

* each class (a canonical CC4M entity: cat, dog, car, ...) has its own silhouette and texture, and the
  colours of every object are random, so only form identifies the class (``shapes.py``);
* 1-4 objects per image with random scale, rotation and position; later objects occlude earlier ones
  (placements that would hide more than half of an earlier object are redrawn, so every object named
  in a caption stays clearly visible), on a cluttered background of things no class looks like;
* captions come from varied templates with non-entity words, use CC4M synonyms (bike, couch,
  building, ...) and plurals, and with probability ``p_unmentioned`` leave one object out, as real
  captions do; a caption never names a class that is not visible;
* every image is drawn from its own RNG stream ``(seed, split, index)``, so the output is identical for a
  seed whatever the number of workers, and different splits never share an image.

Ground-truth masks exist for every image but only the val split and the segmentation shards store them;
the caption shards (``world.py`` writes all three) hold image, caption and img2dataset metadata only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ovseg.data.synthetic.shapes import (
    BACKGROUNDS,
    CLASS_STYLES,
    SHAPES,
    TEXTURES,
    cluttered_background,
    local_frame,
    random_colour_pair,
)

DEFAULT_CLASSES = ("cat", "dog", "car", "bird", "boat", "bicycle", "sofa", "clock", "umbrella", "house")
# CC4M syn_dict surface forms (reference/ovsegmentor.md §5.1) for the classes the world can draw.
SYNONYMS = {"bicycle": ("bike",), "sofa": ("couch",), "house": ("building", "hotel"), "tv": ("TV",),
            "bag": ("handbag",), "aeroplane": ("airplane",)}
# For each class a name no caption of the world ever uses (neither the class name, nor a SYNONYMS form, nor
# a template word): scoring the val split under these names (benchmark ``synthetic-unseen``) asks whether the
# model's text tower knows a word its captions never taught it. Written into every world's manifest.
UNSEEN_NAMES = {"cat": "kitten", "dog": "puppy", "car": "automobile", "bird": "sparrow", "boat": "ship",
                "bicycle": "cycle", "sofa": "settee", "clock": "timepiece", "umbrella": "parasol",
                "house": "cottage"}
SPLIT_CODES = {"train": 0, "val": 1, "seg": 2}

TEMPLATES = (
    "a photo of {objs}.", "{objs} on a grey field.", "a picture showing {objs} in the noise",
    "here we see {objs}", "{objs}, drawn on a cluttered background", "an abstract painting of {objs}",
    "a close-up of {objs} among scribbles", "look at {objs}!", "{objs} in the middle of a messy pattern",
    "a drawing with {objs}", "somebody painted {objs} on a noisy canvas", "a blurry snapshot: {objs}",
    "this image contains {objs}", "{objs} hiding among colourful blobs", "a sketch of {objs} with random lines around",
)
PAIR_TEMPLATES = ("{a} next to {b} on a grey field", "{a} near {b}", "{a} and {b} together in a noisy scene",
                  "a photo of {a} beside {b}")
NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
VAGUE = ("some", "several", "a few")


@dataclass(frozen=True)
class SyntheticConfig:
    """What a world looks like. Scales are object diameters as a fraction of the image side."""

    classes: tuple[str, ...] = DEFAULT_CLASSES
    image_size: int = 64
    min_objects: int = 1
    max_objects: int = 4
    min_scale: float = 0.3    # 19 px at 64 px: more than two 8-px patches across
    max_scale: float = 0.6
    max_hidden: float = 0.5   # an earlier object may lose at most this fraction of its pixels
    p_unmentioned: float = 0.15
    p_synonym: float = 0.3
    jpeg_quality: int = 95
    background: str = "cluttered"  # "smooth": colour fields and soft blobs only, no pixel noise or lines

    def __post_init__(self):
        unknown = [c for c in self.classes if c not in CLASS_STYLES]
        if unknown:
            raise ValueError(f"classes {unknown} have no drawing style; choose from {sorted(CLASS_STYLES)}")
        if len(set(self.classes)) != len(self.classes) or not self.classes:
            raise ValueError(f"classes must be a non-empty list without repeats, got {list(self.classes)}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        if not 0 < self.min_scale <= self.max_scale <= 1.5:
            raise ValueError(f"need 0 < min_scale <= max_scale <= 1.5, got {self.min_scale}, {self.max_scale}")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {BACKGROUNDS}, got {self.background!r}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16, got {self.image_size}")


@dataclass
class Scene:
    image: np.ndarray               # (S, S, 3) uint8
    label: np.ndarray               # (S, S) uint8: 0 background, i + 1 = classes[i]
    object_classes: list[int]       # class index of every placed (visible) object, in drawing order
    caption: str
    mentioned: list[int] = field(default_factory=list)  # class indices the caption names
    unmentioned: bool = False       # one object was left out of the caption


def _place_objects(rng: np.random.Generator, cfg: SyntheticConfig, image: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Draw objects onto ``image`` in place; return the owner map (-1 = background) and their classes."""
    size = cfg.image_size
    owner = np.full((size, size), -1, dtype=np.int16)
    full_area: list[int] = []
    visible: list[int] = []
    classes: list[int] = []
    for _ in range(int(rng.integers(cfg.min_objects, cfg.max_objects + 1))):
        cls = int(rng.integers(len(cfg.classes)))
        shape_fn = SHAPES[CLASS_STYLES[cfg.classes[cls]][0]]
        for _attempt in range(10):
            radius = rng.uniform(cfg.min_scale, cfg.max_scale) * size / 2
            cx, cy = rng.uniform(0.6 * radius, size - 0.6 * radius, 2)
            angle = rng.uniform(0, 2 * np.pi)
            box = (max(int(cy - radius) - 1, 0), min(int(cy + radius) + 2, size),
                   max(int(cx - radius) - 1, 0), min(int(cx + radius) + 2, size))
            u, v = local_frame(size, cx, cy, radius, angle, box)
            mask = shape_fn(u, v)
            area = int(mask.sum())
            crop = owner[box[0]:box[1], box[2]:box[3]]
            covered = crop[mask]
            lost = np.bincount(covered[covered >= 0], minlength=len(classes))
            keeps = all(visible[j] - lost[j] >= (1 - cfg.max_hidden) * full_area[j] for j in range(len(classes)))
            if area > 0 and keeps:
                break
        else:
            continue  # no placement keeps the earlier objects visible enough: draw one object fewer
        first, second = random_colour_pair(rng)
        pattern = TEXTURES[CLASS_STYLES[cfg.classes[cls]][1]](u, v, rng.uniform(0, 2 * np.pi))[..., None]
        colour = first * (1 - pattern) + second * pattern
        image[box[0]:box[1], box[2]:box[3]][mask] = colour[mask].astype(np.uint8)
        for j in range(len(classes)):
            visible[j] -= int(lost[j])
        crop[mask] = len(classes)
        full_area.append(area)
        visible.append(area)
        classes.append(cls)
    return owner, classes


def _plural(word: str) -> str:
    return word + "es" if word.endswith(("s", "x", "ch", "sh")) else word + "s"


def _phrase(rng: np.random.Generator, name: str, count: int, p_synonym: float) -> str:
    word = name
    if name in SYNONYMS and rng.random() < p_synonym:
        word = SYNONYMS[name][int(rng.integers(len(SYNONYMS[name])))]
    if count == 1:
        return ("an " if word[0].lower() in "aeiou" else "a ") + word
    amount = VAGUE[int(rng.integers(len(VAGUE)))] if rng.random() < 0.3 else NUMBERS.get(count, "many")
    return f"{amount} {_plural(word)}"


def make_caption(rng: np.random.Generator, cfg: SyntheticConfig,
                 object_classes: list[int]) -> tuple[str, list[int], bool]:
    """Caption for objects of these classes; returns (caption, mentioned class indices, one left out)."""
    counts: dict[int, int] = {}
    for c in object_classes:
        counts[c] = counts.get(c, 0) + 1
    unmentioned = len(object_classes) >= 2 and rng.random() < cfg.p_unmentioned
    if unmentioned:
        dropped = object_classes[int(rng.integers(len(object_classes)))]
        counts[dropped] -= 1
    order = [c for c in counts if counts[c] > 0]
    rng.shuffle(order)
    phrases = [_phrase(rng, cfg.classes[c], counts[c], cfg.p_synonym) for c in order]
    if len(phrases) == 2 and rng.random() < 0.4:
        caption = PAIR_TEMPLATES[int(rng.integers(len(PAIR_TEMPLATES)))].format(a=phrases[0], b=phrases[1])
    else:
        objs = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        caption = TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(objs=objs)
    return caption, order, unmentioned


def render_scene(cfg: SyntheticConfig, seed: int, split: str, index: int) -> Scene:
    """Render image ``index`` of ``split``: a pure function of (config, seed, split, index)."""
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    image = cluttered_background(rng, cfg.image_size, cfg.background)
    owner, object_classes = _place_objects(rng, cfg, image)
    lut = np.array([0] + [c + 1 for c in object_classes], dtype=np.uint8)
    label = lut[owner.astype(np.int64) + 1]  # owner -1 (background) -> 0
    caption, mentioned, unmentioned = make_caption(rng, cfg, object_classes)
    return Scene(image, label, object_classes, caption, mentioned, unmentioned)
