"""The ``onnxruntime`` graph form's attention: one ``com.microsoft.GroupQueryAttention`` node per layer.

It replaces the cache write (two TensorScatter) and the explicit attention (transposes, two MatMuls, mask, softmax)
of the ``standard`` form with ONNX Runtime's fused kernel, which writes the new rows into the shared
``[batch, kv_heads, max_seq, head_dim]`` buffer in place (past and present bound to one buffer) and attends. The
semantics are the standard form's exactly, because everything that is ours goes into its ``attention_bias``
(float, added to the scores): the bool mask (padding, emptied re-fed slots, sliding windows, "always itself") as
0 / float32 min, and the latent gate as a per-head bias on latent keys. Rotary (our own positions,
which are not slots) goes in as ``position_ids`` with cos/sin tables over the cache's slots (``do_rotary=1``)
where the kernel gets it right (``rotates_inside``); elsewhere rope runs before the node.

Where ONNX Runtime runs it (checked against its kernels, onnxruntime 1.32): the CPU kernel takes float32 with
``attention_bias``, and refuses ``batch > 1`` when several rows follow a non-empty past (an absorb; the export
refuses that combination). The CUDA kernel takes only fp16/bf16 and refuses ``attention_bias``
(``contrib_ops/cuda/bert/group_query_attention.cc``), so this form is for ONNX Runtime on the CPU. Outside an
ONNX export the same function computes the standard form (the eager reference the parity tests compare with).
"""

from __future__ import annotations

import torch

from latentcache.model.rope import rope_tables

MASKED = torch.finfo(torch.float32).min


def rotary_tables(inv_freq: torch.Tensor, slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin ``[slots, head_dim // 2]`` for positions ``0..slots-1`` (``rope_tables``' first half): the caches
    GroupQueryAttention rotates by (positions never exceed the kv-cache's slots)."""
    cos, sin = rope_tables(inv_freq, torch.arange(slots, device=inv_freq.device)[None])
    half = inv_freq.shape[0]
    return cos[0, :, :half], sin[0, :, :half]


def rotates_inside(head_dim: int, batch: int) -> bool:
    """Whether the node can rotate: heads whose size is a multiple of 16 (what ONNX Runtime's kernel takes), at
    batch 1. On a first prompt (empty past) the kernel ignores ``position_ids`` and numbers positions by slot
    (measured, onnxruntime 1.32), which is right only without left padding: at batch 1 a prompt's positions are its
    slots, at batch > 1 they are not."""
    return head_dim % 16 == 0 and batch == 1


def fused_attention(q, k, v, cache, layer: int, write_index, mask, scale: float, softcap, key_bias, explicit,
                    rotary=None):
    """``q [B, Q, H, D]``, new ``k [B, Q, Hkv, D]`` and ``v [B, Q, Hkv*D]`` -> ``[B, Q, H*D]``; ``cache`` gets the
    present tensors. ``q``/``k`` come rotated, or with ``rotary = (cos, sin, position_ids)`` (export only) not
    yet: the node rotates them (``do_rotary``, half-split, at our positions, which are not slots)."""
    batch, queries, heads, dim = q.shape
    kv_heads = k.shape[2]
    if not torch.onnx.is_in_onnx_export():  # the standard form's computation, in its [B, H, Q, D] layout
        k, v = k.transpose(1, 2), v.view(batch, queries, kv_heads, dim).transpose(1, 2)
        cache.write(layer, write_index, k, v)
        span = mask.shape[-1]
        out = explicit(q.transpose(1, 2), cache.keys[layer][:, :, :span], cache.values[layer][:, :, :span], mask,
                       scale, softcap, key_bias)
        return out.transpose(1, 2).reshape(batch, queries, heads * dim)
    past_key, past_value = cache.keys[layer], cache.values[layer]
    bias = torch.where(mask, 0.0, MASKED).to(torch.float32)  # [B, 1, Q, attend]
    if key_bias is not None:
        per_head, keys = key_bias
        bias = bias + per_head.float().view(1, heads, 1, 1) * keys.float()[:, None, None, :]
    seqlens = (write_index + queries - 1).to(torch.int32)  # the last written slot per row
    total = torch.full((), mask.shape[-1], dtype=torch.int32)
    attributes = {"num_heads": heads, "kv_num_heads": kv_heads, "scale": float(scale)}
    if softcap is not None:
        attributes["softcap"] = float(softcap)
    cos, sin, positions = rotary if rotary is not None else (None, None, None)
    if rotary is not None:
        attributes.update(do_rotary=1, rotary_interleaved=0)
    out, present_key, present_value = torch.onnx.ops.symbolic_multi_out(
        "com.microsoft::GroupQueryAttention",
        (q.reshape(batch, queries, heads * dim), k.reshape(batch, queries, kv_heads * dim), v, past_key, past_value,
         seqlens, total, cos, sin, positions, bias.to(q.dtype)),
        attributes,
        dtypes=(q.dtype, past_key.dtype, past_value.dtype),
        shapes=((batch, queries, heads * dim), past_key.shape, past_value.shape),
        version=1,
    )
    cache.keys[layer], cache.values[layer] = present_key, present_value
    return out
