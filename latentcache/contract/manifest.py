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

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from latentcache.contract.dtypes import NAMES as DTYPES
from latentcache.contract.dtypes import to_short
from latentcache.contract.files import sha256_of
from latentcache.errors import LatentcacheError

# Version 2 added ``augmentation`` (how the base reads the latents); version-1 artifacts are the paper's variant.
# Version 3 added ``weights`` (float or weight-only quantized, and which backends read the graphs).
MANIFEST_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
MANIFEST_FILE = "manifest.json"
GRAPHS = ("prefill", "decode", "coprocessor")
KV_UPDATES = ("inplace", "portable")
OPS_FORMS = ("standard", "onnx-llm", "onnxruntime")  # the graph forms (Manifest.ops)

# Roles: the contract's vocabulary. Per-layer cache roles carry the layer index in TensorSpec.layer.
INPUT_IDS, INPUTS_EMBEDS, EMBEDS_MASK = "input_ids", "inputs_embeds", "embeds_mask"
POSITION_IDS, WRITE_INDEX, ATTENTION_MASK = "position_ids", "write_index", "attention_mask"
PAST_KEY, PAST_VALUE, PRESENT_KEY, PRESENT_VALUE = "past_key", "past_value", "present_key", "present_value"
LOGITS, LATENTS = "logits", "latents"

# How the frozen base reads the latents (``latentcache.model.layout`` defines the variants):
# - "paper": latents absorbed after the prompt at the next slots and positions, the last one predicts next;
# - "refeed": after the latents the runtime feeds the last token again, at its own position, into a new slot and
#   marks the old slot empty; decoding continues from that token's logits at the following positions. The
#   runtime writes LATENT_SLOT into attention_mask for every latent slot: the prefill/decode graphs then place
#   sliding windows by token positions and bias the scores of latent keys by a learned gate (fixed at zero here);
# - "gated": "refeed" with a trained gate. "" when there is no coprocessor.
AUGMENTATIONS = ("gated", "refeed", "paper")
REFEEDING = ("gated", "refeed")  # the augmentations that feed the last token again after the latents
EMPTY_SLOT, TOKEN_SLOT, LATENT_SLOT = 0, 1, 2  # attention_mask values


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
    def from_dict(data: dict) -> TensorSpec:
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
    def from_dict(data: dict) -> GraphSpec:
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
    augmentation: str = ""  # one of AUGMENTATIONS with a coprocessor, else ""
    # How the graphs store weights: {"format": "fp32"|"fp16"|"bf16"|"int8"|"int4"|"int4-hqq", "consumers": [backends
    # that read the graphs], and for int formats bits, block_size, symmetric, method, form}. Before version 3: the
    # dtype.
    weights: dict = field(default_factory=dict)
    # "standard" (ONNX operators every backend reads), "onnx-llm" (ONNX's Attention and RotaryEmbedding operators:
    # ONNX Runtime, TensorRT >= 10.15) or "onnxruntime" (ONNX Runtime's fused attention; only it reads them). Same
    # I/O contract in every form.
    ops: str = "standard"
    # The index of weights.bin (export/weight_store.py: per graph, each initializer stored there, its offset, length,
    # type and dims, and whether sessions may share it), so a runtime can load every tensor once for all its sessions;
    # "" in artifacts exported before it existed.
    weight_index: str = ""
    # sha256 of the manifest's own canonical JSON without this field (``to_json`` fills it): detects an edited
    # or damaged manifest. A checksum, not a signature: whoever can edit the file can recompute it.
    integrity: str = ""

    def __post_init__(self) -> None:
        if self.kv_update not in KV_UPDATES:
            raise ManifestError(f"kv_update must be one of {KV_UPDATES}, got '{self.kv_update}'")
        if self.ops not in OPS_FORMS:
            raise ManifestError(f"ops must be one of {OPS_FORMS}, got '{self.ops}': re-export the artifacts")
        missing = [g for g in ("prefill", "decode") if g not in self.graphs]
        if missing:
            raise ManifestError(f"manifest lacks the {', '.join(missing)} graph(s)")
        if (self.num_latents > 0) != ("coprocessor" in self.graphs):
            raise ManifestError("num_latents and the presence of the coprocessor graph disagree")
        expected = AUGMENTATIONS if self.num_latents else ("",)
        if self.augmentation not in expected:
            raise ManifestError(f"augmentation '{self.augmentation}' with {self.num_latents} latents: expected one of "
                                f"{expected}; re-export the artifacts")

    @property
    def weight_format(self) -> str:
        return self.weights.get("format") or to_short(self.dtype)

    def readable_by(self, consumer: str) -> bool:
        """Whether ``consumer`` ("onnxruntime" or "tensorrt") can run these graphs (int8 weights are ONNX Runtime's)."""
        return self._ops_readable_by(consumer) and consumer in self.weights.get("consumers", ("onnxruntime", "tensorrt"))

    def _ops_readable_by(self, consumer: str) -> bool:
        return self.ops != "onnxruntime" or consumer == "onnxruntime"

    def require_consumer(self, consumer: str, error: type[Exception] = ManifestError) -> None:
        """A one-line ``error`` unless ``consumer`` can run these graphs (a backend raises BackendUnavailable, so
        ``--backend auto`` goes on to the next)."""
        if not self._ops_readable_by(consumer):
            raise error(f"these artifacts' graphs use ONNX Runtime's fused attention (--ops onnxruntime), which "
                        f"{consumer} does not read: re-export with --ops standard for {consumer}")
        if not self.readable_by(consumer):
            readers = ", ".join(self.weights.get("consumers", ())) or "no backend"
            raise error(f"these artifacts hold {self.weight_format} weights in a form only {readers} reads: "
                        f"re-export with --weights int4 (or float) for {consumer}")

    @property
    def refeeds(self) -> bool:
        """Whether the runtime feeds the last token again after absorbing the latents."""
        return self.augmentation in REFEEDING

    @property
    def latent_slot_value(self) -> int:
        """The attention_mask value of a latent's slot (the refeed/gated graphs tell latents from tokens by it)."""
        return LATENT_SLOT if self.refeeds else TOKEN_SLOT

    def to_json(self) -> str:
        data = json.loads(json.dumps(asdict(self)))  # tuples become lists, exactly as a reader will see them
        data["integrity"] = integrity_of(data)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def named_sizes(self) -> dict[str, int]:
        """The named dimensions fixed at export (``query`` and ``attend`` vary per call)."""
        kv = self.kv
        return {"batch": kv.batch, "kv_heads": kv.num_kv_heads, "max_seq": kv.max_seq, "head_dim": kv.head_dim,
                "hidden": self.hidden_size, "vocab": self.vocab_size}

    def referenced_files(self) -> list[str]:
        """Every path the runtime opens in the artifacts folder: graphs, tokenizer files, the chat template."""
        names = [graph.file for graph in self.graphs.values()] + list(self.tokenizer_files)
        names += [self.weight_index] if self.weight_index else []
        return names + ([self.chat_template] if self.chat_template else [])

    @staticmethod
    def from_dict(data: dict) -> Manifest:
        version = data.get("version")
        if version not in READABLE_VERSIONS:
            raise ManifestError(
                f"manifest version {version} is not supported by this runtime (reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}): re-export the artifacts with this latentcache version"
            )
        claimed = data.get("integrity")
        if not isinstance(claimed, str) or not claimed:
            raise ManifestError(f"manifest version {version} without an integrity field (written before latentcache "
                                "checked manifests): re-export the artifacts with this latentcache version")
        if claimed != integrity_of(data):
            raise ManifestError("manifest.json was edited or damaged after export (its integrity sha256 does not match "
                                "its contents): re-export the artifacts")
        fields = dict(data)
        if version == 1:  # written before the variants: the paper's, when there is a coprocessor at all
            fields["augmentation"] = "paper" if data.get("num_latents") else ""
        fields["graphs"] = {name: GraphSpec.from_dict(g) for name, g in data["graphs"].items()}
        fields["kv"] = KVSpec(**data["kv"])
        fields["tokenizer_files"] = tuple(data["tokenizer_files"])
        return Manifest(**fields)


def integrity_of(data: dict) -> str:
    """sha256 of a manifest's canonical JSON (sorted keys, no spaces), the ``integrity`` field itself left out."""
    rest = {key: value for key, value in data.items() if key != "integrity"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def load_manifest(directory: str | Path, verify: bool = True) -> Manifest:
    """Read ``directory/manifest.json``: its integrity field, every path confined to ``directory``, and the
    ``files`` hash map covering every file the graphs and tokenizer read (every regular file at the top level).
    With ``verify``, also check each listed file exists with its sha256."""
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(f"{directory} is not an artifacts directory (no {MANIFEST_FILE}): run `latentcache export`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise TypeError(f"a JSON {type(data).__name__}, not an object")
        manifest = Manifest.from_dict(data)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ManifestError(f"{path} is malformed ({exc}): re-export the artifacts") from None
    check_paths(directory, manifest)
    if verify:
        for name, expected in manifest.files.items():
            file = directory / name
            if not file.is_file():
                raise ManifestError(f"{file} is listed in the manifest but missing: re-export the artifacts")
            if sha256_of(file) != expected:
                raise ManifestError(f"{file} does not match its sha256 in the manifest: re-export the artifacts")
    return manifest


def check_paths(directory: Path, manifest: Manifest) -> None:
    """Every path stays inside ``directory``, and every file the runtime may read there is hashed.

    Covered: the graphs, tokenizer files and chat template when present, and every other regular file at
    the top level (external weights such as ``weights.bin`` are opened by ONNX Runtime, not by us). Hidden
    files and subfolders (``engines/``, checked by the TensorRT backend) are not covered."""
    root = directory.resolve()
    for name in [*manifest.referenced_files(), *manifest.files]:
        if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
            raise ManifestError(f"{directory / MANIFEST_FILE}: path {name!r} leaves the artifacts folder: re-export "
                                "the artifacts")
        resolved = (directory / name).resolve()
        if resolved != root and root not in resolved.parents:
            raise ManifestError(f"{directory / name} resolves outside the artifacts folder (a symlink?): re-export "
                                "the artifacts")
    present = [name for name in manifest.referenced_files() if (directory / name).exists()]
    present += [p.name for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")
                and p.name != MANIFEST_FILE]
    unhashed = sorted(set(present) - set(manifest.files))
    if unhashed:
        raise ManifestError(f"{directory / MANIFEST_FILE}: no sha256 for {', '.join(unhashed[:3])}"
                            f"{' and more' if len(unhashed) > 3 else ''} (its files map must cover every file the "
                            "graphs and tokenizer read): re-export the artifacts")
