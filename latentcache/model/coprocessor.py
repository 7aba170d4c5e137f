"""The coprocessor: base kv-cache + N_L soft tokens -> N_L latent embeddings, in one forward pass.

Decisions the paper leaves open (fixed here and shared by training, export and the reference runtime):

- The network is a copy of the base ``Decoder`` (``init="base"``: its weights; ``"random"``: fresh init),
  trained in full or through LoRA adapters that merge back into plain weights for export.
- Layer ``l`` attends to base layer ``l``'s keys/values of the context (a read-only prefix) plus its own
  keys/values of the soft tokens; soft tokens are causal among themselves, positions ``p + 1 .. p + N_L``
  (see ``latentcache.model.layout``).
- The latent is the final hidden state *after* the final norm, times one learned scalar initialised so the
  latents' RMS equals the base's mean token-embedding RMS: latents then enter the frozen base at the scale of
  ordinary input embeddings (a post-norm hidden state has RMS near 1, token embeddings often 0.02: fed
  unscaled, latents would swamp the context; Coconut reports large latent norms hurting).
- Soft tokens start as the embeddings of N_L distinct random vocabulary tokens (in-distribution inputs).
- ``pause=True`` is the paper's Pause-token control: no network, the latents *are* the N_L trainable
  embeddings, independent of the input.
- ``variant`` says how the frozen base reads the latents (``latentcache.model.layout``): ``gated`` (the
  default) re-feeds the last context token after them and owns ``latent_gate [layers, heads]``, an
  attention-logit bias on latent keys initialised to ``gate_init`` (closed: at step 0 the base's predictions are
  unchanged to within ``exp(gate_init)``); ``paper`` is the literal method. Checkpoints written before the
  variants existed are ``paper``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from latentcache.model.decoder import Decoder, KVCache, LatentGate
from latentcache.model.layout import VARIANTS, group_mask, group_positions
from latentcache.model.lora import add_lora

LEGACY_VARIANT = "paper"  # what a checkpoint without a variant was trained as
# The closed gate's logit bias. SmolLM2-135M with an untrained coprocessor (benchmarks/step0.py, 16 sequences per
# set, docs/results.md): within 0.03 % of the base's perplexity at every position at -10; -8 reached 0.54 % and -4
# 3.5 %. Training opens it at the gate's own learning rate (0.05 per step: 40 steps for the 2 units below -8).
DEFAULT_GATE_INIT = -10.0


@dataclass(frozen=True)
class CoprocessorConfig:
    num_latents: int
    init: str = "base"  # "base" | "random"
    lora_rank: int = 0  # 0: full fine-tuning
    lora_alpha: float = 0.0  # 0 means 2 * rank
    pause: bool = False
    variant: str = "gated"  # how the frozen base reads the latents (VARIANTS)
    gate_init: float = DEFAULT_GATE_INIT  # the latent gate's initial logit bias (gated variant)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got '{self.variant}'")
        if not -1e4 < float(self.gate_init) <= 0:
            raise ValueError(f"gate_init must be a finite logit bias <= 0, got {self.gate_init}")
        if self.num_latents < 1:
            raise ValueError(f"num_latents must be >= 1, got {self.num_latents}")
        if self.init not in ("base", "random"):
            raise ValueError(f"init must be 'base' or 'random', got '{self.init}'")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0, got {self.lora_rank}")
        if self.pause and (self.lora_rank or self.init != "base"):
            raise ValueError("the pause-token control has no network: drop --lora-rank/--init")

    @staticmethod
    def from_dict(values: dict) -> CoprocessorConfig:
        """A config as a checkpoint's ``state.json`` holds it; one written before the variants is ``paper``."""
        values = {"variant": LEGACY_VARIANT, **values}
        known = set(CoprocessorConfig.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown coprocessor settings {unknown}: the checkpoint is from a newer latentcache; "
                             "upgrade it")
        return CoprocessorConfig(**values)


def embedding_rms(base: Decoder) -> float:
    """Mean RMS of the base's input token embeddings (with Gemma's scale): the latents' target scale."""
    weight = base.embed_tokens.weight.float() * base.config.embed_scale
    return weight.pow(2).mean(-1).sqrt().mean().item()


class Coprocessor(nn.Module):
    def __init__(self, base: Decoder, config: CoprocessorConfig, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        if config.num_latents > base.config.vocab_size:
            raise ValueError(f"{config.num_latents} latents exceed the vocabulary ({base.config.vocab_size} tokens) "
                             "that seeds the soft tokens")
        generator = torch.Generator().manual_seed(seed)
        token_ids = torch.randperm(base.config.vocab_size, generator=generator)[: config.num_latents]
        token_ids = token_ids.to(base.embed_tokens.weight.device)
        self.soft_tokens = nn.Parameter(base.embed(token_ids).detach().clone().float())
        self.network: Decoder | None = None
        if not config.pause:
            self.network = self._make_network(base, config, seed)
            # The final norm outputs unit-RMS activations times its gain (w, or 1 + w in Gemma style).
            gain = self.network.norm.weight.float() + (1.0 if base.config.norm_style == "gemma" else 0.0)
            gain_rms = gain.pow(2).mean().sqrt().item()
            self.latent_scale = nn.Parameter(torch.tensor(embedding_rms(base) / max(gain_rms, 1e-6)))
        # The gate biases latent keys in the frozen base. "refeed" has a fixed open one (zeros, not trained): it
        # still tells the base which keys are latents, which sliding windows need.
        shape = (base.config.num_layers, base.config.num_heads)
        if config.variant == "gated":
            self.latent_gate = nn.Parameter(torch.full(shape, float(config.gate_init), device=base.embed_tokens.weight.device))
        else:
            fixed = torch.zeros(shape, device=base.embed_tokens.weight.device) if config.variant == "refeed" else None
            self.register_buffer("latent_gate", fixed, persistent=False)

    @property
    def variant(self) -> str:
        return self.config.variant

    def gate(self, latent_keys: torch.Tensor) -> LatentGate | None:
        """The frozen base's gate over keys ``[batch, K]`` (True = latent); None when the variant has none."""
        if self.latent_gate is None:
            return None
        return LatentGate(self.latent_gate, latent_keys)

    @staticmethod
    def _make_network(base: Decoder, config: CoprocessorConfig, seed: int) -> Decoder:
        if config.init == "base":
            network = copy.deepcopy(base)  # a deep copy: no module is shared with the frozen base
        else:
            torch.manual_seed(seed)
            network = Decoder(base.config).to(base.embed_tokens.weight.dtype)
            for module in network.modules():
                if isinstance(module, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(module.weight, std=0.02)
                    if getattr(module, "bias", None) is not None:
                        nn.init.zeros_(module.bias)
        network.requires_grad_(True).train()
        # Inputs are soft tokens and the output is a hidden state: token embeddings and the LM head are unused.
        network.embed_tokens.requires_grad_(False)
        network.lm_head.requires_grad_(False)
        if config.lora_rank:
            add_lora(network, config.lora_rank, config.lora_alpha or 2.0 * config.lora_rank)
        return network

    def forward(self, base_cache: KVCache, points: torch.Tensor, document_ids: torch.Tensor | None = None,
                context_len: int | None = None) -> torch.Tensor:
        """Latents ``[batch, n_points * N_L, hidden]`` for groups at ``points [batch, n_points]``.

        ``base_cache`` holds the frozen base's keys/values of the context in slots ``0..context_len-1``.
        """
        batch, n_points = points.shape
        soft = self.soft_inputs(batch, n_points)
        if self.network is None:
            return soft
        context_len = base_cache.max_seq if context_len is None else context_len
        mask = group_mask(points, context_len, self.config.num_latents, document_ids)
        positions = group_positions(points, self.config.num_latents)
        hidden = self.network(inputs_embeds=soft, position_ids=positions, attention_mask=mask, prefix=base_cache)
        return self.scale_latents(hidden)

    @property
    def compute_dtype(self) -> torch.dtype:
        """The network's dtype (the soft tokens' for the pause control): what the soft tokens enter as."""
        return self.network.embed_tokens.weight.dtype if self.network is not None else self.soft_tokens.dtype

    def soft_inputs(self, batch: int, groups: int = 1) -> torch.Tensor:
        """The soft tokens as the network's input rows ``[batch, groups * N_L, hidden]`` (the pause control's
        latents as they are)."""
        soft = self.soft_tokens.to(self.compute_dtype)[None, None].expand(batch, groups, -1, -1)
        return soft.flatten(1, 2)

    def scale_latents(self, hidden: torch.Tensor) -> torch.Tensor:
        """The network's final hidden states -> latents at the base's embedding scale."""
        return hidden * self.latent_scale.to(hidden.dtype)

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Exactly what the optimizer and the checkpoint see."""
        return {name: p for name, p in self.named_parameters() if p.requires_grad}
