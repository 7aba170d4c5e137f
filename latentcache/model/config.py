"""The decoder's typed configuration, derived once from a Hugging Face config.

Every architectural difference between the supported families is an explicit field here (norm style,
soft-caps, rope per layer type, biases, sliding windows), so the decoder has no ``if model_type == ...``.
The dataclass round-trips through JSON (``to_dict``/``from_dict``) so exported artifacts can carry it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from latentcache.errors import UnsupportedModelError

# model_type -> family. SmolLM/SmolLM2 and Llama 2/3 checkpoints all say "llama".
SUPPORTED_MODEL_TYPES: dict[str, str] = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "gemma2": "gemma",
    "gemma3_text": "gemma",
}
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
SUPPORTED_ACTIVATIONS = ("silu", "gelu_pytorch_tanh")
FULL, SLIDING = "full_attention", "sliding_attention"


@dataclass(frozen=True)
class RopeSpec:
    """Rotary embedding of one layer type: base, and the scaling rule (``default``, ``linear``, ``llama3``)."""

    theta: float
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self) -> None:
        if self.rope_type not in SUPPORTED_ROPE_TYPES:
            raise UnsupportedModelError(
                f"rope_type '{self.rope_type}' is not supported; supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
            )
        if self.theta <= 0 or self.factor <= 0:
            raise ValueError(f"rope theta and factor must be positive, got {self.theta}, {self.factor}")


@dataclass(frozen=True)
class ModelConfig:
    """Everything the decoder needs to know about an architecture. Validated at construction."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    rope: dict[str, RopeSpec]  # per layer type
    layer_types: tuple[str, ...]
    hidden_act: str = "silu"
    # "llama": y = w * norm(x); "gemma": y = (1 + w) * norm(x), computed in fp32 before the cast.
    norm_style: Literal["llama", "gemma"] = "llama"
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # Gemma-3: RMSNorm over head_dim on q and k before rope
    sandwich_norm: bool = False  # Gemma-2/3: extra norms after attention and around the MLP
    embed_scale: float = 1.0  # Gemma: sqrt(hidden_size), applied to token embeddings only
    attn_scale: float = 0.0  # 0 means head_dim ** -0.5
    attn_softcap: float | None = None
    final_softcap: float | None = None
    sliding_window: int | None = None
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            problems.append(f"model_type '{self.model_type}' is not supported")
        if self.num_heads % self.num_kv_heads:
            problems.append(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if len(self.layer_types) != self.num_layers:
            problems.append(f"{len(self.layer_types)} layer_types for {self.num_layers} layers")
        for kind in set(self.layer_types):
            if kind not in (FULL, SLIDING):
                problems.append(f"layer type '{kind}' is not supported")
            elif kind not in self.rope:
                problems.append(f"no rope parameters for layer type '{kind}'")
        if SLIDING in self.layer_types and not self.sliding_window:
            problems.append("sliding layers need a positive sliding_window")
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            problems.append(f"activation '{self.hidden_act}' is not supported ({', '.join(SUPPORTED_ACTIVATIONS)})")
        if problems:
            raise UnsupportedModelError("; ".join(problems))
        if not self.attn_scale:
            object.__setattr__(self, "attn_scale", self.head_dim**-0.5)

    @property
    def num_groups(self) -> int:
        """Query heads per key/value head (1: MHA, num_heads: MQA)."""
        return self.num_heads // self.num_kv_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        data = dict(data)
        data["rope"] = {kind: RopeSpec(**spec) for kind, spec in data["rope"].items()}
        data["layer_types"] = tuple(data["layer_types"])
        data["eos_token_ids"] = tuple(data.get("eos_token_ids") or ())
        return cls(**data)


def _rope_spec(params: dict[str, Any], max_positions: int) -> RopeSpec:
    rope_type = params.get("rope_type") or params.get("type") or "default"
    return RopeSpec(
        theta=float(params["rope_theta"]),
        rope_type=rope_type,
        factor=float(params.get("factor") or 1.0),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(params.get("original_max_position_embeddings") or max_positions),
    )


def _rope_by_layer_type(hf: Any, layer_types: tuple[str, ...]) -> dict[str, RopeSpec]:
    """transformers 5 keeps rope in ``rope_parameters``: flat for most models, keyed by layer type for Gemma-3."""
    params = getattr(hf, "rope_parameters", None)
    if params is None:  # transformers 4.x style config object
        params = dict(getattr(hf, "rope_scaling", None) or {})
        params["rope_theta"] = getattr(hf, "rope_theta", 10000.0)
    if all(kind in params for kind in set(layer_types)):
        return {kind: _rope_spec(params[kind], hf.max_position_embeddings) for kind in set(layer_types)}
    spec = _rope_spec(params, hf.max_position_embeddings)
    return {kind: spec for kind in set(layer_types)}


def _layer_types(hf: Any) -> tuple[str, ...]:
    types = getattr(hf, "layer_types", None)
    if types:
        return tuple(types)
    # Mistral has no layer_types: a configured window applies to every layer.
    kind = SLIDING if getattr(hf, "sliding_window", None) else FULL
    return (kind,) * hf.num_hidden_layers


def _eos_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (int(value),)


def model_config_from_hf(hf: Any) -> ModelConfig:
    """Translate a transformers ``PretrainedConfig`` of a supported family into a ``ModelConfig``."""
    model_type = hf.model_type
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"model_type '{model_type}' is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    gemma = SUPPORTED_MODEL_TYPES[model_type] == "gemma"
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    layer_types = _layer_types(hf)
    has_sliding = SLIDING in layer_types
    attention_bias = bool(getattr(hf, "attention_bias", False))
    return ModelConfig(
        model_type=model_type,
        vocab_size=hf.vocab_size,
        hidden_size=hf.hidden_size,
        intermediate_size=hf.intermediate_size,
        num_layers=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads,
        num_kv_heads=getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads,
        head_dim=head_dim,
        rms_norm_eps=float(hf.rms_norm_eps),
        max_position_embeddings=hf.max_position_embeddings,
        rope=_rope_by_layer_type(hf, layer_types),
        layer_types=layer_types,
        # Gemma configs carry both names; their MLP uses hidden_activation.
        hidden_act=(getattr(hf, "hidden_activation", None) if gemma else None) or hf.hidden_act,
        norm_style="gemma" if gemma else "llama",
        qkv_bias=True if model_type == "qwen2" else attention_bias,
        o_bias=False if model_type == "qwen2" else attention_bias,
        mlp_bias=bool(getattr(hf, "mlp_bias", False)),
        qk_norm=model_type == "gemma3_text",
        sandwich_norm=gemma,
        embed_scale=math.sqrt(hf.hidden_size) if gemma else 1.0,
        attn_scale=hf.query_pre_attn_scalar**-0.5 if gemma else head_dim**-0.5,
        attn_softcap=getattr(hf, "attn_logit_softcapping", None) if gemma else None,
        final_softcap=getattr(hf, "final_logit_softcapping", None) if gemma else None,
        sliding_window=hf.sliding_window if has_sliding else None,
        tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
        bos_token_id=getattr(hf, "bos_token_id", None),
        eos_token_ids=_eos_ids(getattr(hf, "eos_token_id", None)),
        pad_token_id=getattr(hf, "pad_token_id", None),
    )
