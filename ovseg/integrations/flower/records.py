"""Named tensors <-> Flower ArrayRecords, in the federation's transport dtype."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from ...federated.wire import BF16_WIRE, decode_tensor, encode_tensor


def to_record(tensors: dict[str, torch.Tensor], transport: str = "float32") -> ArrayRecord:
    """Named tensors -> ArrayRecord in the transport dtype (bfloat16 as uint16 bits, dtype 'bfloat16')."""
    record = ArrayRecord()
    for k, t in tensors.items():
        arr, dtype = encode_tensor(t, transport)
        wire = Array(arr)
        if dtype == BF16_WIRE:
            wire = Array(dtype=BF16_WIRE, shape=tuple(arr.shape), stype=wire.stype, data=wire.data)
        record[k] = wire
    return record


def from_record(record: ArrayRecord) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """ArrayRecord -> (raw numpy arrays as shipped, their wire dtypes)."""
    return {k: v.numpy() for k, v in record.items()}, {k: v.dtype for k, v in record.items()}


def record_to_tensors(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """Decode a record to float32 tensors: bfloat16 wire arrays, or any floating-point numpy dtype (server
    strategies such as FedAdam aggregate in float64). Site updates are checked strictly by ``check_update``."""
    arrays, dtypes = from_record(record)
    out = {}
    for k, a in arrays.items():
        if dtypes[k] != BF16_WIRE and a.dtype.kind == "f":
            out[k] = torch.from_numpy(np.array(a, dtype=np.float32))  # keeps 0-d arrays 0-d
        else:
            out[k] = torch.from_numpy(np.array(decode_tensor(a, dtypes[k]), dtype=np.float32))
    return out


def record_to_numpy_f32(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record_to_tensors(record).items()}
