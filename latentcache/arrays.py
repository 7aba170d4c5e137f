"""Host arrays for the contract's dtypes: the numpy type of each, and bfloat16 (which numpy lacks) as raw bits.

Every backend that copies tensors to or from a device (ONNX Runtime's IO binding, TensorRT's buffers) uses
this one table.
"""

from __future__ import annotations

import numpy as np

# bfloat16 travels as its raw 16 bits.
HOST_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16, "int64": np.int64,
               "int32": np.int32, "bool": np.bool_}


def to_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def from_bfloat16_bits(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def to_host(values, dtype: str) -> np.ndarray:
    """A C-contiguous host array in the engine's representation of ``dtype``."""
    if dtype == "bfloat16":
        return to_bfloat16_bits(np.asarray(values, dtype=np.float32))
    return np.ascontiguousarray(values, dtype=HOST_DTYPES[dtype])


def from_host(values: np.ndarray, dtype: str) -> np.ndarray:
    return from_bfloat16_bits(values) if dtype == "bfloat16" else values
