"""Where a caption-loader worker stands in its stream, in a form a resumed run continues without re-reading.

A worker's stream (loader.py) is: its shards in order (``ShardStream``), a shuffle buffer (``ShuffleBuffer``),
the sample builder (decode, augment, tokenize), in stage 2 the pairing pool (``pairing.StreamPairer``), then
batching. Everything random comes from the worker's ``random.Random`` and, for the augmentation, the process's
global generators (Python's ``random``, NumPy's and torch's, which a DataLoader seeds per worker). So right
after a batch the whole future of the stream is fixed by:

- the reader's position: shard index, byte offset of the next sample's first tar header, and its key;
- the shuffle buffer's samples, as ``(shard index, offset)`` references, and whether it is draining;
- the pairing pool (references again, with each sample's entities: no caption matched again, no image
  decoded) and the samples waiting for a partner: those were already decoded and augmented, so each keeps
  the generator states it was built with and is rebuilt from them, the same tensors exactly (the states are
  taken before every stage-2 build, unpacked, about 40 us, and packed only for a sample still waiting);
- the generator states (``rngstate``; the process's globals only in a DataLoader worker process: with
  ``num_workers=0`` they belong to the training process, which stores them itself);
- the skip counter's log throttle; a CRC of every referenced sample's key, checked when they are read back.

A resumed worker seeks to the offset (``shardio.read_tar_at``: the members before it are never read) and
reads back only the referenced samples' bytes (``shardio.read_tar_samples``: one jump per sample). The
in-flight state (``capture``) is a small dict of ints and bytes that travels inside each batch as the skip
counts do; ``encode``/``decode`` turn it into JSON (base64 of zlib) for the checkpoint. Nothing here
unpickles: a checkpoint from elsewhere cannot run code.
"""

from __future__ import annotations

import random
import zlib
from array import array
from collections import Counter
from typing import Iterable, Iterator

from ovseg.data.captions.rngstate import (apply_snapshot, from_text, globals_bytes, set_globals, snapshot,
                                          snapshot_bytes, split_snapshots, to_text)
from ovseg.data.shardio import IMG2DATASET, SkipCounter, read_tar_at, read_tar_samples, seekable_tar

POSITION_FORMAT = "ovseg-caption-position/1"
_BYTES_FIELDS = ("buffer", "pool", "pool_entities", "waiting", "snaps", "rngs")
_UNIT, _RECORD = "\x1f", "\x1e"  # ASCII separators: entities within a pooled sample, pooled samples
assert array("q").itemsize == 8


class StreamChanged(RuntimeError):
    """The shards no longer hold the samples a stored position points at."""


def pack_refs(refs: Iterable[tuple[int, int]]) -> bytes:
    return array("q", [v for ref in refs for v in ref]).tobytes()


def unpack_refs(data: bytes) -> list[tuple[int, int]]:
    flat = array("q", data)
    return list(zip(flat[0::2], flat[1::2]))


# ------------------------------------------------------------------ the stream's stages


def _raw(url: str, key: str, members, ref: tuple[int, int]) -> dict:
    sample = {"__key__": key, "__url__": url}
    sample.update((ext, data) for _, ext, data in members)
    sample["__ref__"] = ref
    return sample


def _from(url: str, counter: SkipCounter, start: int) -> Iterator[tuple]:
    if start == 0 or seekable_tar(url):
        yield from read_tar_at(url, counter, IMG2DATASET, start)
        return
    for item in read_tar_at(url, counter, IMG2DATASET):  # remote or compressed: read on, decode nothing
        if item[2] >= start:
            yield item


class ShardStream:
    """The raw samples of a worker's shards in order (``read_shard``'s), each tagged ``"__ref__"`` =
    (shard index, offset); ``shard``/``offset``/``next_key`` say where the sample after the last one given
    starts."""

    def __init__(self, urls: list[str], counter: SkipCounter):
        self.urls, self.counter = urls, counter
        self.shard, self.offset, self.next_key = 0, 0, None

    def __iter__(self) -> Iterator[dict]:
        first, start, expect = self.shard, self.offset, self.next_key
        for i in range(first, len(self.urls)):
            url = self.urls[i]
            for key, members, at, nxt, nxt_key in _from(url, self.counter, start if i == first else 0):
                if expect is not None and key != expect:
                    raise StreamChanged(f"{url}: the sample at byte {start} is {key!r} where the stored loader "
                                        f"position expects {expect!r}: the shard changed since the checkpoint")
                expect = None
                self.shard, self.offset, self.next_key = (i, nxt, nxt_key) if nxt is not None else (i + 1, 0, None)
                yield _raw(url, key, members, (i, at))


def reread(urls: list[str], refs: list[tuple[int, int]]) -> list[dict]:
    """The raw samples at ``refs`` (bytes only), in that order; ``StreamChanged`` when one is not there."""
    quiet = SkipCounter(loud=0)  # a re-read counts nothing: its reads were counted when first made
    wanted: dict[int, set[int]] = {}
    for shard, offset in refs:
        wanted.setdefault(shard, set()).add(offset)
    found = {}
    for shard, offsets in wanted.items():
        url = urls[shard]
        if seekable_tar(url):
            for at, (key, members) in read_tar_samples(url, offsets, IMG2DATASET).items():
                found[shard, at] = _raw(url, key, members, (shard, at))
        else:
            left = set(offsets)
            for key, members, at, *_ in read_tar_at(url, quiet, IMG2DATASET):
                if at in left:
                    found[shard, at] = _raw(url, key, members, (shard, at))
                    left.discard(at)
                    if not left:
                        break
    missing = [ref for ref in refs if tuple(ref) not in found]
    if missing:
        shard, offset = missing[0]
        raise StreamChanged(f"{urls[shard]}: no sample starts at byte {offset} any more, where the stored loader "
                            f"position has one ({len(missing)} such): the shard changed since the checkpoint")
    return [found[tuple(ref)] for ref in refs]


class ShuffleBuffer:
    """The webdataset-recipe shuffle (reservoir of ``size``, seeded by ``rng``) with its contents in the open.
    Calling it again on the rest of the stream continues exactly (every yield ends one step)."""

    def __init__(self, size: int, rng: random.Random):
        self.size, self.rng = size, rng
        self.buf: list = []
        self.draining, self._next = False, 0

    def remaining(self) -> list:
        return self.buf[self._next:] if self.draining else list(self.buf)

    def load(self, items: list, draining: bool) -> None:
        self.buf, self.draining, self._next = list(items), draining, 0

    def __call__(self, stream: Iterable) -> Iterator:
        if self.size <= 1:
            yield from stream
            return
        buf = self.buf
        if not self.draining:
            for item in stream:
                if len(buf) < self.size:
                    buf.append(item)
                    continue
                i = self.rng.randrange(self.size)
                buf[i], item = item, buf[i]
                yield item
            self.rng.shuffle(buf)
            self.draining = True
        while self._next < len(buf):
            item, buf[self._next] = buf[self._next], None
            self._next += 1
            yield item


# ------------------------------------------------------------------ one worker's state


def _keys_crc(keys: list[str]) -> int:
    return zlib.crc32("\n".join(keys).encode())


def capture(role: int, reader: ShardStream, shuffle: ShuffleBuffer, pairer, rng: random.Random,
            skipped: SkipCounter, in_worker: bool) -> dict:
    """The in-flight state right after a batch (ints and bytes: cheap to send from a worker process)."""
    buffered = shuffle.remaining()
    keys = [r["__key__"] for r in buffered]
    state = {"role": role, "done": False, "shard": reader.shard, "offset": reader.offset,
             "next_key": reader.next_key, "draining": shuffle.draining,
             "buffer": pack_refs(r["__ref__"] for r in buffered), "rngs": snapshot(rng, in_worker),
             "seen": dict(skipped.seen)}
    if pairer is not None:
        for s in pairer.waiting:
            s["_snap"] = snapshot_bytes(s["_snap"])  # packed once, when first stored
        keys += pairer.pool.keys() + [s["key"] for s in pairer.waiting]
        entities = _RECORD.join(_UNIT.join(e) for e in pairer.pool.entities())
        state.update(pool=pack_refs(pairer.refs), pool_entities=entities.encode(),
                     waiting=pack_refs(s["_ref"] for s in pairer.waiting),
                     snaps=b"".join(s["_snap"] for s in pairer.waiting))
    state["keys"] = _keys_crc(keys)
    return state


def restore(state: dict, urls: list[str], reader: ShardStream, shuffle: ShuffleBuffer, pairer,
            rng: random.Random, skipped: SkipCounter, builder) -> None:
    """Put a fresh worker's stages where ``capture`` found them: re-read the referenced samples, rebuild the
    waiting ones from their snapshots, then set the generators."""
    from ovseg.data.captions.sample import image_bytes

    reader.shard, reader.offset, reader.next_key = state["shard"], state["offset"], state["next_key"]
    buffered = reread(urls, unpack_refs(state["buffer"]))
    shuffle.load(buffered, state["draining"])
    skipped.seen.update(state["seen"])
    keys = [r["__key__"] for r in buffered]
    if pairer is not None:
        pooled = reread(urls, unpack_refs(state["pool"]))
        text = state["pool_entities"].decode()
        entities = [tuple(r.split(_UNIT)) if r else () for r in text.split(_RECORD)] if pooled else []
        for raw, ents in zip(pooled, entities, strict=True):
            pairer.add(raw["__key__"], ents, image_bytes(raw), raw["__ref__"])
        outside = globals_bytes()  # the rebuilds below must not move the process's generators
        for raw, snap in zip(reread(urls, unpack_refs(state["waiting"])), split_snapshots(state["snaps"])):
            apply_snapshot(snap, rng)
            sample = builder(raw, rng, Counter())
            sample["_ref"], sample["_snap"] = raw["__ref__"], snap
            pairer.waiting.append(sample)
        set_globals(outside)
        keys += pairer.pool.keys() + [s["key"] for s in pairer.waiting]
    if _keys_crc(keys) != state["keys"]:
        raise StreamChanged(f"the samples read back at the stored offsets of this worker's shards ({urls[0]} ...) "
                            "are not the ones the stored loader position holds: the shards changed since the "
                            "checkpoint")
    apply_snapshot(state["rngs"], rng)


def encode(state: dict) -> dict:
    """In-flight state -> JSON-able (bytes as base64 of zlib)."""
    return {k: to_text(v) if k in _BYTES_FIELDS else v for k, v in state.items()}


def decode(state: dict) -> dict:
    return {k: from_text(v) if k in _BYTES_FIELDS else v for k, v in state.items()}
