"""Kinds of partner site, in one registry: what a site of each kind holds and how it trains.

A kind names the folder its training shards live in (``captions/`` or ``seg/``), the split of a synthetic
world a simulated site of that kind is cut from, how a sample is given a class for the non-IID split, and
the endless batches its round trains on. Adding a kind of site is one class decorated with ``@register``;
``Site``, ``local_train`` and ``split_world`` read everything else from here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import numpy as np

from ..config import Config

KINDS: dict[str, "SiteKind"] = {}


def register(cls: type["SiteKind"]) -> type["SiteKind"]:
    KINDS[cls.name] = cls()
    return cls


def kind_of(name: str) -> "SiteKind":
    if name not in KINDS:
        raise ValueError(f"site kind must be one of {tuple(KINDS)}, got {name!r}")
    return KINDS[name]


class SiteKind:
    name: str
    train_dir: str  # the site's training shards: <site>/<train_dir>/*.tar
    world_split: str  # the synthetic world's split that simulated sites of this kind are cut from
    has_val: bool  # whether simulated sites keep a labelled val/ split of their samples

    def classify(self, members: list[tuple[str, bytes]], classes: list[str]) -> int | None:
        """The class a sample counts as for the Dirichlet split (None: no class)."""
        raise NotImplementedError

    def batches(self, cfg: Config, model, shards: list[str], seed: int) -> tuple[Iterator[dict], callable]:
        """(endless training batches, a function giving the skip counts so far)."""
        raise NotImplementedError


@register
class CaptionKind(SiteKind):
    name, train_dir, world_split, has_val = "caption", "captions", "train", False

    def classify(self, members, classes):
        text = next((d.decode("utf-8", "replace") for n, d in members if n.endswith(".txt")), "")
        best = None
        for i, name in enumerate(classes):
            m = re.search(rf"\b{re.escape(name)}\b", text.lower())
            if m and (best is None or m.start() < best[0]):
                best = (m.start(), i)
        return None if best is None else best[1]

    def batches(self, cfg, model, shards, seed):
        from ..data.captions.loader import build_caption_loader
        from ..data.captions.transforms import transform_kind

        batch = cfg.fed.local_batch
        loader = build_caption_loader(shards, model.tokenizer.hf, batch_size=batch,
                                      image_size=cfg.model.vision.img_size,
                                      stage=transform_kind(cfg.data.augment, stage=1), num_workers=0, seed=seed,
                                      shuffle_buffer=min(cfg.data.shuffle_buffer, 256),
                                      max_length=cfg.model.text.max_length, rank=0, world_size=1,
                                      entity_prompts=cfg.loss.needs_entity_prompts)

        def endless():
            epoch = 0
            while True:
                loader.set_epoch(epoch)
                produced = 0
                for b in loader:
                    produced += 1
                    yield b
                if produced == 0:
                    raise ValueError(f"{shards[0]}...: the caption shards hold fewer readable samples than one batch "
                                     f"of {batch} (counts: {loader.counts.as_dict()})")
                epoch += 1

        return endless(), lambda: loader.counts.as_dict().get("skipped", {})


@register
class SegmentationKind(SiteKind):
    name, train_dir, world_split, has_val = "segmentation", "seg", "seg", True

    def classify(self, members, classes):
        from ..data.codecs import decode_label

        raw = next((d for n, d in members if n.endswith(".seg.png")), None)
        meta = next((d for n, d in members if n.endswith(".json")), None)
        if raw is None or meta is None:
            return None
        names = json.loads(meta)["classes"]
        label = decode_label(raw)
        ids, counts = np.unique(label[(label != 255) & (label < len(names))], return_counts=True)
        fg = [(c, i) for i, c in zip(ids, counts) if names[i] != "background"]
        if not fg:
            return None
        name = names[max(fg)[1]]
        return classes.index(name) if name in classes else None

    def batches(self, cfg, model, shards, seed):
        from ..data.segmentation.batches import SegBatchLoader

        # the augmentation the config gives caption data: "flip" is a resize and a flip, no crop
        scale = (1.0, 1.0) if cfg.data.augment == "flip" else (0.5, 1.0)
        loader = SegBatchLoader(shards, model.tokenizer.hf, image_size=cfg.model.vision.img_size,
                                batch_size=cfg.fed.local_batch, seed=seed, max_length=cfg.model.text.max_length,
                                shuffle=min(cfg.data.shuffle_buffer, 256), scale=scale)
        return iter(loader), loader.counter.as_dict
