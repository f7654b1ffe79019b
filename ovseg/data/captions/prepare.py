"""Filter captions to those naming a vocabulary entity and annotate them (CC12M -> CC4M, reference 5.1).

The released ``data_process_cc12m.py`` kept a caption when a token equalled one of the 100 surface words
(case-sensitive, no plurals), and the loader later masked with a different, lemmatising matcher. Here the
one ``EntityMatcher`` decides both, and its result is stored so that training need not run spaCy:

- image shards in, image shards out (img2dataset layout): each kept sample's ``.json`` gains
  ``entities`` (unique canonicals, first-appearance order), ``entity_spans`` ([start, end, canonical] in
  characters of the stripped caption), ``pair_keys`` / ``pair_entities`` (up to K other samples sharing a
  canonical entity, drawn with the seed; never the sample itself);
- a caption table (.tsv with a header, or .parquet) in, a caption table out with those columns added.

Two passes over image shards: the first matches captions (one process per shard) and returns only keys
and spans; pairs need the whole index, so they are drawn in between; the second copies kept samples into
the output shards. Dropped samples are counted by reason: unsafe_name (a key with an absolute name, a
``..`` component or a backslash: an extracting consumer of the output would write outside its folder;
``./`` and doubled slashes are only normalised away), missing_image, missing_caption, bad_utf8,
empty_caption, caption_too_long, bad_json (including JSON nested too deeply or holding NaN, Infinity or
1e999: the json is written back out, and JSON has no such numbers), no_entity, duplicate_key (a key seen
earlier, after normalisation), and the shard reasons of ``sample.read_shard``. Images are not decoded here
(a corrupt image is caught, and counted, by the loader). Every file is written under a temporary name and
renamed.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import os
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from ovseg.data.captions.entities import EntityMatcher, EntityVocab, load_vocab, unique_entities
from ovseg.data.captions.pairing import pair_candidates
from ovseg.data.captions.sample import MAX_CAPTION_CHARS, SkipSample, image_bytes, read_caption, read_shard
from ovseg.data.shardio import (
    SkipCounter,
    atomic_write_bytes,
    expand_urls,
    load_json,
    safe_key,
    sample_members,
    write_tar,
)

TABLE_SUFFIXES = (".tsv", ".parquet")
KEY_COLUMNS = ("key", "image_id", "url")
_matcher: EntityMatcher | None = None  # one per worker process, built by _init_worker


def _init_worker(vocab: EntityVocab) -> None:
    global _matcher
    _matcher = EntityMatcher(vocab)


def _scan_shard(url: str) -> tuple[list, Counter, int]:
    """Pass 1 on one shard: ``[(key, spans, position in shard)]`` of kept samples (the key normalised by
    ``shardio.safe_key``), drop counts, samples read."""
    counter = SkipCounter()
    counts = counter.counts
    kept, read = [], 0
    for raw in read_shard(url, counter):
        read += 1
        try:
            key = _output_key(raw["__key__"])
            image_bytes(raw)
            caption = read_caption(raw)
            if "json" in raw:
                _read_meta(raw)
        except SkipSample as exn:
            counter.add(exn.reason, f"sample {raw['__key__']!r} of {url}", exn.detail)
            continue
        spans = _matcher.match(caption)
        if not spans:
            counts["no_entity"] += 1
            continue
        kept.append((key, spans, read - 1))
    return kept, counts, read


def _output_key(key: str) -> str:
    try:
        return safe_key(key)
    except ValueError as exn:
        raise SkipSample("unsafe_name", str(exn)) from None


def _read_meta(raw: dict) -> dict:
    """The sample's json as a dict, finite numbers only (it is written back out); SkipSample otherwise."""
    try:
        meta = load_json(raw["json"], finite=True)
    except ValueError as exn:
        raise SkipSample("bad_json", str(exn)) from None
    if not isinstance(meta, dict):
        raise SkipSample("bad_json", "not a JSON object")
    return meta


def _annotated_json(raw: dict, key: str, spans: list, pairs: list) -> bytes:
    meta = _read_meta(raw) if "json" in raw else {"key": key}
    meta.update(entities=unique_entities(spans), entity_spans=[list(s) for s in spans],
                pair_keys=[k for k, _ in pairs], pair_entities=[e for _, e in pairs])
    return json.dumps(meta, ensure_ascii=False, allow_nan=False).encode("utf-8")


def _write_shard(task: tuple) -> list[tuple[str, int]]:
    """Pass 2 on one shard: stream kept samples, with annotated json, into one or more output shards;
    ``[(output path, samples in it)]`` (the counts go to the summary: the loader's epoch length)."""
    url, out_dir, annotations, shard_size = task

    def kept():
        # Same bytes as pass 1, so the same samples in the same order (counted there); the position in the
        # shard names a kept sample (a dropped one may share its key). Its output key is the normalised one.
        for position, raw in enumerate(read_shard(url, SkipCounter())):
            ann = annotations.get(position)
            if ann is None:
                continue
            key, spans, pairs = ann
            out = {k: v for k, v in raw.items() if k != "json" and k != "__url__"}
            out["__key__"], out["json"] = key, _annotated_json(raw, key, spans, pairs)
            yield out

    stream, outputs = kept(), []
    for first in stream:  # one output shard per turn; nothing is written for a shard that keeps nothing
        chunk = itertools.chain([first], itertools.islice(stream, shard_size - 1) if shard_size else stream)
        name = f"{output_stem(url)}-{len(outputs):04d}.tar" if shard_size else f"{output_stem(url)}.tar"
        written = [0]

        def counted(samples):
            for sample in samples:
                written[0] += 1
                yield sample

        # perm 0o666 (less the umask): output shards are created as ``open`` creates files, readable by others.
        path = write_tar(Path(out_dir) / name, sample_members(counted(chunk)), perm=0o666)
        outputs.append((str(path), written[0]))
    return outputs


def output_stem(url: str) -> str:
    return Path(url).name.split(".")[0]


def _check_outputs(urls: list[str], out_dir: Path) -> None:
    """Two inputs with one name would overwrite each other's output; an output must not replace an input."""
    stems: dict[str, str] = {}
    inputs = {os.path.realpath(u) for u in urls}
    for url in urls:
        stem = output_stem(url)
        if stem in stems:
            raise ValueError(f"input shards {stems[stem]} and {url} would both write {out_dir}/{stem}*.tar; "
                             "rename one or prepare them separately")
        stems[stem] = url
        if os.path.realpath(out_dir / f"{stem}.tar") in inputs or os.path.realpath(out_dir) == \
                os.path.realpath(os.path.dirname(url)):
            raise ValueError(f"output folder {out_dir} holds the input shard {url}: choose another output folder")


def _map(fn, items, workers: int, vocab: EntityVocab, desc: str, progress: bool):
    """``fn`` over ``items`` in order, in ``workers`` processes (in-process when 1), with a progress bar."""
    bar = dict(total=len(items), desc=desc, unit="shard", disable=not progress)
    if workers <= 1:
        _init_worker(vocab)
        return [fn(x) for x in tqdm(items, **bar)]
    with mp.get_context("fork").Pool(workers, initializer=_init_worker, initargs=(vocab,)) as pool:
        return list(tqdm(pool.imap(fn, items), **bar))


def _summary(read: int, kept: dict, dropped: Counter, pairs: dict, k: int, seed: int, outputs: list) -> dict:
    per_entity = Counter(e for spans in kept.values() for e in unique_entities(spans))
    return {"samples_read": read, "kept": len(kept), "dropped": dict(sorted(dropped.items())),
            "entities": dict(per_entity.most_common()), "pairs_per_sample": k, "seed": seed,
            "without_pair": sum(1 for v in pairs.values() if not v), "outputs": [p for p, _ in outputs],
            # samples per output shard, by file name: the training loader's epoch length (captions.epoch)
            "output_samples": {os.path.basename(p): n for p, n in outputs}}


def prepare_shards(urls: list[str], out_dir: Path, vocab: EntityVocab, *, workers: int, shard_size: int | None,
                   pairs: int, seed: int, progress: bool) -> dict:
    _check_outputs(urls, out_dir)
    scans = _map(_scan_shard, urls, workers, vocab, "match", progress)
    dropped: Counter = Counter()
    spans_by_key, shard_of, read = {}, {}, 0
    for url, (kept, counts, n) in zip(urls, scans):
        dropped.update(counts)
        read += n
        for key, spans, position in kept:
            if key in spans_by_key:
                dropped["duplicate_key"] += 1  # the first kept one (in the given shard order) stays
                continue
            spans_by_key[key], shard_of[key] = spans, (url, position)
    partners = pair_candidates({k: unique_entities(s) for k, s in spans_by_key.items()}, pairs, seed)
    by_shard: dict[str, dict] = {url: {} for url in urls}
    for key, spans in spans_by_key.items():
        url, position = shard_of[key]
        by_shard[url][position] = (key, spans, partners[key])
    tasks = [(url, str(out_dir), by_shard[url], shard_size) for url in urls]
    outputs = [p for paths in _map(_write_shard, tasks, workers, vocab, "write", progress) for p in paths]
    return _summary(read, spans_by_key, dropped, partners, pairs, seed, outputs)


def _read_table(path: Path) -> tuple[list[dict], list[str]]:
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
        table = pq.read_table(path)
        return table.to_pylist(), table.column_names
    import csv

    # The default field limit (131072 characters) would end the job on one long caption; longer than any
    # caption kept (MAX_CAPTION_CHARS), a cell is still read, then dropped as caption_too_long.
    csv.field_size_limit(max(csv.field_size_limit(), 16 * MAX_CAPTION_CHARS))
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        try:
            return list(reader), list(reader.fieldnames or [])
        except csv.Error as exn:
            raise ValueError(f"{path}, line {reader.line_num}: {exn}") from None


def _match_chunk(captions: list[str]) -> list[list]:
    return _matcher.pipe(captions)


def prepare_table(path: Path, out_dir: Path, vocab: EntityVocab, *, workers: int, pairs: int, seed: int,
                  progress: bool) -> dict:
    rows, columns = _read_table(path)
    if "caption" not in columns:
        raise ValueError(f"{path}: no 'caption' column (columns: {columns})")
    key_col = next((c for c in KEY_COLUMNS if c in columns), None)
    if key_col is None:
        raise ValueError(f"{path}: needs a key column, one of {KEY_COLUMNS} (columns: {columns})")
    captions = [(r["caption"] or "").strip() if isinstance(r["caption"], (str, type(None))) else "" for r in rows]
    # The same length limit as for shards (``sample.read_caption``); such a caption is not even matched.
    too_long = [len(c) > MAX_CAPTION_CHARS for c in captions]
    matched = ["" if long else c for c, long in zip(captions, too_long)]
    chunks = [matched[i:i + 2000] for i in range(0, len(matched), 2000)]
    spans = [s for chunk in _map(_match_chunk, chunks, workers, vocab, "match", progress) for s in chunk]
    dropped: Counter = Counter()
    kept: dict[str, list] = {}
    kept_rows = []
    for row, caption, long, sp in zip(rows, captions, too_long, spans):
        key = str(row[key_col])
        reason = "empty_caption" if not caption else "caption_too_long" if long else "no_entity" if not sp else \
            "duplicate_key" if key in kept else None
        if reason:
            dropped[reason] += 1
            continue
        kept[key] = sp
        kept_rows.append((key, row))
    partners = pair_candidates({k: unique_entities(s) for k, s in kept.items()}, pairs, seed)
    out_rows = [dict(row, entities=unique_entities(kept[key]), entity_spans=json.dumps(kept[key]),
                     pair_keys=[k for k, _ in partners[key]], pair_entities=[e for _, e in partners[key]])
                for key, row in kept_rows]
    target = out_dir / path.name
    _write_table(target, out_rows, columns + ["entities", "entity_spans", "pair_keys", "pair_entities"])
    return _summary(len(rows), kept, dropped, partners, pairs, seed, [(str(target), len(kept))])


def _write_table(target: Path, rows: list[dict], columns: list[str]) -> None:
    if target.suffix == ".parquet":
        import io

        import pyarrow as pa
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows) if rows else pa.table({c: [] for c in columns}), buf)
        atomic_write_bytes(target, buf.getvalue())
        return
    lines = ["\t".join(columns)]
    for row in rows:
        cells = [json.dumps(row[c]) if isinstance(row[c], list) else str(row[c]) for c in columns]
        lines.append("\t".join(c.replace("\t", " ").replace("\n", " ") for c in cells))
    atomic_write_bytes(target, ("\n".join(lines) + "\n").encode("utf-8"))


def prepare_captions(source: str, output: str | os.PathLike, *, vocab_path: str | None = None,
                     workers: int | None = None, shard_size: int | None = None, pairs: int = 10, seed: int = 0,
                     progress: bool = True) -> dict:
    """Filter and annotate ``source`` (shard folder / brace pattern / list, or a .tsv/.parquet caption
    table) into the folder ``output``; write and return the summary (also ``output/summary.json``)."""
    vocab = load_vocab(vocab_path) if vocab_path else EntityVocab.default()
    workers = workers or os.cpu_count() or 1
    if shard_size is not None and shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {shard_size}")
    out_dir = Path(output)
    out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(source, (str, os.PathLike)) and Path(source).suffix in TABLE_SUFFIXES:
        if not Path(source).is_file():
            raise FileNotFoundError(f"caption table not found: {source}")
        summary = prepare_table(Path(source), out_dir, vocab, workers=workers, pairs=pairs, seed=seed,
                                progress=progress)
    else:
        summary = prepare_shards(expand_urls(source), out_dir, vocab, workers=workers, shard_size=shard_size,
                                 pairs=pairs, seed=seed, progress=progress)
    if summary["kept"] == 0:
        raise ValueError(f"no caption in {source} names an entity of the vocabulary; dropped: {summary['dropped']}")
    atomic_write_bytes(out_dir / "summary.json", json.dumps(summary, indent=2).encode("utf-8"))
    return summary
