"""Dtype names, in one table: the short names users type, the contract's names, and the ONNX/TensorRT codes.

The contract (manifest, graphs, engines) spells dtypes as numpy/torch attribute names (``float32``, ...), so
``getattr(torch, name)`` and ``numpy.dtype(name)`` (all but ``bfloat16``) turn them into library dtypes
without another table.
"""

from __future__ import annotations

from latentcache.errors import LatentcacheError

# What `--dtype` accepts -> the contract's name.
SHORT_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
FLOAT_NAMES = tuple(SHORT_NAMES.values())
NAMES = (*FLOAT_NAMES, "int64", "int32", "bool")
# onnx.TensorProto element types (the ONNX spec's numbering) -> the contract's name.
ONNX_ELEMENT_TYPES = {1: "float32", 10: "float16", 16: "bfloat16", 7: "int64", 6: "int32", 9: "bool"}
# ONNX Runtime's NodeArg.type strings -> the contract's name.
ONNXRUNTIME_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(bfloat16)": "bfloat16",
                     "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool"}
# tensorrt.DataType member names -> the contract's name.
TENSORRT_NAMES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT64": "int64", "INT32": "int32",
                  "BOOL": "bool"}


def from_short(short: str) -> str:
    """``fp16`` -> ``float16``; a one-line error for anything else."""
    if short not in SHORT_NAMES:
        raise LatentcacheError(f"--dtype must be one of {', '.join(SHORT_NAMES)}, got '{short}'")
    return SHORT_NAMES[short]


def to_short(name: str) -> str:
    """``float16`` -> ``fp16`` (the inverse of ``from_short``)."""
    return {v: k for k, v in SHORT_NAMES.items()}[name]
