"""The exported graphs as small modules over the owned model code: plain tensors in, plain tensors out.

Each wrapper implements one graph of the contract in ``latentcache.contract.manifest`` (read its docstring
for the semantics); the masks are built in-graph from ``attention_mask`` and ``write_index`` (explicit,
never ``is_causal``), attention is the explicit MatMul/softmax path, and the cache update is one of two
lowerings (``export.kv_update``). The same wrappers run eagerly (``portable``) as the export-side
reference in the parity tests.
"""

from __future__ import annotations

import torch
from torch import nn

from latentcache.contract.manifest import LATENT_SLOT, TOKEN_SLOT
from latentcache.model.config import SLIDING, ModelConfig
from latentcache.model.decoder import Decoder, LatentGate
from latentcache.model.fused_attention import rotary_tables, rotates_inside


def cache_masks(config: ModelConfig, attention_mask: torch.Tensor, write_index: torch.Tensor, queries: int,
                position_ids: torch.Tensor | None = None):
    """Per-layer-type bool masks ``[batch, 1, queries, attend]`` for rows written at ``write_index + i``.

    A row sees valid slots at or before its own slot (and always itself, so padding rows are never empty);
    sliding layers also need a key within the window. Without ``position_ids`` slots stand in for positions
    (within a sequence, real tokens and latents occupy consecutive slots with consecutive positions). Gated
    artifacts pass ``position_ids``: a re-fed token leaves slots and positions apart, so token keys are placed at
    ``cumsum(token slots) - 1`` (a real token's position, padding or not) and latent keys are always in the
    window, exactly as ``Decoder`` decides from the positions it stores.
    """
    span = attention_mask.shape[1]
    key_slots = torch.arange(span, device=attention_mask.device)
    query_slots = write_index[:, None] + torch.arange(queries, device=attention_mask.device)
    distance = query_slots[:, :, None] - key_slots[None, None, :]
    full = (attention_mask.bool()[:, None, :] & (distance >= 0)) | (distance == 0)
    masks = {kind: full[:, None] for kind in set(config.layer_types)}
    if SLIDING in masks:
        if position_ids is None:
            within = distance < config.sliding_window
        else:
            key_positions = torch.cumsum((attention_mask == TOKEN_SLOT).long(), dim=1) - 1
            within = (position_ids[:, :, None] - key_positions[:, None, :]) < config.sliding_window
            within = within | (attention_mask == LATENT_SLOT)[:, None, :]
        masks[SLIDING] = (full & within)[:, None]
    return masks


class GraphCache:
    """The cache as graph values: ``past`` tensors in, ``present`` tensors out, through ``update``.

    ``update(past, rows, write_index) -> present`` writes ``rows [B, Hkv, q, D]`` at slots
    ``write_index[b] + i``; attention then reads the present tensor (Attention calls ``write`` first).
    ``fused``: the ``onnxruntime`` graph form, where one GroupQueryAttention node per layer writes and attends
    (``latentcache.model.fused_attention``) and replaces the present tensors itself.
    """

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], update, fused: bool = False) -> None:
        self.keys, self.values, self.update, self.fused = list(keys), list(values), update, fused
        self.rotary: dict[str, tuple] = {}  # per layer type: (cos, sin, position_ids) when the fused node rotates

    def write(self, layer: int, index: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys[layer] = self.update(self.keys[layer], keys, index)
        self.values[layer] = self.update(self.values[layer], values, index)

    def flat(self) -> list[torch.Tensor]:
        return [t for pair in zip(self.keys, self.values) for t in pair]


def split_cache(cache: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``[k0, v0, k1, v1, ...]`` (the graphs' flat order) -> keys, values."""
    return list(cache[0::2]), list(cache[1::2])


class BaseStep(nn.Module):
    """``prefill`` (``with_embeds``) and ``decode``: new rows -> last-row fp32 logits and the present cache.

    ``latent_gate [layers, heads]`` (gated artifacts) biases the scores of keys whose ``attention_mask`` is
    ``LATENT_SLOT``; without it the graph is the base's own, whatever the mask values.
    """

    def __init__(self, base: Decoder, update, with_embeds: bool, latent_gate: torch.Tensor | None = None,
                 ops: str = "standard") -> None:
        super().__init__()
        self.base, self.update, self.with_embeds = base.use_graph_forms(onnx_llm=ops == "onnx-llm"), update, with_embeds
        self.fused = ops == "onnxruntime"
        self.register_buffer("latent_gate", None if latent_gate is None else latent_gate.detach().float().clone())
        self.eval()

    def forward(self, input_ids, position_ids, write_index, attention_mask, cache, inputs_embeds=None, embeds_mask=None):
        x = self.base.embed(input_ids)
        if self.with_embeds:
            x = torch.where(embeds_mask.bool()[..., None], inputs_embeds.to(x.dtype), x)
        gated = self.latent_gate is not None
        masks = cache_masks(self.base.config, attention_mask, write_index, x.shape[1], position_ids if gated else None)
        gate = LatentGate(self.latent_gate, attention_mask == LATENT_SLOT) if gated else None
        graph_cache = GraphCache(*split_cache(cache), self.update, self.fused)
        # Exported graphs only: the eager reference (and the parity tests' comparison) rotates as the standard form.
        if self.fused and torch.onnx.is_in_onnx_export() and rotates_inside(self.base.config.head_dim, x.shape[0]):
            slots = cache[0].shape[2]
            graph_cache.rotary = {kind: (*rotary_tables(getattr(self.base, f"inv_freq_{kind}"), slots), position_ids)
                                  for kind in self.base.config.rope}
        hidden = self.base.run_layers(x, position_ids, masks, graph_cache, write_index, gate=gate)
        logits = self.base.logits(hidden[:, -1]).float()
        return (logits, *graph_cache.flat())


def base_steps(base: Decoder, update, coprocessor=None, ops: str = "standard") -> dict[str, BaseStep]:
    """The ``prefill`` and ``decode`` steps of artifacts exported with ``coprocessor`` (or none): one base, with
    the coprocessor's latent gate when its variant has one (``refeed``'s is zero, ``gated``'s trained), in the
    graph form ``ops`` (``Manifest.ops``)."""
    gate = None if coprocessor is None else coprocessor.latent_gate
    return {"prefill": BaseStep(base, update, with_embeds=True, latent_gate=gate, ops=ops),
            "decode": BaseStep(base, update, with_embeds=False, latent_gate=gate, ops=ops)}


class CoprocessorStep(nn.Module):
    """``coprocessor``: the base cache (read-only) -> ``[batch, N_L, hidden]`` latents.

    Soft tokens sit at slots ``attend + i`` (right after the attended span), positions given by the
    runtime (``p + 1 + i`` for a prompt ending at position ``p``; ``latentcache.model.layout`` decides this).
    """

    def __init__(self, coprocessor, ops: str = "standard") -> None:
        super().__init__()
        self.coprocessor = coprocessor
        if coprocessor.network is not None:  # the onnxruntime form's fused node is the base's; onnx-llm's are both's
            coprocessor.network.use_graph_forms(onnx_llm=ops == "onnx-llm")
        self.eval()

    def forward(self, position_ids, attention_mask, cache):
        copro = self.coprocessor
        batch, n_latents = position_ids.shape
        soft = copro.soft_inputs(batch)
        if copro.network is None:  # pause-token control: the latents are the trained embeddings
            return soft
        own = torch.ones(batch, n_latents, dtype=attention_mask.dtype, device=attention_mask.device)
        # The span's length per row, counted from the mask's data rather than read off its shape: a shape-derived
        # value is a host tensor in ONNX Runtime, and copying it to the GPU mid-graph rules out CUDA-graph capture.
        write_index = torch.ones_like(attention_mask).sum(dim=1)
        masks = cache_masks(copro.network.config, torch.cat((attention_mask, own), 1), write_index, n_latents)
        keys, values = split_cache(cache)
        prefix = GraphCache(keys, values, update=None)
        hidden = copro.network.run_layers(soft, position_ids, masks, prefix=prefix)
        return copro.scale_latents(hidden)
