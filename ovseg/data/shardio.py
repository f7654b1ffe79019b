"""Shard I/O shared by every data sub-package: the one tar reader, URL expander, skip counter and atomic
writer (the image/label codecs and the palette are in ``ovseg.data.codecs``).

Why one module: caption shards, segmentation shards, the federated splitter, the synthetic world, the
COCO-Object converter and the evaluation pictures all read or write the same kinds of files, and each rule
below is cheaper to get right once than once per caller:

* nothing half-written is ever visible under its final name: every file is written to a temporary sibling
  and moved into place with ``os.replace`` (atomic on POSIX); the temporary file is removed on any error;
* the same content gives the same bytes: tar members carry a fixed mtime, owner and mode, and images are
  encoded with fixed encoder settings, so a seeded generator is byte-for-byte reproducible;
* a tar is read as a stream of samples, consecutive members sharing a key (the webdataset convention); a
  shard that cannot be read, or that is cut short, is skipped and counted by reason in a
  :class:`SkipCounter` (or raises, when the caller passes no counter), never silently replaced;
* a sample's JSON is parsed by :func:`load_json`, which turns every way a hand-made file can fail (syntax,
  nesting deep enough to exhaust the recursion limit, non-finite numbers) into one ``ValueError`` the
  reader counts; no tar is written with a member name that an extracting consumer would follow outside its
  folder (:func:`safe_key`, :func:`write_tar`).

The two shard families differ in how a member name maps to a key and in how a cut-short tar is recognised;
those differences are kept, on purpose and in one place, as the two :class:`TarLayout` values
``IMG2DATASET`` (caption shards) and ``SEGMENTATION`` (segmentation shards, synthetic-world shards).
"""

from __future__ import annotations

import glob
import io
import json
import logging
import math
import os
import tarfile
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Sequence

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ skip counter


class SkipCounter:
    """Counts skipped samples (and unusable shards) by reason and keeps the first few messages for a report.

    ``reasons``: when given, the only reasons allowed (a typo in a reason name is a bug, not a new reason).
    ``loud``: log the first ``loud`` skips of each reason as warnings and the rest at debug level (None: all
    as warnings). ``take`` returns and clears the counts gathered since the previous ``take`` (loader workers
    send those deltas with their batches); ``seen`` keeps counting, so the log throttle spans batches.
    """

    def __init__(self, reasons: Sequence[str] | None = None, keep: int = 20, loud: int | None = None):
        self.counts: Counter[str] = Counter()
        self.seen: Counter[str] = Counter()
        self.examples: list[str] = []
        self.reasons = None if reasons is None else frozenset(reasons)
        self._keep, self._loud = keep, loud

    def add(self, reason: str, where: str, detail: str = "") -> None:
        assert self.reasons is None or reason in self.reasons, reason
        self.counts[reason] += 1
        self.seen[reason] += 1
        msg = f"skipped {where}: {reason}: {detail}" if detail else f"skipped {where}: {reason}"
        if len(self.examples) < self._keep:
            self.examples.append(msg)
        loud = self._loud is None or self.seen[reason] <= self._loud
        log.log(logging.WARNING if loud else logging.DEBUG, msg)

    def take(self) -> dict[str, int]:
        delta = dict(self.counts)
        self.counts.clear()
        return delta

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))

    def __repr__(self) -> str:
        return f"SkipCounter({self.as_dict()})"


# ------------------------------------------------------------------ finding shards


def is_remote(url: str) -> bool:
    return "://" in url or url.startswith("pipe:")


def expand_urls(urls: str | os.PathLike | Sequence[str | os.PathLike], *, check: bool = True,
                what: str = "caption shard") -> list[str]:
    """Shard URLs from brace patterns (``shard-{000000..000009}.tar``), as webdataset expands them.

    ``check`` (the caption loader and ``prepare``): also accept a folder (its ``*.tar``), a glob, and require
    every local path to exist: a missing shard raises ``FileNotFoundError`` naming it, an empty list
    ``ValueError``; remote URLs (``http://...``, ``pipe:...``) pass unchecked. Without ``check`` (segmentation
    shards) the patterns are only brace-expanded: a missing shard is counted as ``unreadable_shard`` when read.
    """
    from braceexpand import braceexpand

    items = [urls] if isinstance(urls, (str, os.PathLike)) else list(urls)
    if not check:
        return [u for item in items for u in braceexpand(str(item))]
    if not items:
        raise ValueError(f"no {what} given (empty list)")
    out: list[str] = []
    for item in items:
        item = str(item)
        if is_remote(item):
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
                raise FileNotFoundError(f"{what} not found: {path} (from {item})")
            else:
                out.append(path)
    return out


# ------------------------------------------------------------------ reading tars


def _starts_with_dunder(name: str) -> bool:
    return name.startswith("__")


def _has_no_extension(name: str) -> bool:
    return "." not in name.rpartition("/")[2]


@dataclass(frozen=True)
class TarLayout:
    """How one shard family maps tar members to samples and recognises a bad shard (see the two values below).

    The fields record where the caption reader and the segmentation reader differed before they became this
    one reader; each caller keeps exactly the behaviour it had.
    """

    folder_in_key: bool        # the key keeps the member's folder ("part/000123"), as img2dataset names them
    split_on_repeat: bool      # a member whose extension the current sample already has starts a new sample
    skip: Callable[[str], bool]  # member names that belong to no sample
    check_sizes: bool          # a member shorter than its header says is a cut (stream mode reads it silently)
    truncated: str             # the reason counted for a shard cut short
    early_unreadable: bool     # an error before the first member was read counts as unreadable_shard
    end_check: str             # "size": the file is shorter than the end-of-archive blocks would make it;
    #                            "zeros": a plain tar's two zero blocks are missing after the last sample
    local_only: bool           # open local files only; a file that cannot be opened is counted, not raised


IMG2DATASET = TarLayout(folder_in_key=True, split_on_repeat=True, skip=_starts_with_dunder, check_sizes=True,
                        truncated="truncated_shard", early_unreadable=False, end_check="size", local_only=False)
SEGMENTATION = TarLayout(folder_in_key=False, split_on_repeat=False, skip=_has_no_extension, check_sizes=False,
                         truncated="truncated_tar", early_unreadable=True, end_check="zeros", local_only=True)


def split_key(name: str, folder_in_key: bool = True) -> tuple[str, str]:
    """``dir/000123.jpg`` -> (``dir/000123``, ``jpg``): the key ends at the first dot of the file name, as
    webdataset groups files (so ``a.seg.png`` is member ``seg.png`` of key ``a``); the extension is lower-cased."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (folder + "/" + stem if folder and folder_in_key else stem), ext.lower()


def _ends_early(url: str, offset: int, layout: TarLayout, read_any: bool) -> bool:
    """True if a tar that read without error lacks its end-of-archive marker (a copy cut between members)."""
    if is_remote(url):
        return False
    if layout.end_check == "size":
        return os.path.getsize(url) < offset + 2 * tarfile.BLOCKSIZE
    if not read_any:
        return False
    with open(url, "rb") as f:
        if f.read(512)[257:262] != b"ustar":
            return False  # compressed or exotic: no cheap check, rely on read errors
        f.seek(offset)
        return f.read(1024) != bytes(1024)


def read_tar(url: str, counter: SkipCounter | None = None,
             layout: TarLayout = SEGMENTATION) -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    """Samples of one tar shard, in file order: ``(key, [(member name, extension, bytes), ...])``.

    Consecutive members sharing a key form one sample (see :class:`TarLayout`). With a ``counter``, a shard
    that cannot be read is counted as ``unreadable_shard`` and one cut short as ``layout.truncated``: the
    samples before the cut are kept, the sample in progress is dropped (it may lack files), nothing is
    guessed. Without a counter every such problem raises.
    """
    for key, members, *_ in read_tar_at(url, counter, layout):
        yield key, members


def read_tar_at(url: str, counter: SkipCounter | None = None, layout: TarLayout = SEGMENTATION,
                start: int = 0) -> Iterator[tuple[str, list, int, int | None, str | None]]:
    """:func:`read_tar` with positions: ``(key, members, offset, next_offset, next_key)``, where ``offset`` is
    the byte offset of the sample's first member header, ``next_offset``/``next_key`` those of the sample that
    follows (None after the last one). ``start``: begin at a sample's ``offset`` (a plain local tar only, see
    :func:`seekable_tar`): the members before it are neither read nor parsed, and what follows is exactly
    what reading from the start would give from that sample on (the caption loader's resume)."""
    strict = counter is None
    if start and is_remote(url):
        raise ValueError(f"{url}: only a local file can be read from byte offset {start}")
    if layout.local_only:
        try:
            stream: BinaryIO = open(url, "rb")
        except OSError as exn:
            if strict:
                raise
            counter.add("unreadable_shard", url, str(exn))
            return
    elif is_remote(url):
        from webdataset.gopen import gopen

        stream = gopen(url, "rb")
    else:
        stream = open(url, "rb")
    key, members, first = None, [], 0
    try:
        try:
            if start:
                stream.seek(start)
            tar = tarfile.open(fileobj=stream, mode="r|" if start else "r|*")
        except (tarfile.TarError, EOFError, OSError) as exn:
            if strict:
                raise
            counter.add("unreadable_shard", url, str(exn) or type(exn).__name__)
            return
        try:
            for info in tar:
                if not info.isreg() or layout.skip(info.name):
                    continue
                k, ext = split_key(info.name, layout.folder_in_key)
                data = tar.extractfile(info).read()
                if (strict or layout.check_sizes) and len(data) != info.size:
                    raise EOFError(f"member {info.name} has {len(data)} of its {info.size} bytes")
                if members and (k != key or (layout.split_on_repeat and any(e == ext for _, e, _ in members))):
                    yield key, members, first, start + info.offset, k
                    members = []
                if not members:
                    first = start + info.offset  # the header (with any long-name/pax block) of the first member
                key = k
                members.append((info.name, ext, data))
        except (tarfile.TarError, EOFError, OSError) as exn:
            if strict:
                raise
            reason = "unreadable_shard" if layout.early_unreadable and key is None else layout.truncated
            counter.add(reason, f"{url} (cut short after sample {key})" if key else url,
                        str(exn) or type(exn).__name__)
            return
        if not strict and _ends_early(url, start + tar.offset, layout, key is not None):
            counter.add(layout.truncated, f"{url} (sample {key})", "no end-of-archive marker: the last sample "
                        "may be cut, so it is skipped")
            return
        if members:
            yield key, members, first, None, None
    finally:
        stream.close()


def read_tar_samples(url: str, offsets: Iterable[int], layout: TarLayout = SEGMENTATION) -> dict[int, tuple]:
    """The samples starting at ``offsets`` of a seekable tar (:func:`seekable_tar`): ``{offset: (key, members)}``,
    grouped as :func:`read_tar` groups them; each read jumps to its offset (the archive is opened once, only
    those samples' headers and bytes are read). An offset where no whole sample starts is left out."""
    out: dict[int, tuple] = {}
    with open(url, "rb") as f:
        try:
            tar = tarfile.open(fileobj=f, mode="r:")
            tar.next()  # the first header, read by open: from here on ``next`` reads at ``tar.offset``
        except (tarfile.TarError, EOFError, OSError):
            return out
        for offset in sorted(set(offsets)):
            key, members = None, []
            tar.offset = offset
            f.seek(offset)  # (``next`` seeks only when the file is elsewhere, and never back to 0)
            try:
                while (info := tar.next()) is not None:
                    if not info.isreg() or layout.skip(info.name):
                        if members:
                            continue
                        break  # not a sample's first member
                    k, ext = split_key(info.name, layout.folder_in_key)
                    if members and (k != key or (layout.split_on_repeat and any(e == ext for _, e, _ in members))):
                        break
                    data = tar.extractfile(info).read()
                    if len(data) != info.size:
                        members = []
                        break
                    key = k
                    members.append((info.name, ext, data))
            except (tarfile.TarError, EOFError, OSError):
                pass  # a sample is whole once its next header (or the archive's end) has been read
            else:
                if members:
                    out[offset] = (key, members)
            tar.members.clear()
    return out


def seekable_tar(url: str) -> bool:
    """A local, uncompressed (ustar/GNU) tar with no global pax header at its start: one whose samples can be
    read from a byte offset. Anything else is read from its start and the members before the offset skipped
    unparsed (no image is decoded either way)."""
    if is_remote(url):
        return False
    try:
        with open(url, "rb") as f:
            head = f.read(tarfile.BLOCKSIZE)
    except OSError:
        return False
    return len(head) == tarfile.BLOCKSIZE and head[257:262] == b"ustar" and head[156:157] != tarfile.XGLTYPE


# ------------------------------------------------------------------ sample JSON and member names

MAX_JSON_DEPTH = 64  # far above any real sample's metadata, far below the ~1000 frames that exhaust the stack


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is beyond the range of a float")
    return value


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), walked without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth + 1)
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def load_json(data: bytes | str, *, finite: bool = False) -> Any:
    """One sample's JSON; every way it can be unusable is a ``ValueError`` (the reader counts it as a skip).

    Besides ``json.loads``'s own errors (syntax, UTF-8, integers over Python's digit limit): nesting deeper
    than ``MAX_JSON_DEPTH`` (deeper still, the parser itself raises ``RecursionError``) and, with ``finite``,
    NaN, Infinity and numbers beyond float range such as 1e999, which ``json.loads`` reads as inf. JSON has no
    non-finite numbers, so a reader that writes the value back out passes ``finite``; the others check the
    fields they use (:func:`json_int`).
    """
    hooks = {"parse_constant": _refuse_constant, "parse_float": _finite_float} if finite else {}
    try:
        value = json.loads(data, **hooks)
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def json_int(value: Any, field: str) -> int:
    """``value`` if it is a JSON integer; a float (1.0, 1e999, NaN) or a bool is a ``ValueError`` naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field} must be an integer, got {value!r}")
    return value


def _unsafe_name(name: str) -> str | None:
    """Why an extracting consumer could write ``name`` outside its folder; None when it cannot."""
    if name.startswith("/"):
        return "an absolute name"
    if "\\" in name:
        return "a backslash (a folder separator on Windows)"
    if ".." in name.split("/"):
        return "a '..' component"
    return None


def safe_key(key: str) -> str:
    """A sample key as a plain relative path: ``./a//b`` -> ``a/b``. A key with an absolute name, a ``..``
    component or a backslash is a ``ValueError`` (which folder was meant cannot be told, so it is not guessed)."""
    why = _unsafe_name(key)
    if why:
        raise ValueError(f"key {key!r} has {why}")
    parts = [p for p in key.split("/") if p not in ("", ".")]
    if not parts:
        raise ValueError(f"key {key!r} is empty")
    return "/".join(parts)


# ------------------------------------------------------------------ writing atomically


def atomic_write(path: str | os.PathLike, fill: Callable[[BinaryIO], None], *, perm: int = 0o600) -> Path:
    """Create ``path`` by ``fill(file)`` on a temporary sibling and an atomic rename; remove it on any error.

    ``perm``: the new file's mode bits before the umask. 0o600 (the default) is what ``tempfile.mkstemp``
    gave the byte writers; caption shards written by ``prepare`` were created with ``open`` (0o666 minus the
    umask) and pass ``perm=0o666`` to stay readable by others as before.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, perm)
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
        os.replace(tmp, path)
    except BaseException:
        # Leave no partial file behind, whatever interrupted us (disk full, KeyboardInterrupt, ...).
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, perm: int = 0o600) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data), perm=perm)


def write_tar(path: str | os.PathLike, members: Iterable[tuple[str, bytes]], *, perm: int = 0o600) -> Path:
    """Stream ``(name, bytes)`` members (any iterable) into a reproducible tar, atomically.

    Headers are fixed (mtime 0, root owner, mode 0644, GNU format). Members keep the order given: a sample's
    files must be consecutive (see :func:`read_tar`). A name an extracting consumer would follow outside its
    folder (absolute, ``..``, backslash) is a ``ValueError``, and no file is left behind.
    """
    def fill(f: BinaryIO) -> None:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for name, data in members:
                why = _unsafe_name(name)
                if why:
                    raise ValueError(f"{path}: refusing to write member {name!r}, which has {why}")
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    return atomic_write(path, fill, perm=perm)


def sample_members(samples: Iterable[dict]) -> Iterator[tuple[str, bytes]]:
    """``{"__key__": k, ext: bytes, ...}`` samples -> tar members ``k.ext`` (``__``-fields are left out)."""
    for sample in samples:
        for ext, data in sample.items():
            if not ext.startswith("__"):
                yield f"{sample['__key__']}.{ext}", data
