"""Random generator states as bytes: what a caption-loader position and a training checkpoint store so that a
resumed run draws exactly what the uninterrupted one would have (docs/data.md, "Resuming").

Four generators decide a batch and the model's noise: the loader worker's own ``random.Random`` (shuffle
buffer, answer templates, pairing) and the process's globals, Python's ``random``, NumPy's legacy one and
torch's (the augmentation draws from these; a DataLoader seeds them per worker: ``seed_like_worker`` repeats
that for a worker that takes another's part), plus CUDA's for noise drawn on a GPU. Reading a state draws
nothing, so taking snapshots never changes the stream. States are packed into plain bytes (Mersenne Twister
words, positions, cached Gaussians) and stored as base64 of zlib text: no pickle, so a checkpoint from elsewhere
cannot run code when it is read.
"""

from __future__ import annotations

import base64
import ctypes
import random
import struct
import zlib
from array import array

import numpy as np
import torch

assert array("I").itemsize == 4


def _frame(parts: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(p)) + p for p in parts)


def _unframe(data: bytes, count: int, at: int = 0) -> tuple[list[bytes], int]:
    parts = []
    for _ in range(count):
        (n,) = struct.unpack_from("<I", data, at)
        parts.append(bytes(data[at + 4:at + 4 + n]))
        at += 4 + n
    return parts, at


def _py_bytes(state) -> bytes:
    version, internal, gauss = state  # random.Random.getstate(): (3, 625 words, gauss_next)
    head = struct.pack("<B?d", version, gauss is not None, 0.0 if gauss is None else gauss)
    return head + array("I", internal).tobytes()


def _py_state(data: bytes):
    version, has_gauss, gauss = struct.unpack_from("<B?d", data)
    return version, tuple(array("I", data[10:])), gauss if has_gauss else None


class _NumpyState:
    """NumPy's global (legacy) state, read in full only when it can have changed: ``np.random.get_state()``
    costs about 100 us, which stage 2 would pay for every sample. Exact: the Mersenne Twister's words and
    position are compared first (a 2.5 kB copy through the bit generator's documented ``ctypes.state_address``);
    with those unchanged the state can differ only by a consumed cached Gaussian, which needs one cached, so a
    state read with ``has_gauss`` set is always read again."""

    _SIZE = 624 * 4 + 4  # mt19937_state: uint32 key[624]; int pos

    def __init__(self):
        self._bitgen, self._addr, self._words, self._state = None, None, None, None

    def get(self) -> tuple:
        bitgen = getattr(getattr(np.random.mtrand, "_rand", None), "_bit_generator", None)
        if bitgen is not self._bitgen:
            self._bitgen, self._addr, self._state = bitgen, self._address(bitgen), None
        words = None if self._addr is None else ctypes.string_at(self._addr, self._SIZE)
        if words is None or self._state is None or words != self._words or self._state[3]:
            self._state, self._words = np.random.get_state(), words
        return self._state

    @classmethod
    def _address(cls, bitgen) -> int | None:
        """The state struct's address, once its layout is confirmed against ``get_state`` (else None)."""
        try:
            addr = bitgen.ctypes.state_address
            _, keys, pos, *_ = np.random.get_state()
            expect = np.asarray(keys, dtype=np.uint32).tobytes() + struct.pack("=i", pos)
            return addr if ctypes.string_at(addr, cls._SIZE) == expect else None
        except (AttributeError, TypeError, ValueError):
            return None

    def set(self, state: tuple) -> None:
        np.random.set_state(state)
        self._state = None


_NUMPY = _NumpyState()


def _np_bytes(state: tuple) -> bytes:
    _, keys, pos, has_gauss, cached = state
    return struct.pack("<iid", pos, has_gauss, cached) + np.asarray(keys, dtype="<u4").tobytes()


def _np_state(data: bytes) -> tuple:
    pos, has_gauss, cached = struct.unpack_from("<iid", data)
    return "MT19937", np.frombuffer(data, dtype="<u4", offset=16).copy(), pos, has_gauss, cached


def _globals() -> tuple:
    return random.getstate(), _NUMPY.get(), torch.get_rng_state()


def globals_bytes(states: tuple | None = None) -> list[bytes]:
    py, npy, th = states or _globals()
    return [_py_bytes(py), _np_bytes(npy), th.numpy().tobytes()]


def set_globals(parts: list[bytes]) -> None:
    random.setstate(_py_state(parts[0]))
    _NUMPY.set(_np_state(parts[1]))
    torch.set_rng_state(torch.frombuffer(bytearray(parts[2]), dtype=torch.uint8))


def take_snapshot(rng: random.Random) -> tuple:
    """``rng``'s and the process's ``random``/NumPy/torch CPU states as they are (reading a state draws
    nothing, so taking snapshots never changes the stream); ``snapshot_bytes`` packs one when it is stored."""
    return rng.getstate(), _globals()


def snapshot_bytes(snap) -> bytes:
    if isinstance(snap, bytes):
        return snap
    own, states = snap
    return _frame([_py_bytes(own), *globals_bytes(states)])


def snapshot(rng: random.Random, with_globals: bool) -> bytes:
    """``rng``'s state and, ``with_globals``, the process's ``random``/NumPy/torch CPU states, packed."""
    return _frame([_py_bytes(rng.getstate()), *(globals_bytes() if with_globals else [b"", b"", b""])])


def apply_snapshot(data: bytes, rng: random.Random, at: int = 0) -> int:
    """Set ``rng`` (and the globals, when the snapshot holds them) from the snapshot at ``data[at:]``; returns
    where the next snapshot starts."""
    parts, at = _unframe(data, 4, at)
    rng.setstate(_py_state(parts[0]))
    if parts[1]:
        set_globals(parts[1:])
    return at


def split_snapshots(data: bytes) -> list[bytes]:
    out, at = [], 0
    while at < len(data):
        _, end = _unframe(data, 4, at)
        out.append(bytes(data[at:end]))
        at = end
    return out


def to_text(data: bytes) -> str:
    return base64.b64encode(zlib.compress(data, 6)).decode("ascii")


def from_text(text: str) -> bytes:
    return zlib.decompress(base64.b64decode(text.encode("ascii"), validate=True))


def process_rng_state(device: torch.device | None = None) -> dict:
    """The training process's global generators (Gumbel noise, and the augmentation when the loader runs in
    this process), JSON-able; CUDA's too when ``device`` is a GPU."""
    state = {"cpu": to_text(_frame(globals_bytes()))}
    if device is not None and device.type == "cuda":
        state["cuda"] = to_text(torch.cuda.get_rng_state(device).numpy().tobytes())
    return state


def restore_process_rng(state: dict, device: torch.device | None = None) -> None:
    set_globals(_unframe(from_text(state["cpu"]), 3)[0])
    if "cuda" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(torch.frombuffer(bytearray(from_text(state["cuda"])), dtype=torch.uint8), device)


def seed_like_worker(info, role: int) -> None:
    """Seed this DataLoader worker's globals as a fresh DataLoader seeds worker ``role`` (torch's
    ``_worker_loop``: ``base_seed + id`` for ``random`` and torch, ``_generate_state`` for NumPy)."""
    from torch.utils.data._utils.worker import _generate_state

    base = info.seed - info.id
    random.seed(base + role)
    torch.manual_seed(base + role)
    np.random.seed(_generate_state(base, role))
