"""Streaming caption-shard loader for OVSegmentor pretraining (paper section 4.1; reference 5.4-5.6, 10.7).

``build_caption_loader(urls, tokenizer, ...)`` reads img2dataset webdataset shards (local paths, lists or
brace patterns), splits the shards by node (rank / world size from ``torch.distributed`` when it is
initialised) and by DataLoader worker, shuffles samples in a buffer, and yields batches as dicts of tensors
(keys in sample.py). What it does differently from the released loader:

- Reshuffled every epoch: shard order and sample buffer are seeded by (seed, epoch), the same seed gives
  the same order; each ``iter(loader)`` moves to the next epoch unless ``set_epoch`` says otherwise (the
  released code never called ``set_epoch`` and saw one order for all epochs).
- Bad samples are skipped and counted, never resampled. Each worker sends the counts gathered since its
  previous batch inside the batch (``"counts"``); the loader pops them into ``loader.counts`` before the
  batch reaches the training loop, so counts survive worker processes without shared memory.
- When nothing usable comes out of a whole pass (every sample corrupt), iteration stops with an error
  that lists the counts; a missing shard is an error before any worker starts.
- ``epoch_length`` (batches per epoch per rank) makes every rank take the same number of steps, which
  multi-node training needs (ranks hold different shards); the shards are re-read, reshuffled, as
  often as needed. Without it an epoch is one pass over this rank's shards.
- The last incomplete batch of a pass is dropped (equal batch sizes keep the all-gathered contrastive
  loss well defined) and counted as ``dropped_partial_batch``.
- Resumable without re-reading: each worker's batch also carries the worker's position after it
  (``position.py``: shard offset, shuffle buffer and pairing pool as tar references, generator states), the
  loader keeps the latest per worker part with the DataLoader's round-robin turn, and ``state()`` /
  ``resume(state)`` store and continue it; the batches that follow are exactly the uninterrupted loader's.
"""

from __future__ import annotations

import os
import random
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ovseg.data.captions.pairing import StreamPairer, stable_seed
from ovseg.data.captions.position import POSITION_FORMAT, ShardStream, ShuffleBuffer, capture, decode, encode
from ovseg.data.captions.position import restore as restore_position
from ovseg.data.captions.rngstate import seed_like_worker, take_snapshot
from ovseg.data.captions.sample import SampleBuilder, SkipSample, collate, read_caption, read_shard, read_spans
from ovseg.data.shardio import SkipCounter, expand_urls, is_remote


@dataclass
class LoaderCounts:
    """Skipped samples by reason, and kept-but-flagged samples (no_entity, unpaired, truncated_caption)."""

    skipped: Counter = field(default_factory=Counter)
    flagged: Counter = field(default_factory=Counter)

    def add(self, delta: dict) -> None:
        self.skipped.update(delta.get("skipped", {}))
        self.flagged.update(delta.get("flagged", {}))

    def as_dict(self) -> dict:
        return {"skipped": dict(self.skipped), "flagged": dict(self.flagged)}


def shuffle_buffer(stream, size: int, rng: random.Random) -> Iterator:
    """Reservoir-style shuffle holding at most ``size`` items (the webdataset recipe, seeded)."""
    yield from ShuffleBuffer(size, rng)(stream)


def node_info(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class CaptionShardDataset(IterableDataset):
    """Yields ready batches (dicts of tensors + ``"counts"``); batching happens in the worker."""

    def __init__(self, urls, builder: SampleBuilder, *, batch_size: int, seed: int, shuffle_buffer: int,
                 pairs: bool, pair_pool: int = 1024, rank: int | None = None, world_size: int | None = None):
        self.urls = expand_urls(urls)
        self.builder, self.batch_size, self.seed = builder, batch_size, seed
        self.shuffle_buffer, self.pairs, self.pair_pool = shuffle_buffer, pairs, pair_pool
        self.rank, self.world_size = node_info(rank, world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world size {self.world_size}")
        if len(self.urls) < self.world_size:
            raise ValueError(f"{len(self.urls)} caption shards cannot be split over {self.world_size} nodes "
                             f"(first shard: {self.urls[0]}); write more, smaller shards")
        self.epoch, self.pass_index = 0, 0
        self.resume_roles: list | None = None  # per worker part: the state to continue from (CaptionLoader._pass)
        self.first_role = 0

    def set_epoch(self, epoch: int, pass_index: int = 0) -> None:
        self.epoch, self.pass_index = epoch, pass_index

    def shards_for(self, worker: int, num_workers: int) -> list[str]:
        """This (rank, worker)'s shards: a seeded shuffle shared by all ranks, then strided slices."""
        shards = list(self.urls)
        random.Random(stable_seed(self.seed, "shards", self.epoch, self.pass_index)).shuffle(shards)
        return shards[self.rank::self.world_size][worker::num_workers]

    def __iter__(self):
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        # A resumed pass may hand this DataLoader worker another worker's part (``CaptionLoader._pass``).
        role = (worker + self.first_role) % num_workers
        saved = self.resume_roles[role] if self.resume_roles is not None else None
        if saved is not None and saved["done"]:
            return
        if info is not None and saved is None and role != worker:
            seed_like_worker(info, role)
        rng = random.Random(stable_seed(self.seed, "samples", self.epoch, self.pass_index, self.rank, role))
        # Cleared at every batch (the counts travel with it); after the first 10 skips of a reason, the log
        # goes to debug level so it stays readable.
        skipped, flagged = SkipCounter(loud=10), Counter()
        urls = self.shards_for(role, num_workers)
        reader, shuffle = ShardStream(urls, skipped), ShuffleBuffer(self.shuffle_buffer, rng)
        pairer = StreamPairer(rng, flagged, pool_size=self.pair_pool) if self.pairs else None
        if saved is not None:
            restore_position(saved, urls, reader, shuffle, pairer, rng, skipped, self.builder)

        def built():
            for raw_sample in shuffle(reader):
                # stage 2: a sample may wait in the pairing pool across a checkpoint; its generator states
                # let a resumed worker rebuild it as it was (reading a state draws nothing)
                snap = take_snapshot(rng) if self.pairs else None
                try:
                    sample = self.builder(raw_sample, rng, flagged)
                except SkipSample as exn:
                    skipped.add(exn.reason, f"sample {raw_sample['__key__']} of {raw_sample['__url__']}", exn.detail)
                    continue
                if not sample["has_entity"]:
                    flagged["no_entity"] += 1
                sample["_ref"], sample["_snap"] = raw_sample["__ref__"], snap
                yield sample

        def counts():
            delta = {"skipped": skipped.take(), "flagged": dict(flagged)}
            flagged.clear()
            return delta

        stream = built()
        if pairer is not None:
            stream = (self.builder.add_partner(s, p) for s, p in pairer(stream))
        batch = []
        for sample in stream:
            batch.append(sample)
            if len(batch) == self.batch_size:
                out = collate(batch, self.pairs)
                out["counts"] = counts()
                out["state"] = capture(role, reader, shuffle, pairer, rng, skipped, info is not None)
                yield out
                batch = []
        if batch:
            flagged["dropped_partial_batch"] += len(batch)
        # the tail's counts travel alone; the loader never yields this
        yield {"counts": counts(), "state": {"role": role, "done": True}}


@dataclass
class _Position:
    """Where the loader stands in an epoch: what ``CaptionLoader.state`` stores."""

    epoch: int
    pass_index: int = 0
    produced: int = 0  # batches yielded in this epoch
    got: int = 0  # batches yielded in this pass
    roles: list = field(default_factory=list)  # per worker part: its state after its last batch, None if unread
    next_role: int = 0  # the part whose item the DataLoader hands over next (round robin)


class CaptionLoader:
    """Iterable over batches; ``counts`` accumulates the workers' skip counts; ``set_epoch`` reseeds;
    ``state()`` / ``resume(state)`` store and continue the position (docs/data.md, "Resuming")."""

    def __init__(self, dataset: CaptionShardDataset, *, num_workers: int, epoch_length: int | None = None,
                 pin_memory: bool = False):
        self.dataset, self.num_workers, self.epoch_length = dataset, num_workers, epoch_length
        self.pin_memory = pin_memory
        self.counts = LoaderCounts()
        self.epoch = 0
        self._position: _Position | None = None
        self._pending: _Position | None = None
        self._fingerprint: dict | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.epoch_length is None:
            raise TypeError("the number of batches of a streamed pass is unknown; pass epoch_length")
        return self.epoch_length

    def _pass(self, epoch: int, pass_index: int, roles=None, first_role: int = 0):
        """One pass's DataLoader. Resumed (``roles``): DataLoader worker ``i`` takes part ``(first_role + i) % W``,
        so that its round robin (worker 0, 1, ... over the parts not yet exhausted) hands the items over in
        the order the interrupted pass would have."""
        self.dataset.set_epoch(epoch, pass_index)
        self.dataset.resume_roles, self.dataset.first_role = roles, first_role
        generator = torch.Generator().manual_seed(stable_seed(self.dataset.seed, "aug", epoch, pass_index))
        return DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers, generator=generator,
                          pin_memory=self.pin_memory)

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        start, self._pending = (self._pending if self._pending and self._pending.epoch == epoch else None), None
        parts = max(1, self.num_workers)
        pos = start or _Position(epoch, roles=[None] * parts)
        self._position = pos
        while self.epoch_length is None or pos.produced < self.epoch_length:
            resumed = pos is start
            if not all(r is not None and r["done"] for r in pos.roles):
                for item in self._pass(epoch, pos.pass_index, list(pos.roles) if resumed else None, pos.next_role):
                    state = item.pop("state")
                    pos.roles[state["role"]], pos.next_role = state, (state["role"] + 1) % parts
                    self.counts.add(item.pop("counts"))
                    if not item:
                        continue
                    pos.got += 1
                    pos.produced += 1
                    yield item
                    if self.epoch_length is not None and pos.produced >= self.epoch_length:
                        return
            if pos.got == 0:
                raise RuntimeError(
                    f"no usable batch of {self.dataset.batch_size} from {len(self.dataset.urls)} caption shards "
                    f"({self.dataset.urls[0]} ...) on rank {self.dataset.rank}: counts so far "
                    f"{self.counts.as_dict()}")
            if self.epoch_length is None:
                return
            pos = self._position = _Position(epoch, pos.pass_index + 1, pos.produced, roles=[None] * parts)

    # ------------------------------------------------------------------ storing and continuing the position
    def fingerprint(self) -> dict:
        """What decides the stream besides the position: a stored position is only valid for the same."""
        if self._fingerprint is None:
            d = self.dataset
            sizes = [-1 if is_remote(u) else os.path.getsize(u) for u in d.urls]
            self._fingerprint = {
                "shards": zlib.crc32("\n".join(d.urls).encode()), "num_shards": len(d.urls),
                "shard_sizes": zlib.crc32(",".join(map(str, sizes)).encode()), "rank": d.rank,
                "world_size": d.world_size, "num_workers": self.num_workers, "epoch_length": self.epoch_length,
                "batch_size": d.batch_size, "seed": d.seed, "shuffle_buffer": d.shuffle_buffer, "pairs": d.pairs,
                "pair_pool": d.pair_pool, "builder": d.builder.settings}
        return self._fingerprint

    def state(self) -> dict | None:
        """The position after the last batch this loader yielded, with the cumulative counts (JSON-able; None
        before the first; a position given to ``resume`` and not iterated yet, as it was given)."""
        pos = self._position or self._pending
        if pos is None:
            return None
        return {"format": POSITION_FORMAT, "fingerprint": self.fingerprint(), "epoch": pos.epoch,
                "pass": pos.pass_index, "produced": pos.produced, "got": pos.got, "next_role": pos.next_role,
                "counts": self.counts.as_dict(), "roles": [None if r is None else encode(r) for r in pos.roles]}

    def resume(self, state: dict) -> str | None:
        """Continue from ``state`` at the next ``iter()`` (which runs the stored epoch). Returns None, or why
        the state cannot be used (then nothing changes and the caller falls back to re-reading)."""
        if not isinstance(state, dict) or state.get("format") != POSITION_FORMAT:
            got = state.get("format") if isinstance(state, dict) else type(state).__name__
            return f"the stored loader position has format {got!r}, not {POSITION_FORMAT!r}"
        stored, now = state.get("fingerprint", {}), self.fingerprint()
        changed = [k for k in now if stored.get(k) != now[k]]
        if changed:
            return ("the stored loader position belongs to other data or settings (" + ", ".join(
                f"{k}: {stored.get(k)!r} then, {now[k]!r} now" for k in changed) + ")")
        try:
            roles = [None if r is None else decode(r) for r in state["roles"]]
            self._pending = _Position(int(state["epoch"]), int(state["pass"]), int(state["produced"]),
                                      int(state["got"]), roles, int(state["next_role"]))
        except (KeyError, TypeError, ValueError) as exn:
            return f"the stored loader position is damaged ({type(exn).__name__}: {exn})"
        self.epoch = self._pending.epoch
        counts = state.get("counts", {})
        self.counts = LoaderCounts(Counter(counts.get("skipped", {})), Counter(counts.get("flagged", {})))
        return None


def shard_texts(urls, builder: SampleBuilder) -> list[list[int]]:
    """The real token ids of every text the samples of ``urls`` can give the text tower
    (``SampleBuilder.possible_texts``), each distinct caption once; unreadable samples are left to the loader,
    which skips and counts them. The text cache's pre-pass computes these before training."""
    captions: dict[tuple, None] = {}
    counter = SkipCounter(loud=0)
    for url in urls:
        for raw in read_shard(url, counter):
            try:
                caption = read_caption(raw)
                spans = read_spans(raw, caption)
            except SkipSample:
                continue
            captions[(caption, None if spans is None else tuple(map(tuple, spans)))] = None
    texts: dict[str, None] = {}
    for caption, spans in captions:
        try:
            texts.update(dict.fromkeys(builder.possible_texts(caption, None if spans is None else list(spans))))
        except SkipSample:
            continue
    return builder.token_rows(list(texts)) if texts else []


def build_caption_loader(urls, tokenizer, *, batch_size: int, image_size: int = 224, stage: int = 1,
                         num_workers: int = 0, seed: int = 0, shuffle_buffer: int = 1000, pairs: bool = False,
                         epoch_length: int | None = None, max_length: int = 77, pair_pool: int = 1024,
                         matcher=None, rank: int | None = None, world_size: int | None = None,
                         pin_memory: bool = False, entity_prompts: bool = False) -> CaptionLoader:
    """The caption loader. ``pairs`` adds cross images (stage 2); ``matcher`` overrides the vocabulary
    used when a shard carries no precomputed ``entity_spans``; ``entity_prompts`` adds the batch's entity
    prompts and targets (``sample.entity_batch``); ``rank``/``world_size`` override
    ``torch.distributed``. Read skip counts from ``loader.counts`` after (or during) iteration."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers > 0:
        # Rust tokenizers' own thread pool does not survive fork; workers already run in parallel.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    builder = SampleBuilder(tokenizer, image_size=image_size, stage=stage, max_length=max_length, matcher=matcher,
                            entity_prompts=entity_prompts)
    dataset = CaptionShardDataset(urls, builder, batch_size=batch_size, seed=seed, shuffle_buffer=shuffle_buffer,
                                  pairs=pairs, pair_pool=pair_pool, rank=rank, world_size=world_size)
    return CaptionLoader(dataset, num_workers=num_workers, epoch_length=epoch_length, pin_memory=pin_memory)
