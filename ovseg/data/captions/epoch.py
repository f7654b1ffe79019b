"""How many batches one epoch of real caption shards holds, read from the shards' own counts.

An epoch of streamed webdataset shards has no length the loader could know without reading every shard. The
counts are already written next to the shards by the tools that made them:

* ``summary.json`` that ``platform/prepare_captions.py`` writes into its output folder: ``output_samples``
  maps each output shard's file name to the number of samples it holds;
* img2dataset's ``{shard}_stats.json`` beside each ``{shard}.tar``: ``successes`` is the number of samples the
  shard holds (the ones it downloaded; failed downloads are not written to the tar).

``epoch_batches(urls, batch_size, world_size)`` sums them over the shards given and divides by the global
batch: the mean number of batches per rank (a rank that holds fewer samples re-reads its shards, reshuffled,
to make up the same number of steps; ``captions.loader``). A shard with no count anywhere is an error that
names it and says what to give (``data.epoch_length``, or the files above): an epoch length guessed from
anything else, the synthetic world's size for instance, would rebuild the loader every few batches.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..shardio import expand_urls, is_remote


class EpochLengthUnknown(ValueError):
    """Real shards without a sample count (a user's mistake: one line on the command line)."""


def _summary_counts(folder: Path, cache: dict) -> dict[str, int]:
    if folder not in cache:
        counts: dict[str, int] = {}
        path = folder / "summary.json"
        if path.is_file():
            try:
                summary = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError) as exn:
                raise EpochLengthUnknown(f"{path}: unreadable summary ({exn})") from None
            per_shard = summary.get("output_samples") if isinstance(summary, dict) else None
            if isinstance(per_shard, dict):
                counts = {str(k): v for k, v in per_shard.items()}
        cache[folder] = counts
    return cache[folder]


def _stats_count(url: str) -> tuple[object, Path] | None:
    """(the ``successes`` of img2dataset's ``{shard}_stats.json``, that file), or None when there is none."""
    stem = url[:-len(".tar")] if url.endswith(".tar") else url
    path = Path(f"{stem}_stats.json")
    if not path.is_file():
        return None
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exn:
        raise EpochLengthUnknown(f"{path}: unreadable img2dataset stats ({exn})") from None
    count = stats.get("successes") if isinstance(stats, dict) else None
    return None if count is None else (count, path)


def _valid(count, source) -> int:
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise EpochLengthUnknown(f"{source}: the sample count must be a non-negative integer, got {count!r}")
    return count


def shard_sample_counts(urls) -> dict[str, int]:
    """{url: samples} for every shard; ``EpochLengthUnknown`` naming the first shard without a count."""
    out: dict[str, int] = {}
    cache: dict = {}
    for url in expand_urls(urls):
        if is_remote(url):
            raise EpochLengthUnknown(
                f"data.train: {url} is remote, so its sample count cannot be read: give data.epoch_length "
                "(batches per epoch per rank)")
        folder = Path(os.path.dirname(os.path.abspath(url)))
        name = os.path.basename(url)
        counts = _summary_counts(folder, cache)
        if name in counts:
            out[url] = _valid(counts[name], f"{folder / 'summary.json'} ({name})")
            continue
        stats = _stats_count(url)
        if stats is not None:
            out[url] = _valid(*stats)
            continue
        raise EpochLengthUnknown(
            f"data.train: no sample count for shard {url}: give data.epoch_length (batches per epoch per rank), "
            "or keep beside the shards the summary.json that prepare_captions writes or img2dataset's "
            "*_stats.json")
    return out


def epoch_batches(urls, batch_size: int, world_size: int = 1) -> int:
    """Batches per epoch per rank: all samples of ``urls`` over the global batch (an error when they do not
    fill one global batch)."""
    total = sum(shard_sample_counts(urls).values())
    global_batch = batch_size * world_size
    if total < global_batch:
        raise EpochLengthUnknown(f"data.train holds {total} samples, fewer than one global batch of {global_batch} "
                                 f"({batch_size} x {world_size} ranks)")
    return total // global_batch
