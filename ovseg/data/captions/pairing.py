"""Cross-image pairs that share a canonical entity (paper section 3.3; reference sections 4.4, 5.3, 10.3).

The mask-consistency loss needs, for every image, a second image that shows one of its entities. The
released code precomputed 10 partners per image and loaded the partner from random-access storage (a
second disk read per sample); it also let an image be paired with itself and paired on surface words
("men" and "man" never met). Two ways are provided here, both on canonical entities, never self-pairs,
deterministic for a seed:

- ``PairPool`` / :func:`pair_in_stream`: the loader's way. Caption shards are streamed tar files, so a
  partner is taken from a bounded pool of recently read samples that is indexed by entity. A sample whose
  entities have no partner in the pool yet waits (at most ``max_wait`` later samples) and is offered the
  pool again when it leaves the queue; only if still alone, or when the stream ends, is it emitted
  unpaired (counted as ``unpaired`` and flagged ``has_pair=False`` so the mask loss leaves it out).
  Samples without any entity are passed through unpaired. No disk re-read. ``StreamPairer`` is the same
  with its pool and queue in the open, so that a resumed loader can rebuild them (``position.py``).
- :func:`pair_candidates`: the offline way, used by ``platform/prepare_captions.py``: up to ``k`` other
  keys sharing an entity, for users whose storage is random-access.
"""

from __future__ import annotations

import random
import zlib
from collections import Counter, deque
from typing import Any, Iterable, Iterator, Mapping, Sequence


class PairPool:
    """A bounded pool of recent samples, indexed by canonical entity.

    Items are ``(key, entities, payload)``; the payload is whatever the caller needs to rebuild the
    partner (the loader keeps the encoded image bytes, a few tens of kB, instead of decoded pixels).
    """

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"pair pool capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._order: deque = deque()
        self._by_entity: dict[str, deque] = {}

    def __len__(self) -> int:
        return len(self._order)

    def keys(self) -> list[str]:
        """The pooled samples' keys, oldest first."""
        return [item[0] for item in self._order]

    def entities(self) -> list[tuple]:
        """The pooled samples' entities, oldest first."""
        return [item[1] for item in self._order]

    def add(self, key: str, entities: Sequence[str], payload: Any) -> None:
        item = (key, tuple(entities), payload)
        self._order.append(item)
        for e in item[1]:
            self._by_entity.setdefault(e, deque()).append(item)
        if len(self._order) > self.capacity:
            old = self._order.popleft()
            # The oldest item overall is also the oldest in each of its entity queues.
            for e in old[1]:
                queue = self._by_entity[e]
                queue.popleft()
                if not queue:
                    del self._by_entity[e]

    def find(self, key: str, entities: Sequence[str], rng: random.Random):
        """A random pooled item sharing an entity with ``entities`` whose key differs from ``key``.

        The shared entity is drawn uniformly among those with a partner, then the partner uniformly.
        Returns ``(partner_key, shared_entity, payload)`` or None.
        """
        options = []
        for e in dict.fromkeys(entities):
            queue = self._by_entity.get(e)
            if queue and any(item[0] != key for item in queue):
                options.append(e)
        if not options:
            return None
        entity = rng.choice(options)
        others = [item for item in self._by_entity[entity] if item[0] != key]
        partner = rng.choice(others)
        return partner[0], entity, partner[2]


def pair_in_stream(samples: Iterable[Mapping], rng: random.Random, counts: Counter, *, pool_size: int = 1024,
                   max_wait: int | None = None, payload_key: str = "payload") -> Iterator[tuple]:
    """Yield ``(sample, partner)`` for each sample; ``partner`` is ``(key, entity, payload)`` or None.

    ``sample`` needs ``"key"``, ``"entities"`` and ``payload_key``. Every input sample is yielded exactly
    once; a waiting sample is delayed by at most ``max_wait`` samples (default: half the pool).
    """
    yield from StreamPairer(rng, counts, pool_size=pool_size, max_wait=max_wait, payload_key=payload_key)(samples)


class StreamPairer:
    """:func:`pair_in_stream` with its state in the open: ``pool``, ``waiting`` (samples still looking for a
    partner, oldest first) and ``refs`` (whatever each pooled sample carried under ``"_ref"``, aligned with the
    pool's items), so that the caption loader can store the state and rebuild it on resume. Calling it again
    on the rest of the stream continues exactly where it stopped: every yield ends one step of the loop."""

    def __init__(self, rng: random.Random, counts: Counter, *, pool_size: int = 1024, max_wait: int | None = None,
                 payload_key: str = "payload"):
        self.rng, self.counts, self.payload_key = rng, counts, payload_key
        self.pool = PairPool(pool_size)
        self.refs: deque = deque(maxlen=pool_size)  # evicts with the pool: both drop their oldest item
        self.max_wait = pool_size // 2 if max_wait is None else max_wait
        self.waiting: deque = deque()

    def add(self, key: str, entities: Sequence[str], payload: Any, ref: Any = None) -> None:
        self.pool.add(key, entities, payload)
        self.refs.append(ref)

    def _settle(self, sample):
        partner = self.pool.find(sample["key"], sample["entities"], self.rng)
        if partner is None:
            self.counts["unpaired"] += 1
        return sample, partner

    def __call__(self, samples: Iterable[Mapping]) -> Iterator[tuple]:
        pool, waiting = self.pool, self.waiting
        for sample in samples:
            if not sample["entities"]:
                yield sample, None  # nothing to share; counted as no_entity where the entities are found
                continue
            partner = pool.find(sample["key"], sample["entities"], self.rng)
            self.add(sample["key"], sample["entities"], sample[self.payload_key], sample.get("_ref"))
            if partner is not None:
                yield sample, partner
                continue
            waiting.append(sample)
            if len(waiting) > self.max_wait:
                yield self._settle(waiting.popleft())
        while waiting:
            yield self._settle(waiting.popleft())


def stable_seed(seed: int, *parts: Any) -> int:
    """A seed that depends only on ``seed`` and ``parts`` (not on Python's per-process hash salt)."""
    return zlib.crc32(repr((seed,) + parts).encode()) ^ (seed & 0xFFFFFFFF)


def pair_candidates(entities_by_key: Mapping[str, Sequence[str]], k: int, seed: int) -> dict[str, list[tuple]]:
    """For every key, up to ``k`` distinct ``(other_key, shared_entity)`` drawn with ``seed``.

    Each draw picks one of the sample's entities uniformly, then a random other sample holding it, like
    the released ``makepair`` but on canonical entities and without the sample itself. The result for a
    key depends on the seed, the key and the index, not on the order keys are processed in.
    """
    index: dict[str, list[str]] = {}
    for key in sorted(entities_by_key):
        for e in dict.fromkeys(entities_by_key[key]):
            index.setdefault(e, []).append(key)
    out: dict[str, list[tuple]] = {}
    for key, entities in entities_by_key.items():
        ents = [e for e in dict.fromkeys(entities) if len(index.get(e, ())) > 1]
        if not ents or k <= 0:
            out[key] = []
            continue
        rng = random.Random(stable_seed(seed, key))
        available = sum(len(index[e]) - 1 for e in ents)
        chosen: dict[str, str] = {}
        for _ in range(4 * k):  # bounded retries: duplicates and self draws are thrown back
            if len(chosen) >= min(k, available):
                break
            e = rng.choice(ents)
            other = rng.choice(index[e])
            if other != key and other not in chosen:
                chosen[other] = e
        out[key] = list(chosen.items())
    return out
