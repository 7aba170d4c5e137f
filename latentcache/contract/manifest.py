"""The graph I/O contract: what an artifacts directory holds, written by export and read by everyone else.

This module is the one place that knows the contract. Export builds a ``Manifest`` and writes
``manifest.json``; the TensorRT builder and every runtime backend read tensor names, dtypes and shapes
from it by *role* and never spell a tensor name themselves. Standard library only (edge devices).

Graphs (``GRAPHS``) and their semantics, identical for every backend:

- ``prefill``: ``q`` new rows -> the logits of the last row (fp32) and the updated cache. Each row is a
  token id or, where ``embeds_mask`` is 1, the given input embedding; this is also how latents are
  *absorbed* (all rows embeddings), so no third copy of the base weights is ever loaded.
- ``decode``: one token per sequence -> logits and the updated cache; every shape static except the
  attended span.
- ``coprocessor``: the base cache -> ``num_latents`` latent embeddings (soft tokens baked in).

Shared inputs: ``position_ids [batch, q]`` (rope positions), ``write_index [batch]`` (first cache slot
written), ``attention_mask [batch, attend]`` (1 where a cache slot holds a real token once this call's
rows are written; the graph attends over slots ``0..attend-1`` only, so a runtime may pass the live span
or the full capacity). New rows at slots ``write_index + i`` see valid slots ``<= their own`` and
sliding-window layers only slots within the window. Keys are stored after rope.

Cache layout (``KVSpec``): per layer ``[batch, kv_heads, max_seq, head_dim]`` keys and values; ``past_*``
inputs and ``present_*`` outputs have identical shapes and dtypes so a runtime can bind both to the same
buffer.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from latentcache.contract.dtypes import NAMES as DTYPES
from latentcache.contract.files import sha256_of
from latentcache.errors import LatentcacheError

MANIFEST_VERSION = 1
MANIFEST_FILE = "manifest.json"
GRAPHS = ("prefill", "decode", "coprocessor")
KV_UPDATES = ("inplace", "portable")

# Roles: the contract's vocabulary. Per-layer cache roles carry the layer index in TensorSpec.layer.
INPUT_IDS, INPUTS_EMBEDS, EMBEDS_MASK = "input_ids", "inputs_embeds", "embeds_mask"
POSITION_IDS, WRITE_INDEX, ATTENTION_MASK = "position_ids", "write_index", "attention_mask"
PAST_KEY, PAST_VALUE, PRESENT_KEY, PRESENT_VALUE = "past_key", "past_value", "present_key", "present_value"
LOGITS, LATENTS = "logits", "latents"


class ManifestError(LatentcacheError):
    """The artifacts directory does not satisfy its own contract (or the contract is unknown)."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    role: str
    dtype: str
    shape: tuple[str | int, ...]  # named dimensions are strings ("batch", "query", "attend", ...)
    layer: int | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ManifestError(f"tensor {self.name}: unknown dtype '{self.dtype}'")

    @staticmethod
    def from_dict(data: dict) -> "TensorSpec":
        return TensorSpec(data["name"], data["role"], data["dtype"], tuple(data["shape"]), data.get("layer"))


@dataclass(frozen=True)
class GraphSpec:
    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def tensor(self, role: str, layer: int | None = None, *, output: bool = False) -> TensorSpec:
        """The one input (or output) that plays ``role`` (for ``layer``)."""
        for spec in self.outputs if output else self.inputs:
            if spec.role == role and spec.layer == layer:
                return spec
        raise ManifestError(f"{self.file} has no {'output' if output else 'input'} for role {role} layer {layer}")

    def has(self, role: str) -> bool:
        return any(spec.role == role for spec in self.inputs)

    def cache_pairs(self, past: bool = True) -> list[tuple[TensorSpec, TensorSpec]]:
        """``(key, value)`` cache tensors per layer, inputs (``past``) or outputs."""
        specs = self.inputs if past else self.outputs
        keys = {s.layer: s for s in specs if s.role == (PAST_KEY if past else PRESENT_KEY)}
        values = {s.layer: s for s in specs if s.role == (PAST_VALUE if past else PRESENT_VALUE)}
        return [(keys[i], values[i]) for i in sorted(keys)]

    @staticmethod
    def from_dict(data: dict) -> "GraphSpec":
        return GraphSpec(
            data["file"],
            tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
            tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
        )


@dataclass(frozen=True)
class KVSpec:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    max_seq: int
    batch: int
    dtype: str
    layout: str = "batch, kv_heads, max_seq, head_dim"

    def shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.num_kv_heads, self.max_seq, self.head_dim)


@dataclass(frozen=True)
class Manifest:
    """Everything a builder or runtime needs to know about an artifacts directory."""

    graphs: dict[str, GraphSpec]
    kv: KVSpec
    model: dict  # the ModelConfig as a dict (rope parameters, heads, norms, windows, ...)
    dtype: str
    kv_update: str
    hidden_size: int
    vocab_size: int
    num_latents: int  # 0 when exported without a coprocessor
    latent_positions: str  # the rule, for humans; the runtime implements it (runtime/generator.py)
    special_tokens: dict  # bos_token_id, eos_token_ids, pad_token_id
    tokenizer_files: tuple[str, ...]
    chat_template: str | None
    opset: int
    tool_versions: dict
    files: dict[str, str] = field(default_factory=dict)  # file -> sha256
    coprocessor: dict = field(default_factory=dict)  # checkpoint metadata (config, metrics) when present
    sources: dict = field(default_factory=dict)  # where base/coprocessor came from (the torch reference backend)
    version: int = MANIFEST_VERSION

    def __post_init__(self) -> None:
        if self.kv_update not in KV_UPDATES:
            raise ManifestError(f"kv_update must be one of {KV_UPDATES}, got '{self.kv_update}'")
        missing = [g for g in ("prefill", "decode") if g not in self.graphs]
        if missing:
            raise ManifestError(f"manifest lacks the {', '.join(missing)} graph(s)")
        if (self.num_latents > 0) != ("coprocessor" in self.graphs):
            raise ManifestError("num_latents and the presence of the coprocessor graph disagree")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @staticmethod
    def from_dict(data: dict) -> "Manifest":
        version = data.get("version")
        if version != MANIFEST_VERSION:
            raise ManifestError(
                f"manifest version {version} is not supported by this runtime (reads version {MANIFEST_VERSION}):"
                " re-export the artifacts with this latentcache version"
            )
        fields = dict(data)
        fields["graphs"] = {name: GraphSpec.from_dict(g) for name, g in data["graphs"].items()}
        fields["kv"] = KVSpec(**data["kv"])
        fields["tokenizer_files"] = tuple(data["tokenizer_files"])
        return Manifest(**fields)


def load_manifest(directory: str | Path, verify: bool = True) -> Manifest:
    """Read ``directory/manifest.json``; with ``verify``, check every listed file exists with its sha256."""
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(f"{directory} is not an artifacts directory (no {MANIFEST_FILE}): run `latentcache export`")
    try:
        manifest = Manifest.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ManifestError(f"{path} is malformed ({exc}): re-export the artifacts") from None
    if verify:
        for name, expected in manifest.files.items():
            file = directory / name
            if not file.is_file():
                raise ManifestError(f"{file} is listed in the manifest but missing: re-export the artifacts")
            if sha256_of(file) != expected:
                raise ManifestError(f"{file} does not match its sha256 in the manifest: re-export the artifacts")
    return manifest
