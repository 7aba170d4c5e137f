"""The ``onnx-llm`` graph form: ONNX's own attention and rotary operators (``Attention``, ``RotaryEmbedding``,
opset 23, in opset-24 graphs beside ``TensorScatter``) in place of the ``standard`` form's explicit arithmetic.

Per layer the standard form spends about twenty nodes on rotary (slices, negation, concatenation, products) and
attention (query scaling, transposes, two MatMuls, the mask, an fp32 softmax); decoding a small model is bound by
how many kernels a step launches, not by its arithmetic. Here those are three nodes, still standard ONNX, which
each consumer maps to its fused kernels: ONNX Runtime's ``Attention`` dispatches to flash / memory-efficient /
unfused attention on CUDA and runs on its CPU provider (grouped-query heads, bool and float masks: onnxruntime
PR #27542 and issue #27880), TensorRT >= 10.15 imports them as ``IAttention`` / ``IRotaryEmbedding``
(TensorRT-RTX builds them in CI). Soft-capped models keep the explicit attention (TensorRT takes no soft-cap) and
get the rotary nodes.

The semantics are the standard form's: the same boolean mask, the latent gate as a float mask of the
activation dtype (0 + gate where attended, the dtype's minimum elsewhere) because ``Attention`` adds a float mask
after the soft-cap, exactly where ``explicit_attention`` adds the gate; rotary in fp32 whatever the dtype. Outside
an ONNX export both functions compute the standard form, which is what the parity tests compare the graphs with.
"""

from __future__ import annotations

import torch

from latentcache.model.rope import apply_rope


def half_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``rope_tables``' ``[batch, seq, head_dim]`` tables -> the ``[batch, seq, head_dim // 2]`` halves that
    ``RotaryEmbedding`` reads (the two halves of each table are equal); sliced once per graph, not per layer."""
    half = cos.shape[-1] // 2
    return cos[..., :half], sin[..., :half]


def rotate(x: torch.Tensor, cos_half: torch.Tensor, sin_half: torch.Tensor) -> torch.Tensor:
    """``apply_rope`` of ``x [batch, heads, seq, head_dim]``: one ``RotaryEmbedding`` node (fp32, as the standard
    form rotates) in an export."""
    if not torch.onnx.is_in_onnx_export():
        return apply_rope(x, torch.cat((cos_half, cos_half), -1), torch.cat((sin_half, sin_half), -1))
    return torch.onnx.ops.rotary_embedding(x.float(), cos_half, sin_half).to(x.dtype)


def attention(q, k, v, mask, scale: float, softcap: float | None, key_bias, explicit) -> torch.Tensor:
    """``explicit(q, k, v, mask, scale, softcap, key_bias)`` (``decoder.explicit_attention``), as one
    ``Attention`` node in an export: ``q [B, H, Q, D]``, ``k/v [B, Hkv, K, D]`` (grouped-query heads read as
    they are), ``mask`` bool ``[B, 1, Q, K]``. Soft-capped scores (Gemma-2) keep the explicit form, so that every
    consumer still reads the graph: TensorRT's parser refuses ``Attention``'s ``softcap`` (TensorRT-RTX 1.7:
    "Setting softcap is not supported in TensorRT Attention")."""
    if not torch.onnx.is_in_onnx_export() or softcap is not None:  # TensorRT's IAttention takes no soft-cap
        return explicit(q, k, v, mask, scale, softcap, key_bias)
    attn_mask = mask if key_bias is None else gated_mask(mask, key_bias, q.shape[1], q.dtype)
    out, *_ = torch.onnx.ops.attention(q, k, v, attn_mask, scale=scale)
    return out


def gated_mask(mask: torch.Tensor, key_bias, heads: int, dtype: torch.dtype) -> torch.Tensor:
    """The float mask ``[B, H, Q, K]`` that adds a layer's latent gate (``bias [H]`` on the keys ``keys [B, K]``)
    to the scores it lets through and the dtype's minimum to the rest (``Attention`` softmaxes in fp32)."""
    bias, keys = key_bias
    per_key = bias.float().view(1, heads, 1, 1) * keys.float()[:, None, None, :]
    return torch.where(mask, per_key, torch.finfo(dtype).min).to(dtype)
