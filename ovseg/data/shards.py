"""Finding and streaming webdataset caption shards in the img2dataset layout (reference section 5.4).

img2dataset writes ``{key}.jpg`` + ``{key}.txt`` + ``{key}.json`` per sample into tar shards; the loader
and ``platform/prepare_captions.py`` both read that layout through this module, so a shard that one
accepts the other accepts too.

Bad input policy (DESIGN.md "Robust to bad input"): a shard path that does not exist or a pattern that
matches nothing is an error naming it, raised before any work starts; a shard that is not a tar at all is
skipped and counted as ``unreadable_shard``; a tar cut short (an interrupted download) keeps the samples
read before the cut, drops the sample in progress and is counted as ``truncated_shard``. Nothing is ever
replaced by another sample.
"""

from __future__ import annotations

import glob
import io
import logging
import os
import tarfile
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator, Sequence

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


class SkipSample(Exception):
    """A sample that cannot be used; ``reason`` is the counter name."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


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
    return text


def _is_remote(url: str) -> bool:
    return "://" in url or url.startswith("pipe:")


def expand_urls(urls: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Shard URLs from a folder (its ``*.tar``), a brace pattern, a glob, a file, or a list of those.

    Local paths must exist: a missing shard raises ``FileNotFoundError`` naming it. Remote URLs
    (``http://...``, ``pipe:...``) are passed through unchecked.
    """
    from braceexpand import braceexpand

    items = [urls] if isinstance(urls, (str, os.PathLike)) else list(urls)
    if not items:
        raise ValueError("no caption shard given (empty list)")
    out: list[str] = []
    for item in items:
        item = str(item)
        if _is_remote(item):
            out.extend(braceexpand(item))
            continue
        if os.path.isdir(item):
            found = sorted(glob.glob(os.path.join(item, "*.tar")))
            if not found:
                raise FileNotFoundError(f"no *.tar shard in folder {item}")
            out.extend(found)
            continue
        for path in braceexpand(item):
            if any(c in path for c in "*?["):
                found = sorted(glob.glob(path))
                if not found:
                    raise FileNotFoundError(f"no shard matches {path}")
                out.extend(found)
            elif not os.path.isfile(path):
                raise FileNotFoundError(f"caption shard not found: {path} (from {item})")
            else:
                out.append(path)
    return out


def split_key(name: str) -> tuple[str, str]:
    """``dir/000123.jpg`` -> (``dir/000123``, ``jpg``): the key ends at the first dot of the file name,
    as webdataset groups files (so ``a.b.json`` belongs to key ``a``)."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (folder + "/" + stem if folder else stem), ext.lower()


def _open(url: str):
    if _is_remote(url):
        from webdataset.gopen import gopen

        return gopen(url, "rb")
    return open(url, "rb")


def read_shard(url: str, counts: Counter) -> Iterator[dict]:
    """Samples ``{"__key__", "__url__", ext: bytes, ...}`` of one tar shard, in file order.

    Consecutive members sharing a key form one sample. Problems are counted in ``counts``
    (``unreadable_shard``, ``truncated_shard``) and logged with the shard's name.
    """
    stream = _open(url)
    try:
        try:
            tar = tarfile.open(fileobj=stream, mode="r|*")
        except (tarfile.TarError, EOFError, OSError) as exn:
            counts["unreadable_shard"] += 1
            log.warning("skipping unreadable shard %s: %s", url, exn)
            return
        current: dict | None = None
        try:
            for info in tar:
                if not info.isreg() or info.name.startswith("__"):
                    continue
                key, ext = split_key(info.name)
                data = tar.extractfile(info).read()
                if len(data) != info.size:  # tarfile's stream mode returns short data silently
                    raise EOFError(f"member {info.name} has {len(data)} of its {info.size} bytes")
                # A new key, or a file the current sample already has (two samples sharing a key): new sample.
                if current is not None and (key != current["__key__"] or ext in current):
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__url__": url}
                current[ext] = data
        except (tarfile.TarError, EOFError, OSError) as exn:
            counts["truncated_shard"] += 1
            log.warning("shard %s is cut short after sample %s (%s): the rest of it is skipped", url,
                        current["__key__"] if current else "<none>", exn)
            return  # the sample in progress may lack files: dropped, not guessed
        if not _is_remote(url) and os.path.getsize(url) < tar.offset + 2 * tarfile.BLOCKSIZE:
            # Cut at a member boundary: no end-of-archive blocks. The last sample may miss files.
            counts["truncated_shard"] += 1
            log.warning("shard %s ends without its end-of-archive marker (cut short after sample %s): "
                        "that sample is skipped", url, current["__key__"] if current else "<none>")
            return
        if current is not None:
            yield current
    finally:
        stream.close()


def write_tar_atomic(path: str | os.PathLike, samples: Iterable[dict]) -> Path:
    """Write samples ``{"__key__": k, ext: bytes}`` (any iterable) as a tar via a temporary name + rename.

    Streams member by member (a CC12M shard does not fit comfortably in memory twice), and removes the
    temporary file if anything fails, so no partial shard is ever visible under its final name.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
            for sample in samples:
                for ext, data in sample.items():
                    if ext.startswith("__"):
                        continue
                    info = tarfile.TarInfo(f"{sample['__key__']}.{ext}")
                    info.size, info.mode = len(data), 0o644
                    tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
