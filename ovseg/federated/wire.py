"""What travels on the wire and how one site's update is checked before aggregation.

- Transport: float32, or bfloat16 (half the bytes; bit patterns carried as uint16, restored exactly).
- ``check_update``: exactly the expected keys, shapes and dtype, only finite values, and an update norm
  ||w_site - w_global|| within ``fed.max_update_norm``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

TRANSPORTS = ("float32", "bfloat16")
BF16_WIRE = "bfloat16"  # the Array dtype string of a bf16 tensor carried as uint16 bits


def encode_tensor(t: torch.Tensor, transport: str) -> tuple[np.ndarray, str]:
    """-> (numpy array to ship, dtype name). bfloat16 travels as its uint16 bit pattern."""
    import torch  # here, not at the top: the site's guard reads this module's names without tensors

    if transport == "float32":
        return t.detach().to("cpu", torch.float32).contiguous().numpy(), "float32"
    if transport == "bfloat16":
        bits = t.detach().to("cpu", torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint16)
        return bits, BF16_WIRE
    raise ValueError(f"fed.transport must be one of {TRANSPORTS}, got {transport!r}")


def decode_tensor(array: np.ndarray, dtype: str) -> np.ndarray:
    """The float32 values of a shipped array (see ``encode_tensor``); unknown dtypes are errors."""
    if dtype == BF16_WIRE:
        if array.dtype != np.uint16:
            raise ValueError(f"a bfloat16 array must arrive as uint16 bits, got {array.dtype}")
        # a bfloat16 is the upper half of the float32 with the same value: widening is a 16-bit shift, exact
        return (array.astype(np.uint32) << 16).view(np.float32)
    if dtype == "float32" and array.dtype == np.float32:
        return array
    raise ValueError(f"unexpected array dtype {dtype!r} ({array.dtype}); expected float32 or bfloat16")


def check_update(update: dict[str, np.ndarray], wire_dtypes: dict[str, str], reference: dict[str, np.ndarray],
                 transport: str, max_norm: float) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """Validate one site's update against the global weights it started from.

    Returns (float32 arrays, None) when it may be aggregated, else (None, the reason it is refused).
    """
    missing, extra = sorted(set(reference) - set(update)), sorted(set(update) - set(reference))
    if missing or extra:
        return None, f"wrong keys: missing {missing[:3]}{'...' if len(missing) > 3 else ''}, extra {extra[:3]}"
    out, sq = {}, 0.0
    for k, ref in reference.items():
        arr, dtype = update[k], wire_dtypes.get(k, "")
        if dtype != transport:
            return None, f"{k}: dtype {dtype!r}, the federation ships {transport}"
        if tuple(arr.shape) != tuple(ref.shape):
            return None, f"{k}: shape {tuple(arr.shape)}, expected {tuple(ref.shape)}"
        try:
            values = decode_tensor(arr, dtype)
        except ValueError as e:
            return None, f"{k}: {e}"
        if not np.isfinite(values).all():
            return None, f"{k}: {int((~np.isfinite(values)).sum())} non-finite values (NaN or Inf)"
        sq += float(np.sum((values.astype(np.float64) - ref) ** 2))
        out[k] = values
    norm = math.sqrt(sq)
    if not norm <= max_norm:  # a NaN bound refuses everything rather than disabling the check
        return None, f"update norm {norm:.4g} exceeds fed.max_update_norm {max_norm:.4g}"
    return out, None
