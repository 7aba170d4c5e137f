"""Rotary position embedding, computed in fp32 whatever the model dtype (long-context precision)."""

from __future__ import annotations

import math

import torch

from latentcache.model.config import RopeSpec


def inverse_frequencies(spec: RopeSpec, head_dim: int) -> torch.Tensor:
    """Per-pair inverse frequencies ``[head_dim // 2]`` (fp32), with linear or Llama-3.1 scaling."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (spec.theta**exponents)
    if spec.rope_type == "linear":
        return inv_freq / spec.factor
    if spec.rope_type == "llama3":
        return _llama3_scaled(inv_freq, spec)
    return inv_freq


def _llama3_scaled(inv_freq: torch.Tensor, spec: RopeSpec) -> torch.Tensor:
    """Llama 3.1: long wavelengths divided by ``factor``, short ones kept, a smooth blend in between."""
    low_wavelen = spec.original_max_position_embeddings / spec.low_freq_factor
    high_wavelen = spec.original_max_position_embeddings / spec.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / spec.factor, inv_freq)
    smooth = (spec.original_max_position_embeddings / wavelen - spec.low_freq_factor) / (
        spec.high_freq_factor - spec.low_freq_factor
    )
    blended = (1 - smooth) * scaled / spec.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(medium, blended, scaled)


def rope_tables(inv_freq: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin ``[batch, seq, head_dim]`` in fp32 for integer ``position_ids [batch, seq]``."""
    freqs = position_ids.float()[..., None] * inv_freq.float()
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads_axis: int = 1) -> torch.Tensor:
    """Rotate ``x [batch, heads, seq, head_dim]`` (or ``[batch, seq, heads, head_dim]`` with ``heads_axis=2``) by
    the tables (half-split convention of HF Llama/Gemma).

    The rotation runs in fp32 whatever ``x``'s dtype (bf16/fp16 rounding of cos/sin drifts at long context).
    """
    cos, sin = cos.unsqueeze(heads_axis), sin.unsqueeze(heads_axis)
    half = x.shape[-1] // 2
    xf = x.float()
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)
