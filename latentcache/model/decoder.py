"""The owned decoder: Llama-family and Gemma-family causal LMs with plain tensors in and out.

Module and parameter names mirror Hugging Face's (minus the ``model.`` prefix), so a checkpoint's
safetensors load without a name map. Note that ``post_attention_layernorm`` is the pre-MLP norm in the
Llama family but a true post-attention norm in Gemma (whose pre-MLP norm is ``pre_feedforward_layernorm``),
exactly as in transformers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from latentcache.model import onnx_llm
from latentcache.model.config import SLIDING, ModelConfig
from latentcache.model.fused_attention import fused_attention
from latentcache.model.rope import apply_rope, inverse_frequencies, rope_tables


class KVCache:
    """Static key/value buffers for every layer, allocated once and written in place at explicit slots.

    Layout:
      - ``keys[l]``, ``values[l]``: ``[batch, kv_heads, max_seq, head_dim]`` for layer ``l`` (BHSD), keys
        stored after rope;
      - ``positions``: ``[batch, max_seq]`` int64, the rope position of whatever occupies each slot (slot and
        position differ under left padding and in block-masked training; sliding windows are measured in
        positions).
    Slots are indexed from 0; ``Decoder.forward(..., cache=c, write_index=i)`` writes its ``q`` new rows to
    slots ``[i, i + q)`` of every layer and attends over the first ``mask.shape[-1]`` slots. Which slots are
    valid is the caller's business (the attention mask); nothing here grows, shifts or copies.
    """

    def __init__(
        self,
        config: ModelConfig,
        batch: int,
        max_seq: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (batch, config.num_kv_heads, max_seq, config.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_layers)]
        self.positions = torch.zeros(batch, max_seq, dtype=torch.long, device=device)
        self.batch, self.max_seq = batch, max_seq

    def write(self, layer: int, index: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store ``[batch, kv_heads, q, head_dim]`` rows at slots ``[index, index + q)`` of ``layer``."""
        end = index + keys.shape[2]
        self.keys[layer][:, :, index:end] = keys
        self.values[layer][:, :, index:end] = values

    def reset(self) -> None:
        for buffer in (*self.keys, *self.values, self.positions):
            buffer.zero_()


@dataclass(frozen=True)
class LatentGate:
    """The gated augmentation's attention-logit bias on latent keys (``latentcache.model.coprocessor``).

    ``bias [layers, heads]`` is added to the score of every query for each key marked in ``keys [batch, K]``
    (True = that key slot holds a latent), before the mask and the softmax. Initialised very negative, the
    frozen base reads its context as if no latent were there; training opens it per layer and head. Sliding
    windows never hide a latent (they measure distances between tokens).
    """

    bias: torch.Tensor
    keys: torch.Tensor

    def layer_bias(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.bias[layer], self.keys


def add_key_bias(scores: torch.Tensor, key_bias: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """``scores [B, Hkv, G, Q, K]`` plus ``bias [H]`` (query head ``h = kv_head * G + g``) on the keys in
    ``keys [B, K]``."""
    if key_bias is None:
        return scores
    bias, keys = key_bias
    batch, kv_heads, groups = scores.shape[:3]
    per_head = bias.float().view(1, kv_heads, groups, 1, 1)
    return scores + per_head * keys.to(scores.dtype)[:, None, None, None, :]


class RMSNorm(nn.Module):
    """RMSNorm with the reduction in fp32. ``gemma`` style scales by ``1 + w`` before casting back.

    ``divide`` (exported graphs) computes ``x / sqrt(ms + eps)`` instead of transformers' ``x * rsqrt(..)``:
    the same value to within rounding, in the pattern ONNX Runtime fuses into one SimplifiedLayerNormalization.
    """

    def __init__(self, dim: int, eps: float, style: str) -> None:
        super().__init__()
        self.eps, self.gemma, self.divide = eps, style == "gemma", False
        self.weight = nn.Parameter(torch.zeros(dim) if self.gemma else torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean_square = x.float().pow(2).mean(-1, keepdim=True) + self.eps
        if self.divide:
            normed = x.float() / torch.sqrt(mean_square)
        else:
            normed = x.float() * torch.rsqrt(mean_square)
        if self.gemma:
            return (normed * (1.0 + self.weight.float())).to(x.dtype)
        return self.weight * normed.to(x.dtype)


class FlexMask:
    """A boolean mask ``[B, 1, Q, K]`` as FlexAttention's block-sparse ``BlockMask`` (``Decoder.kernel = "flex"``).

    Training's block masks are mostly empty (each group reads its own context prefix and 32 members), and the
    gate is a ``score_mod``: FlexAttention skips empty blocks and never materialises ``[B, H, Q, K]`` scores, where
    SDPA with a float mask must. Built once per forward and mask kind, shared by every layer.
    """

    def __init__(self, dense: torch.Tensor) -> None:
        from torch.nn.attention.flex_attention import create_block_mask

        allowed = dense[:, 0]
        batch, queries, keys = allowed.shape
        self.shape = dense.shape  # what Attention reads of a mask: the attended span
        self.block_mask = create_block_mask(lambda b, h, q, kv: allowed[b, q, kv], B=batch, H=None, Q_LEN=queries,
                                            KV_LEN=keys, device=allowed.device, _compile=allowed.is_cuda)


_compiled_flex = None


def flex_attend(q, k, v, mask: FlexMask, scale: float, softcap: float | None, key_bias=None) -> torch.Tensor:
    """FlexAttention with the soft-cap and the latent gate as a ``score_mod`` (compiled on CUDA: its fused kernel)."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if q.is_cuda and _compiled_flex is None:
        from torch import _dynamo

        # One compiled kernel per (pass, shape, score_mod kind): base, coprocessor, groups, validation, ...
        _dynamo.config.cache_size_limit = max(_dynamo.config.cache_size_limit, 64)
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    kernel = _compiled_flex if q.is_cuda else flex_attention
    bias, keys = key_bias if key_bias is not None else (None, None)
    keys = keys.to(torch.float32) if keys is not None else None

    def score_mod(score, b, h, q_index, kv_index):
        if softcap is not None:
            score = torch.tanh(score / softcap) * softcap
        if bias is not None:
            score = score + bias[h].to(score.dtype) * keys[b, kv_index].to(score.dtype)
        return score

    plain = softcap is None and bias is None
    return kernel(q, k, v, score_mod=None if plain else score_mod, block_mask=mask.block_mask, scale=scale,
                  enable_gqa=q.shape[1] != k.shape[1])


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
    softcap: float | None,
    explicit: bool = False,
    key_bias: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Masked attention. ``q [B,H,Q,D]``, ``k/v [B,Hkv,K,D]``, ``mask`` bool ``[B,1,Q,K]`` (True = attend);
    ``key_bias`` is a layer's ``LatentGate.layer_bias``.

    SDPA runs an efficient kernel for arbitrary boolean masks (the gate folded into the keys); soft-capped
    scores (Gemma-2) and exported graphs take the explicit path. Every query row must allow at least one key.
    """
    if isinstance(mask, FlexMask):
        return flex_attend(q, k, v, mask, scale, softcap, key_bias)
    if softcap is None and not explicit:
        groups = q.shape[1] // k.shape[1]
        dim = q.shape[-1]
        if key_bias is not None:
            q, k, v = fold_gate_into_keys(q, k, v, key_bias, scale)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=groups > 1)
        return out[..., :dim]
    return explicit_attention(q, k, v, mask, scale, softcap, key_bias)


def fold_gate_into_keys(q, k, v, key_bias, scale: float):
    """q, k, v with the latent gate folded into extra head dimensions, for SDPA with a plain boolean mask.

    Query head ``h = kv_head * G + g`` gets a one-hot ``e_g`` appended and each key ``bias[kv_head*G + j] *
    latent / scale`` for ``j < G``, so ``scale * q'.k'`` is ``scale * q.k + bias[h] * latent``: the same scores as
    adding the gate, but SDPA keeps its memory-efficient kernel and its ``[B, 1, Q, K]`` boolean mask instead of
    a ``[B, H, Q, K]`` float mask (9x the memory at SmolLM2's 9 heads, and no fused backward for it). The head
    dimension is zero-padded to a multiple of 8 (what the fused kernels need); ``v`` too, sliced off after.
    """
    bias, keys = key_bias
    batch, heads, queries, dim = q.shape
    kv_heads, length = k.shape[1], k.shape[2]
    groups = heads // kv_heads
    width = -(-(dim + groups) // 8) * 8
    one_hot = torch.eye(groups, width - dim, dtype=q.dtype, device=q.device)  # [G, width - dim]
    q_extra = one_hot.repeat(kv_heads, 1)[None, :, None, :].expand(batch, heads, queries, -1)
    per_key = (bias.to(torch.float32) / scale).view(kv_heads, groups)  # [Hkv, G]
    k_extra = keys.to(torch.float32)[:, None, :, None] * per_key[None, :, None, :]  # [B, Hkv, K, G]
    k_extra = F.pad(k_extra, (0, width - dim - groups)).to(k.dtype)
    v = F.pad(v, (0, width - dim))
    return torch.cat((q, q_extra), dim=-1), torch.cat((k, k_extra), dim=-1), v


def explicit_attention(q, k, v, mask, scale: float, softcap: float | None, key_bias=None) -> torch.Tensor:
    """MatMul -> (soft-cap) -> mask -> fp32 softmax -> MatMul, in ops every ONNX runtime and TensorRT parse.

    Grouped-query heads are folded into the query axis (``[B, Hkv, G*Q, D]``) instead of repeating the
    keys/values, so no step copies the cache. Q is pre-scaled in fp32 (a low-precision rounded scale drifts
    from the reference at long context; field notes, implication 5).
    """
    batch, heads, queries, dim = q.shape
    kv_heads = k.shape[1]
    groups = heads // kv_heads
    q = (q.float() * scale).to(q.dtype).reshape(batch, kv_heads, groups * queries, dim)
    scores = torch.matmul(q, k.transpose(-1, -2)).float()
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores = add_key_bias(scores.view(batch, kv_heads, groups, queries, -1), key_bias)
    scores = scores.masked_fill(~mask[:, :, None], torch.finfo(torch.float32).min)
    probs = torch.softmax(scores, dim=-1).to(v.dtype).view(batch, kv_heads, groups * queries, -1)
    return torch.matmul(probs, v).view(batch, heads, queries, dim)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.config, self.layer = config, layer
        self.explicit = False  # set by Decoder.use_graph_forms (exported graphs)
        self.onnx_llm = False  # ditto: the onnx-llm graph form (its rope tables are halves: onnx_llm.half_tables)
        hidden, heads, kv_heads, head_dim = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
        self.q_proj = nn.Linear(hidden, heads * head_dim, bias=config.qkv_bias)
        self.k_proj = nn.Linear(hidden, kv_heads * head_dim, bias=config.qkv_bias)
        self.v_proj = nn.Linear(hidden, kv_heads * head_dim, bias=config.qkv_bias)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=config.o_bias)
        if config.qk_norm:
            self.q_norm = RMSNorm(head_dim, config.rms_norm_eps, config.norm_style)
            self.k_norm = RMSNorm(head_dim, config.rms_norm_eps, config.norm_style)

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        batch, seq, _ = x.shape
        return x.view(batch, seq, n, self.config.head_dim).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor,
        cache: KVCache | None,
        write_index: int,
        prefix: KVCache | None = None,
        gate: LatentGate | None = None,
    ) -> torch.Tensor:
        cfg = self.config
        key_bias = gate.layer_bias(self.layer) if gate is not None else None
        if getattr(cache, "fused", False):  # the onnxruntime graph form: one fused node writes and attends
            return self._fused(x, rope, mask, cache, write_index, key_bias)
        q = self._heads(self.q_proj(x), cfg.num_heads)
        k = self._heads(self.k_proj(x), cfg.num_kv_heads)
        v = self._heads(self.v_proj(x), cfg.num_kv_heads)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        rotate = onnx_llm.rotate if self.onnx_llm else apply_rope
        q, k = rotate(q, *rope), rotate(k, *rope)
        if cache is not None:
            cache.write(self.layer, write_index, k, v)
            span = mask.shape[-1]
            k, v = cache.keys[self.layer][:, :, :span], cache.values[self.layer][:, :, :span]
        elif prefix is not None:
            span = mask.shape[-1] - k.shape[2]
            k = torch.cat((prefix.keys[self.layer][:, :, :span], k), dim=2)
            v = torch.cat((prefix.values[self.layer][:, :, :span], v), dim=2)
        if self.onnx_llm:
            out = onnx_llm.attention(q, k, v, mask, cfg.attn_scale, cfg.attn_softcap, key_bias, explicit_attention)
        else:
            out = attend(q, k, v, mask, cfg.attn_scale, cfg.attn_softcap, self.explicit, key_bias)
        batch, _, seq, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))

    def _fused(self, x, rope, mask, cache, write_index, key_bias) -> torch.Tensor:
        """The same attention through ``fused_attention``, heads kept in ``[batch, seq, heads, head_dim]`` (what
        the fused node reads, flattened): no transposes around it."""
        cfg = self.config
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, cfg.num_heads, cfg.head_dim)
        k = self.k_proj(x).view(batch, seq, cfg.num_kv_heads, cfg.head_dim)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        # The fused node rotates q and k itself where the cache offers its tables (BaseStep: exported graphs only).
        rotary = cache.rotary.get(cfg.layer_types[self.layer])
        if rotary is None:
            q, k = apply_rope(q, *rope, heads_axis=2), apply_rope(k, *rope, heads_axis=2)
        out = fused_attention(q, k, self.v_proj(x), cache, self.layer, write_index, mask, cfg.attn_scale,
                              cfg.attn_softcap, key_bias, explicit_attention, rotary)
        return self.o_proj(out)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden, inner, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(hidden, inner, bias=bias)
        self.up_proj = nn.Linear(hidden, inner, bias=bias)
        self.down_proj = nn.Linear(inner, hidden, bias=bias)
        self.act = nn.SiLU() if config.hidden_act == "silu" else nn.GELU(approximate="tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        eps, style = config.rms_norm_eps, config.norm_style
        self.sandwich = config.sandwich_norm
        self.self_attn = Attention(config, layer)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, eps, style)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps, style)
        if self.sandwich:
            self.pre_feedforward_layernorm = RMSNorm(config.hidden_size, eps, style)
            self.post_feedforward_layernorm = RMSNorm(config.hidden_size, eps, style)

    def forward(self, x, rope, mask, cache, write_index, prefix=None, gate=None) -> torch.Tensor:
        attn = self.self_attn(self.input_layernorm(x), rope, mask, cache, write_index, prefix, gate)
        if not self.sandwich:
            x = x + attn
            return x + self.mlp(self.post_attention_layernorm(x))
        x = x + self.post_attention_layernorm(attn)
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Decoder(nn.Module):
    """A causal LM of a supported family.

    ``forward`` takes token ids or input embeddings ``[batch, q, hidden]``, explicit ``position_ids
    [batch, q]`` and an explicit boolean ``attention_mask [batch, q, k]`` (True = may attend; any block
    structure). Without a cache, the ``k`` keys are the ``q`` inputs themselves. With a ``KVCache``, the new
    keys/values are first written to slots ``[write_index, write_index + q)`` and the ``k`` mask columns
    index cache slots ``0..k-1``. With a read-only ``prefix`` cache instead (the coprocessor reading the base's
    cache, or block-masked training), the keys are the prefix's first ``k - q`` slots followed by the ``q``
    inputs, concatenated without touching the prefix. It returns final-norm hidden states; ``logits`` maps
    them to the vocabulary. ``gate`` (a ``LatentGate`` over the same ``k`` keys) biases the scores of latent keys.
    Sliding-window layers further restrict the mask to keys whose position is within the window.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.kernel = "sdpa"  # "flex": FlexAttention block masks in forward (training on a GPU; see FlexMask)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, config.norm_style)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        for kind, spec in config.rope.items():
            self.register_buffer(f"inv_freq_{kind}", inverse_frequencies(spec, config.head_dim), persistent=False)

    def cast(self, dtype: torch.dtype) -> Decoder:
        """Weights to ``dtype``; rope frequencies stay fp32 (recomputed, never rounded through ``dtype``)."""
        self.to(dtype)
        device = self.embed_tokens.weight.device
        for kind, spec in self.config.rope.items():
            setattr(self, f"inv_freq_{kind}", inverse_frequencies(spec, self.config.head_dim).to(device))
        return self

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings, times Gemma's sqrt(hidden) (rounded to the weight dtype, as transformers does)."""
        scale = torch.tensor(self.config.embed_scale, dtype=self.embed_tokens.weight.dtype)
        return self.embed_tokens(input_ids) * scale

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(hidden)
        cap = self.config.final_softcap
        return torch.tanh(logits / cap) * cap if cap else logits

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        *,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
        cache: KVCache | None = None,
        write_index: int = 0,
        prefix: KVCache | None = None,
        gate: LatentGate | None = None,
    ) -> torch.Tensor:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if cache is not None and prefix is not None:
            raise ValueError("pass at most one of cache (written) and prefix (read-only)")
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        key_positions = position_ids
        if prefix is not None:
            span = attention_mask.shape[-1] - x.shape[1]
            key_positions = torch.cat((prefix.positions[:, :span], position_ids), dim=1)
        if cache is not None:
            cache.positions[:, write_index : write_index + x.shape[1]] = position_ids
            key_positions = cache.positions[:, : attention_mask.shape[-1]]
        latent_keys = gate.keys if gate is not None else None
        masks = self._masks_by_layer_type(attention_mask, position_ids, key_positions, latent_keys)
        if self.kernel == "flex":
            masks = {kind: FlexMask(mask) for kind, mask in masks.items()}
        return self.run_layers(x, position_ids, masks, cache, write_index, prefix, gate)

    def run_layers(self, x, position_ids, masks, cache=None, write_index=0, prefix=None, gate=None) -> torch.Tensor:
        """Every layer over input embeddings ``x`` with per-layer-type masks; final-norm hidden states.

        The shared core of ``forward`` and the exported graphs (which build their masks in-graph).
        """
        ropes = {kind: rope_tables(getattr(self, f"inv_freq_{kind}"), position_ids) for kind in self.config.rope}
        if self.layers[0].self_attn.onnx_llm:
            ropes = {kind: onnx_llm.half_tables(*tables) for kind, tables in ropes.items()}
        for layer, kind in zip(self.layers, self.config.layer_types):
            x = layer(x, ropes[kind], masks[kind], cache, write_index, prefix, gate)
        return self.norm(x)

    def use_graph_forms(self, enable: bool = True, onnx_llm: bool = False) -> Decoder:
        """Graph-friendly forms for export: ``explicit_attention`` instead of SDPA, dividing RMSNorms; with
        ``onnx_llm``, ONNX's ``Attention`` and ``RotaryEmbedding`` operators (``latentcache.model.onnx_llm``)."""
        for layer in self.layers:
            layer.self_attn.explicit = enable
            layer.self_attn.onnx_llm = enable and onnx_llm
        for module in self.modules():
            if isinstance(module, RMSNorm):
                module.divide = enable
        return self

    def _masks_by_layer_type(self, mask, query_positions, key_positions, latent_keys=None) -> dict[str, torch.Tensor]:
        """The caller's mask for full layers; for sliding layers also ``q_pos - k_pos < window`` (or a latent key)."""
        masks = {kind: mask[:, None] for kind in set(self.config.layer_types)}
        if SLIDING in masks:
            distance = query_positions[:, :, None] - key_positions[:, None, :]
            within = distance < self.config.sliding_window
            if latent_keys is not None:
                within = within | latent_keys[:, None, :]
            masks[SLIDING] = (mask & within)[:, None]
        return masks
