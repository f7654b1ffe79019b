"""One caption-shard sample -> tensors: image, caption, masked caption, answer prompt, paired image.

The loader (loader.py) streams, shuffles, pairs and batches; this module says what one sample becomes
and why it may be skipped (paper sections 3.2-3.3; reference sections 3, 4.3, 4.4, 5.5, 5.6):
- ``image``: decoded and augmented (transforms.py). Stage 1 = timm's DeiT recipe (RandomResizedCrop 0.08-1, RandAugment
  m9, random erasing 0.25); stage 2 = RandomResizedCrop(0.4-1) + horizontal flip. ImageNet mean/std.
- ``caption``: BERT WordPiece ids, padded to ``max_length`` (77), with the attention mask.
- ``question``: the caption with every entity mention replaced by ``tokenizer.mask_token`` in place.
- ``answer``: a template prefix + the unique canonical entities joined by " and ".
- with ``pairs``: ``cross_image``, another image sharing an entity (pairing.py, in-stream pool; same
  transform, independent draw) and ``cross_entity``, "A photo of <shared entity>".

Decisions, each a deviation or a clarification of the released code:
- Entity spans come from the shard's json (``entity_spans``, written by prepare_captions) so spaCy need
  not run in workers; without them the matcher runs on the fly. Entities are the unique canonicals of
  the spans the model can actually read (see long captions).
- Captions longer than ``max_length`` tokens are KEPT and truncated by the tokenizer as in the paper;
  entities after the cut are neither masked nor put in the answer (the question could not contain them),
  and the sample is counted as ``truncated_caption``.
- Captions naming no entity are KEPT for the contrastive loss, as the reference does, with
  ``has_entity=False`` so the entity and mask losses can leave them out (counted as ``no_entity``).
- Bad samples are skipped and counted by reason, never replaced: missing_image, missing_caption,
  corrupt_image, bad_utf8, empty_caption, caption_too_long (over ``MAX_CAPTION_CHARS``), bad_json (also
  JSON nested too deeply, and spans that are not integers, such as 1e999 or NaN; see ``shardio.load_json``)
  plus the shard-level reasons of ``read_shard``: unreadable_shard, truncated_shard.
"""

from __future__ import annotations

import io
import random
from collections import Counter
from typing import Any, Iterator

import torch
from PIL import Image

from ovseg.data.captions.entities import EntityMatcher, answer_prompt, answer_prompts, mask_spans, unique_entities
from ovseg.data.captions.transforms import build_image_transform
from ovseg.data.shardio import IMG2DATASET, SkipCounter, json_int, load_json, read_tar

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
# spaCy's default ``nlp.max_length``: the entity matcher refuses longer texts. Real captions are a few hundred
# characters and the model reads 77 tokens, so a longer one is skipped rather than cut (docs/data.md).
MAX_CAPTION_CHARS = 1_000_000

CROSS_PROMPT = "A photo of {}"
UNPAIRED_PROMPT = ""  # the cross-image prompt of a sample with no partner (its mask loss is off)
ENTITY_PROMPT = "a photo of a {}."  # the multi-label loss's prompt: the zero-shot protocol's template


class SkipSample(Exception):
    """A sample that cannot be used; ``reason`` is the counter name."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def read_shard(url: str, counter: SkipCounter) -> Iterator[dict]:
    """Samples ``{"__key__", "__url__", ext: bytes, ...}`` of one img2dataset shard, in file order.

    The loader and ``prepare`` both read shards through this, so a shard one accepts the other accepts too.
    Shard problems are counted in ``counter`` (``unreadable_shard``, ``truncated_shard``; see
    ``shardio.read_tar`` and its ``IMG2DATASET`` layout).
    """
    for key, members in read_tar(url, counter, IMG2DATASET):
        sample = {"__key__": key, "__url__": url}
        sample.update((ext, data) for _, ext, data in members)
        yield sample


def image_bytes(raw: dict) -> bytes:
    for ext in IMAGE_EXTS:
        if ext in raw:
            return raw[ext]
    raise SkipSample("missing_image", f"no {'/'.join(IMAGE_EXTS)} file")


def read_caption(raw: dict) -> str:
    if "txt" not in raw:
        raise SkipSample("missing_caption", "no .txt file")
    try:
        text = raw["txt"].decode("utf-8")
    except UnicodeDecodeError as exn:
        raise SkipSample("bad_utf8", str(exn)) from None
    text = text.strip()
    if not text:
        raise SkipSample("empty_caption")
    if len(text) > MAX_CAPTION_CHARS:
        raise SkipSample("caption_too_long", f"{len(text)} characters, over {MAX_CAPTION_CHARS}")
    return text


def decode_image(data: bytes) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")  # convert() forces a full decode: truncated bytes raise here
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exn:
        raise SkipSample("corrupt_image", str(exn)) from None


def read_spans(raw: dict, caption: str) -> list[tuple[int, int, str]] | None:
    """Entity spans stored by prepare_captions, checked against the caption; None when absent."""
    if "json" not in raw:
        return None
    try:
        meta = load_json(raw["json"])
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
        spans = meta.get("entity_spans")
        if spans is None:
            return None
        spans = [(json_int(s, "a span start"), json_int(e, "a span end"), _json_str(c)) for s, e, c in spans]
    except (ValueError, TypeError) as exn:
        raise SkipSample("bad_json", str(exn)) from None
    if any(not 0 <= s < e <= len(caption) for s, e, _ in spans):
        raise SkipSample("bad_json", f"entity_spans {spans} do not fit a caption of {len(caption)} characters")
    return spans


def _json_str(value) -> str:
    if not isinstance(value, str):
        raise ValueError(f"a span's entity must be a string, got {value!r}")
    return value


class SampleBuilder:
    """Turns one raw shard sample into tensors (everything but the pairing); runs in loader workers."""

    def __init__(self, tokenizer, *, image_size: int, stage: int, max_length: int = 77,
                 matcher: EntityMatcher | None = None, entity_prompts: bool = False):
        if tokenizer.mask_token is None:
            raise ValueError("the tokenizer has no mask token; entity completion needs one (e.g. BERT's [MASK])")
        self.tokenizer = tokenizer
        self.entity_prompts = entity_prompts  # tokenized "a photo of a {entity}." per entity (multi-label loss)
        self.max_length = max_length
        self.transform = build_image_transform(stage, image_size)
        self.matcher = matcher or EntityMatcher()
        # what decides a built sample besides the tokenizer and vocabulary (a stored loader position is tied to it)
        self.settings = {"image_size": image_size, "stage": stage, "max_length": max_length,
                         "entity_prompts": entity_prompts}

    def tokenize(self, text: str, offsets: bool = False) -> dict:
        return self.tokenizer(text, padding="max_length", truncation=True, max_length=self.max_length,
                              return_offsets_mapping=offsets)

    def __call__(self, raw: dict, rng: random.Random, flags: Counter) -> dict[str, Any]:
        payload = image_bytes(raw)
        caption = read_caption(raw)
        spans = read_spans(raw, caption)
        image = decode_image(payload)
        return {"key": raw["__key__"], "payload": payload, "image": self.transform(image),
                **self.text_fields(caption, spans, rng, flags)}

    def _visible(self, caption: str, spans, flags: Counter | None):
        """(caption tokens, the caption as far as the tokenizer keeps it, its entity spans within that part)."""
        enc = self.tokenize(caption, offsets=True)
        # The last character the tokenizer kept: text after it never reaches the model.
        visible = max(end for _, end in enc["offset_mapping"])
        if visible == 0:
            raise SkipSample("empty_caption", "no token survives tokenization")
        if sum(enc["attention_mask"]) == self.max_length and visible < len(caption):
            if flags is not None:
                flags["truncated_caption"] += 1
            caption = caption[:visible]
        if spans is None:
            spans = self.matcher.match(caption)
        return enc, caption, [s for s in spans if s[1] <= visible]

    def possible_texts(self, caption: str, spans) -> list[str]:
        """Every text this caption can give the text tower, whatever the random draws: the caption (as far as
        the tokenizer keeps it), its masked question, the answer under each template, and its entity (when on)
        and cross-image prompts. The text cache's pre-pass computes these ahead of training (``Pretrainer``)."""
        _, caption, spans = self._visible(caption, spans, None)
        entities = unique_entities(spans)
        texts = [caption, mask_spans(caption, spans, self.tokenizer.mask_token), *answer_prompts(entities)]
        if self.entity_prompts:
            texts += [ENTITY_PROMPT.format(e) for e in entities]
        return texts + [CROSS_PROMPT.format(e) for e in entities] + [UNPAIRED_PROMPT]

    def token_rows(self, texts: list[str]) -> list[list[int]]:
        """The real token ids of each text, tokenized as ``tokenize`` does (one batched call)."""
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        return [list(ids) for ids in enc["input_ids"]]

    def text_fields(self, caption: str, spans, rng: random.Random, flags: Counter) -> dict[str, Any]:
        """Caption, masked-entity question and answer prompt tokens (``spans`` None: match on the fly)."""
        enc, caption, spans = self._visible(caption, spans, flags)
        entities = unique_entities(spans)
        question = self.tokenize(mask_spans(caption, spans, self.tokenizer.mask_token))
        answer = self.tokenize(answer_prompt(entities, rng))
        extra = {}
        if self.entity_prompts:
            extra["entity_prompts"] = {e: self.tokenize(ENTITY_PROMPT.format(e)) for e in entities}
        return {
            **extra,
            "entities": entities,
            "caption_ids": enc["input_ids"], "caption_mask": enc["attention_mask"],
            "question_ids": question["input_ids"], "question_mask": question["attention_mask"],
            "answer_ids": answer["input_ids"], "answer_mask": answer["attention_mask"],
            "has_entity": bool(entities),
        }

    def add_partner(self, sample: dict, partner) -> dict:
        """Attach the paired image and its "A photo of <entity>" prompt; zeros when unpaired."""
        if partner is None:
            sample["cross_image"] = torch.zeros_like(sample["image"])
            prompt = self.tokenize(UNPAIRED_PROMPT)
        else:
            _, entity, partner_bytes = partner
            sample["cross_image"] = self.transform(decode_image(partner_bytes))
            prompt = self.tokenize(CROSS_PROMPT.format(entity))
        sample["cross_entity_ids"], sample["cross_entity_mask"] = prompt["input_ids"], prompt["attention_mask"]
        sample["has_pair"] = partner is not None
        return sample


TENSOR_KEYS = ("image", "caption_ids", "caption_mask", "question_ids", "question_mask", "answer_ids",
               "answer_mask", "has_entity")
PAIR_KEYS = ("cross_image", "cross_entity_ids", "cross_entity_mask", "has_pair")


def collate(samples: list[dict], pairs: bool) -> dict[str, torch.Tensor]:
    """Stack samples into the batch dict; ids and masks are int64 (B, L), flags bool (B,)."""
    out = {}
    for name in TENSOR_KEYS + (PAIR_KEYS if pairs else ()):
        values = [s[name] for s in samples]
        if isinstance(values[0], torch.Tensor):
            out[name] = torch.stack(values)
        elif isinstance(values[0], bool):
            out[name] = torch.tensor(values, dtype=torch.bool)
        else:
            out[name] = torch.tensor(values, dtype=torch.long)
    if "entity_prompts" in samples[0]:
        out.update(entity_batch([s["entity_prompts"] for s in samples]))
    return trim_padding(out)


def trim_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the trailing token columns that are padding in every row of ``*_ids``/``*_mask`` pairs.

    Samples are tokenized one by one to ``max_length`` (77 in the paper, 32 in tiny) while captions average
    about 10-15 tokens; every text path masks padded keys and pools at [CLS], so the shorter batch gives the
    same embeddings for a fraction of the text towers' compute.
    """
    for key in [k for k in batch if k.endswith("_mask")]:
        ids_key = key[: -len("_mask")] + "_ids"
        if ids_key not in batch:
            continue
        mask = batch[key]
        used = mask.reshape(-1, mask.shape[-1]).any(0).nonzero()
        keep = int(used.max()) + 1 if len(used) else 1
        batch[key] = mask[..., :keep].contiguous()
        batch[ids_key] = batch[ids_key][..., :keep].contiguous()
    return batch


def entity_batch(prompts: list[dict[str, dict]]) -> dict[str, torch.Tensor]:
    """The batch's entity vocabulary for the multi-label loss: one prompt per distinct entity (sorted) as
    ``class_ids``/``class_mask`` (C, L) and ``entity_targets`` (B, C), 1 where a caption names the entity.
    Empty when no caption in the batch names an entity."""
    vocab = sorted({e for p in prompts for e in p})
    if not vocab:
        return {}
    tokens = {e: p[e] for p in prompts for e in p}  # the same prompt tokenizes the same way in every sample
    targets = torch.zeros(len(prompts), len(vocab))
    for i, p in enumerate(prompts):
        for e in p:
            targets[i, vocab.index(e)] = 1.0
    return {"class_ids": torch.tensor([tokens[e]["input_ids"] for e in vocab], dtype=torch.long),
            "class_mask": torch.tensor([tokens[e]["attention_mask"] for e in vocab], dtype=torch.long),
            "entity_targets": targets}
