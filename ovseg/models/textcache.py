"""Features of a frozen text tower, computed once per distinct token sequence.

A frozen tower is a fixed function of its input ids, so running it on every caption, masked question and
prompt of every step recomputes the same rows again and again (a caption world has a few thousand distinct
texts; CC4M's stage 2 freezes BERT-base and still runs it on three texts per sample). ``TextFeatureCache``
keeps, for each distinct id sequence (trimmed to its real tokens), the pooled feature and the token features
the entity decoder attends to, and answers a batch from memory, computing only its misses (together, in one
forward).

Never stale: every entry belongs to a *fingerprint* of the tower (SHA-256 of its weights and buffers, its
pooling, its dtype and its tokenizer's vocabulary). A cheap version key (each tensor's storage and in-place
version counter, as ``eval.textbank`` uses) says when the weights may have changed; the fingerprint is then
recomputed, and a different fingerprint starts an empty cache (or loads that fingerprint's file). On disk the
cache is one safetensors file per fingerprint, ``text-<fingerprint>.safetensors``, written atomically.

Token features at padded positions are returned as zeros (the tower's own values there are attended by
nothing: every consumer masks padded keys or pools over real tokens only); real positions are exactly what the
tower computes on the batch of misses that first contained the row.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

CACHE_PREFIX = "text-"


def weights_version(module: torch.nn.Module) -> tuple:
    """Changes whenever any parameter or buffer of ``module`` is modified in place or replaced."""
    return tuple((t.data_ptr(), t._version) for t in (*module.parameters(), *module.buffers()))


def fingerprint(module: torch.nn.Module, extra: str) -> str:
    """SHA-256 over every parameter and buffer (name, dtype, shape, bytes) and ``extra`` (pooling, vocabulary)."""
    h = hashlib.sha256(extra.encode())
    for name, t in (*module.named_parameters(), *module.named_buffers()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def vocab_fingerprint(hf_tokenizer) -> str:
    vocab = sorted(hf_tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()


def _padded(keys: list[bytes]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Cache keys (int64 id bytes) -> right-padded (ids, mask) int64 batches and each row's length."""
    lens = [len(k) // 8 for k in keys]
    ids = torch.zeros(len(keys), max(lens), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, k in enumerate(keys):
        ids[r, :lens[r]] = torch.from_numpy(np.frombuffer(k, dtype=np.int64).copy())
        mask[r, :lens[r]] = 1
    return ids, mask, lens


class TextFeatureCache:
    """(ids, mask) -> (pooled (B, W), tokens (B, L, W)) of a frozen tower, from memory where it can."""

    def __init__(self, tokenizer_fingerprint: str, pooling: str, max_rows: int = 100_000):
        self.extra = f"pooling={pooling}|vocab={tokenizer_fingerprint}"
        self.max_rows = max_rows  # beyond it misses are computed but not kept (a corpus of unique captions)
        self.rows: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}
        self.directory: Path | None = None
        self.fingerprint: str | None = None
        self._version = None
        self._saved_rows = 0
        self.hits = self.misses = 0

    # ------------------------------------------------------------------ identity
    def check(self, tower: torch.nn.Module) -> str:
        """The tower's fingerprint; when it changed, the cache holds that fingerprint's rows only."""
        version = weights_version(tower)
        if version != self._version:
            fp = fingerprint(tower, self.extra)
            if fp != self.fingerprint:
                self.rows, self.fingerprint, self._saved_rows = {}, fp, 0
                self._load()
            self._version = version
        return self.fingerprint

    # ------------------------------------------------------------------ disk
    def persist_to(self, directory: str | Path) -> None:
        """Keep the cache in ``directory`` (read now if the tower's file exists; written by ``save``)."""
        self.directory = Path(directory)
        if self.fingerprint is not None and not self.rows:
            self._load()

    def path(self) -> Path | None:
        if self.directory is None or self.fingerprint is None:
            return None
        return self.directory / f"{CACHE_PREFIX}{self.fingerprint[:32]}.safetensors"

    def _load(self) -> None:
        path = self.path()
        if path is None or not path.is_file():
            return
        from safetensors.torch import load_file

        try:
            t = load_file(str(path))
            ids, offsets, pooled, tokens = t["ids"], t["offsets"].tolist(), t["pooled"], t["tokens"]
            if len(offsets) != pooled.shape[0] + 1 or offsets[-1] != tokens.shape[0] or ids.shape[0] != offsets[-1]:
                raise ValueError("row offsets do not match the stored tensors")
        except Exception as exn:  # a damaged cache file is a miss, never an error: it is recomputed
            print(f"[ovseg] text cache {path} unreadable ({exn}); recomputing", flush=True)
            return
        ids_np = ids.numpy()
        for r in range(pooled.shape[0]):
            a, b = offsets[r], offsets[r + 1]
            self.rows[ids_np[a:b].astype(np.int64).tobytes()] = (pooled[r], tokens[a:b])
        self._saved_rows = len(self.rows)

    def save(self) -> Path | None:
        """Write the rows (atomically: temporary file, then rename) when there are new ones since the last save."""
        path = self.path()
        if path is None or len(self.rows) == self._saved_rows or not self.rows:
            return None
        from safetensors.torch import save_file

        keys = list(self.rows)
        ids = [np.frombuffer(k, dtype=np.int64) for k in keys]
        offsets = np.cumsum([0] + [len(i) for i in ids])
        tensors = {
            "ids": torch.from_numpy(np.concatenate(ids).astype(np.int32)),
            "offsets": torch.from_numpy(offsets.astype(np.int64)),
            "pooled": torch.stack([self.rows[k][0] for k in keys]).float().contiguous(),
            "tokens": torch.cat([self.rows[k][1] for k in keys]).float().contiguous(),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={"fingerprint": self.fingerprint})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._saved_rows = len(keys)
        return path

    # ------------------------------------------------------------------ lookup
    @torch.no_grad()
    def __call__(self, tower: torch.nn.Module, compute, ids: torch.Tensor, mask: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """``compute(ids, mask) -> (pooled, tokens)`` runs the tower; it is called once, on this batch's misses."""
        self.check(tower)
        lengths = mask.sum(1)
        L = ids.shape[1]
        if not torch.equal(mask.bool(), torch.arange(L, device=mask.device)[None, :] < lengths[:, None]):
            raise ValueError("text cache: attention masks must be a prefix of ones (right padding)")
        ids_np, lens = ids.cpu().numpy().astype(np.int64), lengths.tolist()
        keys = [ids_np[i, :n].tobytes() for i, n in enumerate(lens)]
        missing = list(dict.fromkeys(k for k in keys if k not in self.rows))
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        if missing:
            m_ids, m_mask, m_len = _padded(missing)
            pooled, tokens = compute(m_ids.to(ids.device), m_mask.to(mask.device))
            pooled, tokens = pooled.detach().cpu(), tokens.detach().cpu()
            fresh = {k: (pooled[r].clone(), tokens[r, :m_len[r]].clone()) for r, k in enumerate(missing)}
            room = max(0, self.max_rows - len(self.rows))
            self.rows.update(list(fresh.items())[:room])
        else:
            fresh = {}
        rows = [self.rows[k] if k in self.rows else fresh[k] for k in keys]
        out_pooled = torch.stack([r[0] for r in rows]).to(ids.device)
        out_tokens = torch.zeros(len(keys), L, rows[0][1].shape[-1], dtype=rows[0][1].dtype)
        for i, r in enumerate(rows):
            out_tokens[i, :lens[i]] = r[1]
        return out_pooled, out_tokens.to(ids.device)

    @torch.no_grad()
    def fill(self, tower: torch.nn.Module, compute, sequences, batch_size: int = 256, progress: bool = False,
             device: torch.device | None = None) -> int:
        """Compute ahead the rows of ``sequences`` (lists of real token ids) that the cache lacks, in batches of
        similar length; returns how many were computed. Lookups later hit them (nothing counts as a hit or a
        miss here). ``progress`` shows a progress bar on stderr."""
        self.check(tower)
        todo = sorted({np.asarray(s, dtype=np.int64).tobytes() for s in sequences if len(s)} - set(self.rows),
                      key=len)
        todo = todo[: max(0, self.max_rows - len(self.rows))]
        if not todo:
            return 0
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="text cache", unit="text", disable=not progress, mininterval=2.0)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            ids, mask, lens = _padded(chunk)
            pooled, tokens = compute(ids.to(device), mask.to(device)) if device is not None else compute(ids, mask)
            pooled, tokens = pooled.detach().cpu(), tokens.detach().cpu()
            for r, k in enumerate(chunk):
                self.rows[k] = (pooled[r].clone(), tokens[r, :lens[r]].clone())
            bar.update(len(chunk))
        bar.close()
        return len(todo)

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0
