"""The CC4M entity vocabulary and the one matcher used to filter, mask and pair captions.

OVSegmentor (paper section 3.2, reference ovsegmentor.md sections 4.3 and 5) learns from captions that name
at least one of 100 surface words, folded by a synonym list onto 73 canonical entities. The same entities
are used three times: to keep a caption (filtering CC12M down to CC4M), to replace the entity words of a
caption by ``[MASK]`` (the question of masked entity completion) and to pair two images sharing an entity
(cross-image mask consistency). The released code used three different matchers for these steps and a
``word.strip("'s")`` that made 13 classes unmaskable (bus, glass, sofa, sheep, skis, ...). Here ONE spaCy
``PhraseMatcher`` serves all three.

How a caption is matched, and why:
- spaCy's rule-based English tokenizer splits punctuation, possessives and hyphens ("Dogs," -> "Dogs" ",";
  "T-shirt" -> "T" "-" "shirt"), so no string surgery is needed and character offsets stay exact.
- Matching is on the LOWER attribute, so case does not matter ("Dog", "TV", "T-Shirt").
- Inflections come from spaCy's English lemma lookup table (spacy-lookups-data, offline), but only at
  vocabulary-build time: each surface word is expanded to its noun plurals that the table confirms
  (dogs, buses, knives, mice, ladies; skis <-> ski). Matching on the run-time LEMMA attribute was rejected:
  the lookup table lemmatises verb forms too ("built" -> build -> building -> house, "born" -> bear,
  "training" -> train, "skiing" -> skis, "bowling" -> bowl) and is case-sensitive ("Dogs" stays "Dogs").
  Expanding once also leaves the per-caption work to the tokenizer alone, which is what makes
  40k+ captions/s on one core possible (bench/entity_pipeline.py).
- Accepted ambiguity: "glasses" (eyewear) matches glass, "ties"/"trains"/"lights" as verbs match their noun,
  as they do in the reference's WordNet lemmatisation. Words that merely contain an entity ("boxer",
  "caterpillar", "carpet") never match because matching is per token, and neither do hyphenated words made
  with one ("dog-friendly", "cat-like", "car-free"): the tokenizer splits them, so a match touched by an
  in-word hyphen is dropped (the reference, which splits on whitespace, never saw the entity either).
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

# The paper's 100 surface words (reference section 5.1, TOP_CLASSES_1), in the released order.
TOP_CLASSES_1: tuple[str, ...] = tuple("""
people man men woman women girl boy lady kid child children baby student bride groom couple prince princess
car bus truck motorcycle train bicycle boat aeroplane airplane motorbike bike
cup bottle bowl knife spoon glass fork
chair table bench clock laptop light vase plant remote microwave toaster oven mouse keyboard sofa monitor desk tv TV
couch flower refrigerator house building hotel handbag umbrella book backpack phone shirt tie suitcase T-shirt bag box
sink bed toilet cat dog horse bird cow sheep elephant bear zebra giraffe
ball racket skateboard skis snowboard surfboard kite pizza cake apple banana sandwich orange carrot donut
""".split())

# The released synonym map (canonical <- surface words); every other surface word is its own canonical.
SYN_DICT: dict[str, tuple[str, ...]] = {
    "people": ("people", "man", "men", "woman", "women", "girl", "boy", "lady", "kid", "child", "children",
               "baby", "student", "bride", "groom", "couple", "prince", "princess"),
    "aeroplane": ("airplane",), "motorcycle": ("motorbike",), "bicycle": ("bike",), "tv": ("TV",),
    "table": ("desk",), "sofa": ("couch",), "house": ("building", "hotel"), "shirt": ("T-shirt", "T-Shirt"),
    "bag": ("handbag",),
}

# The 73 canonical entities (TOP_UNIQUE_CLASSES), in the released order.
TOP_UNIQUE_CLASSES: tuple[str, ...] = tuple("""
people car bus truck motorcycle train bicycle boat aeroplane cup bottle bowl knife spoon glass fork chair table
bench clock laptop light vase plant remote microwave toaster oven mouse keyboard sofa monitor tv flower refrigerator
house bag umbrella book backpack phone shirt tie suitcase box sink bed toilet cat dog horse bird cow sheep elephant
bear zebra giraffe ball racket skateboard skis snowboard surfboard kite pizza cake apple banana sandwich orange carrot
donut
""".split())

# Our own photo templates for the entity-completion answer; only the text before "{}" is used (section 4.3).
ANSWER_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a good photo of a {}.",
    "a close-up photo of a {}.", "a bright photo of a {}.", "a cropped photo of a {}.", "a blurry photo of a {}.",
    "a photo of the {}.", "a snapshot of a {}.", "a photograph of a {}.", "a low resolution photo of a {}.",
)

# Irregular noun plurals the suffix rules cannot produce; each is kept only if the lemma table agrees.
_IRREGULAR_PLURALS = {"man": "men", "woman": "women", "child": "children", "mouse": "mice", "person": "people",
                      "foot": "feet", "tooth": "teeth", "goose": "geese", "ox": "oxen"}


@dataclass(frozen=True)
class EntityVocab:
    """Surface word (case-insensitive) -> canonical entity. ``canonicals`` keeps the file/paper order."""

    surface_to_canonical: dict[str, str]
    canonicals: tuple[str, ...] = field(default=())

    def __post_init__(self):
        if not self.canonicals:
            seen = dict.fromkeys(self.surface_to_canonical.values())
            object.__setattr__(self, "canonicals", tuple(seen))

    @classmethod
    def default(cls) -> "EntityVocab":
        """The paper's vocabulary: 100 surface words (+ "T-Shirt" from the synonym list) onto 73 entities."""
        syn = {s: c for c, surfaces in SYN_DICT.items() for s in surfaces}
        words = list(TOP_CLASSES_1) + [s for s in syn if s not in TOP_CLASSES_1]
        return cls({w: syn.get(w, w) for w in words}, TOP_UNIQUE_CLASSES)


def load_vocab(path: str | Path) -> EntityVocab:
    """Read a vocabulary file: one canonical entity per line, ``canonical: synonym, synonym, ...``.

    The canonical name is itself a surface word; the part after ``:`` may be empty or absent. Blank
    lines and lines starting with ``#`` are ignored. Matching is case-insensitive; plurals are added
    automatically. A malformed line raises ``ValueError`` naming the file and line.
    """
    path = Path(path)
    mapping: dict[str, str] = {}
    canonicals: list[str] = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exn:
        raise ValueError(f"{path}: vocabulary file is not UTF-8 ({exn})") from None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        head, _, tail = line.partition(":")
        canonical = head.strip()
        synonyms = [s.strip() for s in tail.split(",")] if tail.strip() else []
        where = f"{path}:{lineno}"
        if not canonical or "," in canonical:
            raise ValueError(f"{where}: expected 'canonical: synonym, synonym', got {raw!r}")
        if any(not s for s in synonyms):
            raise ValueError(f"{where}: empty synonym in {raw!r} (doubled or trailing comma?)")
        if canonical in canonicals:
            raise ValueError(f"{where}: canonical entity {canonical!r} is defined twice")
        for surface in [canonical] + synonyms:
            previous = mapping.get(surface.lower())
            if previous is not None and previous != canonical:
                raise ValueError(f"{where}: {surface!r} already maps to {previous!r}")
            mapping[surface.lower()] = canonical
        canonicals.append(canonical)
    if not mapping:
        raise ValueError(f"{path}: vocabulary file has no entries")
    return EntityVocab(mapping, tuple(canonicals))


@functools.lru_cache(maxsize=1)
def _lemma_table():
    """spaCy's English lemma lookup table (spacy-lookups-data, read offline); loaded once per process."""
    from spacy.lookups import load_lookups

    return load_lookups("en", ["lemma_lookup"]).get_table("lemma_lookup")


def surface_forms(word: str, table) -> set[str]:
    """A surface word and its noun inflections, lower-cased (see the module docstring for the policy)."""
    word = word.lower()
    head, sep, last = word.rpartition("-")  # "t-shirt": inflect the last part only
    prefix = head + sep
    lemma = table.get(last, last)
    # A plural surface word ("skis", "men") is inflected from its singular, which is matched too.
    base = lemma if lemma != last and (last.endswith("s") or last in _IRREGULAR_PLURALS.values()) else last
    candidates = {base + "s", base + "es", _IRREGULAR_PLURALS.get(base, "")}
    if base.endswith("y"):
        candidates.add(base[:-1] + "ies")
    if base.endswith(("f", "fe")):
        candidates.add(base.rstrip("ef") + "ves")
    confirmed = {c for c in candidates - {""} if table.get(c, None) == base}
    # Keep the plurals the table confirms; a word it has no plural for ("tv", "t-shirt") gets "+s".
    forms = {last, base} | (confirmed or {base + "s"})
    return {prefix + f for f in forms}


def answer_prompts(entities: Sequence[str]) -> list[str]:
    """Every entity-completion answer for these entities: each template's prefix + the entities joined by
    " and " (section 4.3), in template order."""
    return [t.split("{}")[0] + " and ".join(entities) for t in ANSWER_TEMPLATES]


def answer_prompt(entities: Sequence[str], rng: random.Random) -> str:
    """The answer under one template drawn from ``rng``."""
    return rng.choice(answer_prompts(entities))


class EntityMatcher:
    """Finds vocabulary entities in captions; one instance serves filtering, masking and pairing.

    The spaCy pipeline is built lazily and not pickled, so a matcher can be handed to DataLoader workers
    and process pools cheaply; each process builds its own on first use (1-2 s with the spaCy import).
    """

    def __init__(self, vocab: EntityVocab | None = None):
        self.vocab = vocab or EntityVocab.default()
        self._nlp = None
        self._matcher = None

    def __getstate__(self):
        return {"vocab": self.vocab, "_nlp": None, "_matcher": None}

    def _build(self):
        import spacy
        from spacy.matcher import PhraseMatcher

        # A blank English pipeline is only the tokenizer: no tagger, parser or NER to disable.
        nlp = spacy.blank("en")
        table = _lemma_table()
        matcher = PhraseMatcher(nlp.vocab, attr="LOWER")
        by_canonical: dict[str, set[str]] = {}
        for surface, canonical in self.vocab.surface_to_canonical.items():
            by_canonical.setdefault(canonical, set()).update(surface_forms(surface, table))
        for canonical, forms in by_canonical.items():
            matcher.add(canonical, [nlp.make_doc(f) for f in sorted(forms)])
        self._nlp, self._matcher = nlp, matcher

    def _spans(self, doc) -> list[tuple[int, int, str]]:
        strings = self._nlp.vocab.strings
        found = sorted(self._matcher(doc), key=lambda m: (m[1], -(m[2] - m[1])))
        spans, last_end = [], 0
        for match_id, start, end in found:
            if start < last_end:  # overlapping ("T-shirt" also contains "shirt"): keep the longest, earliest
                continue
            if _in_hyphenated_word(doc, start, end):  # "dog-friendly", "cat-like", "car-free": no dog, cat, car
                continue
            last = doc[end - 1]
            spans.append((doc[start].idx, last.idx + len(last.text), strings[match_id]))
            last_end = end
        return spans

    def match(self, caption: str) -> list[tuple[int, int, str]]:
        """``(start_char, end_char, canonical)`` for every entity mention, left to right, non-overlapping."""
        if self._nlp is None:
            self._build()
        return self._spans(self._nlp.make_doc(caption))

    def pipe(self, captions: Iterable[str], batch_size: int = 1000) -> list[list[tuple[int, int, str]]]:
        """:meth:`match` over many captions; the batched tokenizer makes this the fast path."""
        if self._nlp is None:
            self._build()
        return [self._spans(doc) for doc in self._nlp.tokenizer.pipe(captions, batch_size=batch_size)]

    def entities(self, caption: str) -> list[str]:
        """Unique canonical entities in order of first appearance."""
        return unique_entities(self.match(caption))

    def mask(self, caption: str, mask_token: str) -> tuple[str, list[str]]:
        """Replace each entity mention by ``mask_token`` in place; return (masked caption, entities)."""
        spans = self.match(caption)
        return mask_spans(caption, spans, mask_token), unique_entities(spans)


def _in_hyphenated_word(doc, start: int, end: int) -> bool:
    """Tokens ``start:end`` are part of a longer hyphenated word: a "-" touches them (no space between) and
    touches a word on its other side. The tokenizer splits "dog-friendly" into "dog" "-" "friendly"; a
    vocabulary phrase that itself holds the hyphen ("T-shirt") is matched whole and is not affected."""
    def joins(dash, left, right) -> bool:
        return dash.text == "-" and not left.whitespace_ and not dash.whitespace_ and right.is_alpha

    if start >= 2 and joins(doc[start - 1], doc[start - 2], doc[start]):
        return True
    return end + 1 < len(doc) and joins(doc[end], doc[end - 1], doc[end + 1])


def unique_entities(spans: Iterable[tuple[int, int, str]]) -> list[str]:
    """The canonical names of ``spans``, de-duplicated, in order of first appearance."""
    return list(dict.fromkeys(c for _, _, c in spans))


def mask_spans(caption: str, spans: Sequence[tuple[int, int, str]], mask_token: str) -> str:
    """Replace the character ``spans`` (sorted, non-overlapping) of ``caption`` by ``mask_token``."""
    parts, pos = [], 0
    for start, end, _ in spans:
        parts.append(caption[pos:start])
        parts.append(mask_token)
        pos = end
    parts.append(caption[pos:])
    return "".join(parts)
