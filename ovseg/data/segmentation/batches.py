"""Training batches and an evaluation split from segmentation shards (partner sites with labelled masks).

A segmentation site trains the same model with the same engine as a caption site; its batches carry what
both kinds of supervision need (DESIGN.md, data flow):

- ``image`` (B, 3, S, S) and ``label`` (B, S, S): one random resized crop (area 0.5-1, aspect 3/4-4/3) and
  a horizontal flip applied to both, the image resized bilinearly and the label by nearest neighbour;
  ImageNet mean/std as for caption data. Label values index the batch's class vocabulary; 255 = ignore.
- ``class_ids``/``class_mask`` (C, L): the prompt "a photo of a {name}." for each class name that any
  sample of the batch declares (sites may use different vocabularies; the batch takes their union in
  order of appearance). The supervised mask loss classifies each pixel among these prompts.
- a caption made from the class names present in the crop, largest first ("a photo of a cat and a dog."),
  with the masked-entity question and answer of the caption pipeline, so the contrastive and entity losses
  run on segmentation data too. Repeated captions within a batch are left out of the contrast
  (``caption_valid``); crops with no named foreground are left out of both text losses.

Shards are read by ``shards.iter_seg_shards``: bad samples are skipped and counted, never replaced. A
sample whose class names would grow the batch's vocabulary past 255 (label 255 is the ignore value) waits
for no one: it is skipped and counted as ``too_many_classes``.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from ovseg.data.captions.loader import shuffle_buffer
from ovseg.data.captions.sample import SampleBuilder, trim_padding
from ovseg.data.captions.transforms import IMAGENET_MEAN, IMAGENET_STD
from ovseg.data.codecs import IGNORE
from ovseg.data.segmentation.shards import MAX_CLASSES, SKIP_REASONS, iter_seg_shards
from ovseg.data.shardio import SkipCounter, expand_urls

PROMPT = "a photo of a {}."
BACKGROUND_NAMES = ("background",)


def caption_from_classes(names: Sequence[str]) -> str:
    """``["cat", "dog"]`` -> "a photo of a cat and a dog."; no names -> ""."""
    if not names:
        return ""
    return "a photo of " + " and ".join(f"a {n}" for n in names) + "."


def random_resized_crop(image: np.ndarray, label: np.ndarray, size: int, rng: random.Random,
                        scale: tuple[float, float] = (0.5, 1.0), flip: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One crop box and flip for both: image bilinear, label nearest, to ``size`` x ``size``."""
    h, w = label.shape
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = int(round(np.sqrt(target * ratio))), int(round(np.sqrt(target / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
            break
    else:  # the centre square, as torchvision falls back to
        cw = ch = min(h, w)
        x0, y0 = (w - cw) // 2, (h - ch) // 2
    box = (x0, y0, x0 + cw, y0 + ch)
    img = Image.fromarray(image).resize((size, size), Image.BILINEAR, box=box)
    lab = Image.fromarray(label.astype(np.int32)).resize((size, size), Image.NEAREST, box=box)
    img_a, lab_a = np.asarray(img), np.asarray(lab).astype(np.int64)
    if flip and rng.random() < 0.5:
        img_a, lab_a = img_a[:, ::-1], lab_a[:, ::-1]
    return np.ascontiguousarray(img_a), np.ascontiguousarray(lab_a)


def normalize(image: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


class SegBatchLoader:
    """Endless training batches from segmentation shards, epoch after epoch (shards and samples shuffled).

    ``counter`` holds the skip counts; ``epoch`` and ``batches_in_epoch`` say where the stream is.
    """

    def __init__(self, urls, tokenizer, *, image_size: int, batch_size: int, seed: int = 0, max_length: int = 77,
                 shuffle: int = 256, scale: tuple[float, float] = (0.5, 1.0)):
        self.urls = expand_urls(urls, check=False)
        if not self.urls:
            raise ValueError(f"no segmentation shards match {urls!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.builder = SampleBuilder(tokenizer, image_size=image_size, stage=2, max_length=max_length)
        self.image_size, self.batch_size, self.seed = image_size, batch_size, seed
        self.shuffle, self.scale = shuffle, scale
        self.counter = SkipCounter(SKIP_REASONS)
        self.flags: Counter[str] = Counter()
        self.epoch = 0
        self._prompt_cache: dict[str, tuple[list[int], list[int]]] = {}

    def _prompt(self, name: str) -> tuple[list[int], list[int]]:
        if name not in self._prompt_cache:
            enc = self.builder.tokenize(PROMPT.format(name))
            self._prompt_cache[name] = (enc["input_ids"], enc["attention_mask"])
        return self._prompt_cache[name]

    def _samples(self, rng: random.Random) -> Iterator[tuple]:
        urls = list(self.urls)
        rng.shuffle(urls)
        yield from shuffle_buffer(iter_seg_shards(urls, self.counter), self.shuffle, rng)

    def _example(self, sample, rng: random.Random) -> dict:
        image, label, classes, key = sample
        img, lab = random_resized_crop(image, label, self.image_size, rng, self.scale)
        ids, counts = np.unique(lab[lab != IGNORE], return_counts=True)
        present = [classes[i] for i in ids[np.argsort(-counts, kind="stable")]
                   if classes[i].lower() not in BACKGROUND_NAMES]
        caption = caption_from_classes(present)
        text = self.builder.text_fields(caption or "background", None, rng, self.flags)
        if not present:
            text["has_entity"] = False
        return {"image": normalize(img), "label": lab, "classes": classes, "caption": caption, **text}

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        vocab: dict[str, int] = {}
        for ex in examples:
            for name in ex["classes"]:
                vocab.setdefault(name, len(vocab))
        labels = []
        for ex in examples:
            lut = np.array([vocab[n] for n in ex["classes"]] + [IGNORE], dtype=np.int64)
            lab = ex["label"]
            labels.append(np.where(lab == IGNORE, IGNORE, lut[np.minimum(lab, len(ex["classes"]))]))
        prompts = [self._prompt(n) for n in vocab]
        seen: set[str] = set()
        caption_valid = []
        for ex in examples:
            caption_valid.append(bool(ex["caption"]) and ex["caption"] not in seen)
            seen.add(ex["caption"])
        batch = {
            "image": torch.stack([ex["image"] for ex in examples]),
            "label": torch.from_numpy(np.stack(labels)),
            "class_ids": torch.tensor([p[0] for p in prompts], dtype=torch.long),
            "class_mask": torch.tensor([p[1] for p in prompts], dtype=torch.long),
            "caption_valid": torch.tensor(caption_valid, dtype=torch.bool),
            "has_entity": torch.tensor([ex["has_entity"] for ex in examples], dtype=torch.bool),
            # where the supervised loss's background term applies (-1: no class of the batch is background)
            "background_class": torch.tensor(next((i for n, i in vocab.items() if n.lower() in BACKGROUND_NAMES),
                                                  -1), dtype=torch.long),
        }
        for name in ("caption_ids", "caption_mask", "question_ids", "question_mask", "answer_ids", "answer_mask"):
            batch[name] = torch.tensor([ex[name] for ex in examples], dtype=torch.long)
        return trim_padding(batch)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            rng = random.Random(self.seed * 100003 + self.epoch)
            pending: list[dict] = []
            names: set[str] = set()  # the pending batch's class vocabulary
            produced = 0
            for sample in self._samples(rng):
                if len(names | set(sample[2])) > MAX_CLASSES:
                    self.counter.add("too_many_classes", f"sample {sample[3]}", f"its classes would give the batch "
                                     f"more than {MAX_CLASSES} names, and label {IGNORE} is the ignore value")
                    continue
                names.update(sample[2])
                pending.append(self._example(sample, rng))
                if len(pending) == self.batch_size:
                    yield self.collate(pending)
                    pending, names, produced = [], set(), produced + 1
            self.epoch += 1
            if produced == 0:
                raise ValueError(f"segmentation shards {self.urls[:3]}... hold fewer readable samples than one "
                                 f"batch of {self.batch_size} (skipped: {self.counter.as_dict()})")


class SegShardBenchmark:
    """A labelled split held as segmentation shards, in the benchmark interface ``evaluate`` reads.

    All samples must share one class list (it names the benchmark's classes); loaded into memory, as a
    site's held-out split is small.
    """

    def __init__(self, urls, name: str = "site", bg_thresh: float | None = None):
        self.name, self.bg_thresh = name, bg_thresh
        self.counter = SkipCounter(SKIP_REASONS)
        self.samples: list[tuple[np.ndarray, np.ndarray, str]] = []
        self.class_names: list[str] | None = None
        for image, label, classes, key in iter_seg_shards(urls, self.counter):
            if self.class_names is None:
                self.class_names = list(classes)
            elif list(classes) != self.class_names:
                raise ValueError(f"{name}: sample {key} declares classes {classes}, but earlier samples declare "
                                 f"{self.class_names}; an evaluation split needs one class list")
            self.samples.append((image, label, key))
        if not self.samples:
            raise ValueError(f"{name}: no readable samples in {urls!r} (skipped: {self.counter.as_dict()})")
        if self.class_names[0].lower() not in BACKGROUND_NAMES:
            self.bg_thresh = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, str]:
        return self.samples[i]
