"""The two lowerings of the cache write, behind one I/O contract (``past`` in, ``present`` out, same shape).

- ``inplace``: one ONNX ``TensorScatter`` (opset 24, ``axis=-2``, ``mode="linear"``) per tensor. TensorRT
  >= 10.15 imports it as ``IKVCacheUpdateLayer`` (an in-place update when past and present share memory);
  ONNX Runtime >= 1.25 runs it on the CPU and updates in place when IO binding gives past and present the
  same buffer (``tests/test_export.py`` runs both lowerings on ONNX Runtime; the CUDA backend binds them).
- ``portable``: Gather + Where over the whole cache, ops that TensorRT 10.3 (JetPack 6.2) and every ONNX
  Runtime parse; it rewrites the whole buffer each step (memory traffic grows with ``max_seq``).
"""

from __future__ import annotations

import torch

OPSET = {"inplace": 24, "portable": 18}


def portable_update(past: torch.Tensor, rows: torch.Tensor, write_index: torch.Tensor) -> torch.Tensor:
    """``present[b, :, s] = rows[b, :, s - write_index[b]]`` for ``s`` in the written range, else ``past``."""
    slots = torch.arange(past.shape[2], device=past.device)
    offset = slots[None, :] - write_index[:, None]  # [B, S]
    written = (offset >= 0) & (offset < rows.shape[2])
    source = offset.clamp(0, rows.shape[2] - 1)[:, None, :, None].expand(-1, past.shape[1], -1, past.shape[3])
    return torch.where(written[:, None, :, None], torch.gather(rows, 2, source), past)


def inplace_update(past: torch.Tensor, rows: torch.Tensor, write_index: torch.Tensor) -> torch.Tensor:
    """ONNX ``TensorScatter``; eagerly (outside export) the same result through ``portable_update``."""
    if not torch.onnx.is_in_onnx_export():
        return portable_update(past, rows, write_index)
    return torch.onnx.ops.symbolic(
        "::TensorScatter",
        (past, rows, write_index),
        {"axis": -2, "mode": "linear"},
        dtype=past.dtype,
        shape=past.shape,
        version=OPSET["inplace"],
    )


UPDATES = {"inplace": inplace_update, "portable": portable_update}
