"""`latentcache export`: base (+ coprocessor) -> prefill/decode/coprocessor ONNX graphs, weights, manifest.

Everything is written to a temporary sibling directory and renamed into place at the end, so an
interrupted export never leaves a directory that looks valid. Large weights of all graphs go to one
``weights.bin`` with content de-duplication: the base's weights are stored once for prefill and decode, and
for the coprocessor too when it is LoRA (unmerged: its graph multiplies by the base's weights plus its adapters).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from latentcache.contract import dtypes
from latentcache.contract import manifest as contract
from latentcache.contract.files import (
    check_apart,
    folder_lock,
    replace_directory,
    sha256_of,
    snapshot,
    staging_directory,
)
from latentcache.errors import LatentcacheError
from latentcache.export.weight_store import WEIGHT_INDEX_FILE, WEIGHTS_FILE, WeightStore
from latentcache.limits import cache_bytes, check_memory
from latentcache.progress import Steps

DEFAULT_MAX_SEQ = 2048  # the kv-cache capacity when --max-seq is not given (or the model's positions, if fewer)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")
CHAT_TEMPLATE_FILE = "chat_template.jinja"


@dataclass(frozen=True)
class ExportConfig:
    base: Path
    out: Path
    coprocessor: Path | None = None
    dtype: str = "fp32"  # what every backend runs, ONNX Runtime CPU (no bf16 kernels) included
    max_seq: int | None = None  # None: min(DEFAULT_MAX_SEQ, the model's positions)
    batch: int = 1
    kv_update: str = "inplace"
    weights: str = "float"  # "float": weights in --dtype; "int8"/"int4"/"int4-hqq": weight-only (export.quantize)
    # A LoRA coprocessor's adapters: "unmerged" keeps them beside the base's own weights (stored once with the
    # base's in weights.bin); "merged" folds them into a second full copy (one MatMul per projection).
    lora: str = "unmerged"
    # "standard": ONNX operators every backend reads; "onnx-llm": ONNX's Attention and RotaryEmbedding operators
    # (latentcache.model.onnx_llm; ONNX Runtime CPU and CUDA, TensorRT >= 10.15); "onnxruntime": ONNX Runtime's
    # fused attention (com.microsoft.GroupQueryAttention, latentcache.model.fused_attention), its CPU only.
    ops: str = "standard"
    force: bool = False

    def __post_init__(self) -> None:
        from latentcache.export.quantize import QUANTIZED_BITS

        dtypes.from_short(self.dtype)
        if self.weights not in ("float", *QUANTIZED_BITS):
            raise LatentcacheError(f"--weights must be float, {', '.join(QUANTIZED_BITS)}, got '{self.weights}'")
        if self.weights in QUANTIZED_BITS and self.dtype != "fp32":
            raise LatentcacheError(f"--weights {self.weights} keeps fp32 activations: drop --dtype {self.dtype} "
                                   "(quantized weights with fp16 activations are not exported yet)")
        if self.lora not in ("unmerged", "merged"):
            raise LatentcacheError(f"--lora must be unmerged or merged, got '{self.lora}'")
        if self.kv_update not in contract.KV_UPDATES:
            raise LatentcacheError(f"--kv-update must be one of {', '.join(contract.KV_UPDATES)}, got '{self.kv_update}'")
        if self.max_seq is not None and self.max_seq < 8:
            raise LatentcacheError(f"--max-seq must be at least 8, got {self.max_seq}")
        if self.batch < 1:
            raise LatentcacheError(f"--batch must be at least 1, got {self.batch}")
        check_ops(self)
        # --force replaces --out wholesale: it must never be (or hold, or sit inside) what the export reads.
        check_apart(Path(self.out), "--out", {"--base": Path(self.base), "--coprocessor": self.coprocessor})
        check_replaceable(self)


def check_ops(config: ExportConfig) -> None:
    """What each graph form can be: onnx-llm's operators need the opset-24 cache update; ONNX Runtime's fused
    attention kernel (its CPU kernel) takes float32 only, and no batch > 1 for several rows after a non-empty past,
    which is what absorbing latents is."""
    if config.ops not in contract.OPS_FORMS:
        raise LatentcacheError(f"--ops must be one of {', '.join(contract.OPS_FORMS)}, got '{config.ops}'")
    if config.ops == "standard":
        return
    if config.ops == "onnx-llm":
        if config.kv_update != "inplace":
            raise LatentcacheError("--ops onnx-llm uses opset-23 operators, and --kv-update portable writes opset-18 "
                                   "graphs for TensorRT 10.3: drop --kv-update portable, or use --ops standard")
        return
    if config.dtype != "fp32":
        raise LatentcacheError(f"--ops onnxruntime runs on ONNX Runtime's CPU kernel, which takes fp32 only: drop "
                               f"--dtype {config.dtype} (on CUDA use --ops standard, whose decode is CUDA-graphed)")
    if config.kv_update != "inplace":
        raise LatentcacheError("--ops onnxruntime updates the cache inside its attention node: drop --kv-update "
                               f"{config.kv_update}")
    if config.batch > 1 and config.coprocessor is not None:
        raise LatentcacheError("--ops onnxruntime cannot absorb latents at --batch > 1 (ONNX Runtime's fused "
                               "attention refuses several rows per sequence after a past): use --batch 1 or --ops standard")


def check_replaceable(config: ExportConfig) -> None:
    out = Path(config.out)
    if (out.is_symlink() or out.exists()) and (not out.is_dir() or out.is_symlink() or any(out.iterdir())) \
            and not config.force:
        raise LatentcacheError(f"{out} exists and is not empty: choose another --out or pass --force to replace it")


@dataclass(frozen=True)
class GraphPlan:
    """One graph to export: the module, example inputs, and the contract's view of its I/O."""

    name: str
    module: torch.nn.Module
    args: tuple
    kwargs: dict
    dynamic: dict
    inputs: tuple[contract.TensorSpec, ...]
    outputs: tuple[contract.TensorSpec, ...]


def cache_specs(num_layers: int, dtype: str, past: bool) -> list[contract.TensorSpec]:
    shape = ("batch", "kv_heads", "max_seq", "head_dim")
    roles = (contract.PAST_KEY, contract.PAST_VALUE) if past else (contract.PRESENT_KEY, contract.PRESENT_VALUE)
    names = ("past_key_values.{}.key", "past_key_values.{}.value") if past else ("present.{}.key", "present.{}.value")
    return [
        contract.TensorSpec(name.format(i), role, dtype, shape, layer=i)
        for i in range(num_layers)
        for role, name in zip(roles, names)
    ]


def _spec(role: str, dtype: str, shape: tuple) -> contract.TensorSpec:
    return contract.TensorSpec(role, role, dtype, shape)


def plan_graphs(base, coprocessor, config: ExportConfig, dtype: torch.dtype) -> list[GraphPlan]:
    from torch.export import Dim

    from latentcache.model.graph_steps import CoprocessorStep, base_steps
    from latentcache.model.kv_update import UPDATES

    mc, batch, max_seq = base.config, config.batch, config.max_seq
    dt = str(dtype).removeprefix("torch.")
    query, attend = Dim("query", min=1, max=max_seq), Dim("attend", min=1, max=max_seq)
    update = UPDATES[config.kv_update]
    # with the coprocessor's latent gate, when its variant has one
    steps = base_steps(base, update, coprocessor, ops=config.ops)
    cache = [torch.zeros(batch, mc.num_kv_heads, max_seq, mc.head_dim, dtype=dtype) for _ in range(2 * mc.num_layers)]
    q, span = 3, 7  # example sizes >= 2 so the exporter does not specialise them
    ids = torch.ones(batch, q, dtype=torch.long)
    positions = torch.arange(2, 2 + q).expand(batch, -1).contiguous()
    write_index = torch.full((batch,), 2, dtype=torch.long)
    mask = torch.ones(batch, span, dtype=torch.long)
    common_in = [
        _spec(contract.INPUT_IDS, "int64", ("batch", "query")),
        _spec(contract.POSITION_IDS, "int64", ("batch", "query")),
        _spec(contract.WRITE_INDEX, "int64", ("batch",)),
        _spec(contract.ATTENTION_MASK, "int64", ("batch", "attend")),
        *cache_specs(mc.num_layers, dt, past=True),
    ]
    base_out = (_spec(contract.LOGITS, "float32", ("batch", "vocab")), *cache_specs(mc.num_layers, dt, past=False))
    cache_dims = [{} for _ in cache]
    plans = [
        GraphPlan(
            "prefill", steps["prefill"],
            (ids, positions, write_index, mask, cache),
            {"inputs_embeds": torch.zeros(batch, q, mc.hidden_size, dtype=dtype),
             "embeds_mask": torch.zeros(batch, q, dtype=torch.long)},
            {"input_ids": {1: query}, "position_ids": {1: query}, "write_index": {}, "attention_mask": {1: attend},
             "cache": cache_dims, "inputs_embeds": {1: query}, "embeds_mask": {1: query}},
            (*common_in, _spec(contract.INPUTS_EMBEDS, dt, ("batch", "query", "hidden")),
             _spec(contract.EMBEDS_MASK, "int64", ("batch", "query"))),
            base_out,
        ),
        GraphPlan(
            "decode", steps["decode"],
            (ids[:, :1], positions[:, :1], write_index, mask, cache), {},
            {"input_ids": {}, "position_ids": {}, "write_index": {}, "attention_mask": {1: attend},
             "cache": cache_dims},
            tuple(_with_shape(s, "query", 1) for s in common_in),
            base_out,
        ),
    ]
    if coprocessor is not None:
        n = coprocessor.config.num_latents
        plans.append(GraphPlan(
            "coprocessor", CoprocessorStep(coprocessor, config.ops),
            (torch.arange(span, span + n).expand(batch, -1).contiguous(), mask, cache), {},
            {"position_ids": {}, "attention_mask": {1: attend}, "cache": cache_dims},
            (_spec(contract.POSITION_IDS, "int64", ("batch", n)), _spec(contract.ATTENTION_MASK, "int64", ("batch", "attend")),
             *cache_specs(mc.num_layers, dt, past=True)),
            (_spec(contract.LATENTS, dt, ("batch", n, "hidden")),),
        ))
    return plans


def _with_shape(spec: contract.TensorSpec, dim: str, value: int) -> contract.TensorSpec:
    shape = tuple(value if d == dim else d for d in spec.shape)
    return contract.TensorSpec(spec.name, spec.role, spec.dtype, shape, spec.layer)


def export_graph(plan: GraphPlan, opset: int, store: WeightStore, directory: Path, weights: str = "float"):
    """Export one graph (its MatMul weights quantized unless ``weights`` is "float"), move its weights to the
    shared store, check it, and return its ``GraphSpec``."""
    import onnx

    from latentcache.export.pack_linears import feed_packed_qkv, pack_linears, record_packed
    from latentcache.export.quantize import QUANTIZED_BITS, quantize_weights

    names_in = [s.name for s in plan.inputs]
    names_out = [s.name for s in plan.outputs]
    with torch.no_grad(), quiet_exporter():
        program = torch.onnx.export(
            plan.module, plan.args, kwargs=plan.kwargs, dynamic_shapes=plan.dynamic, input_names=names_in,
            output_names=names_out, opset_version=opset, dynamo=True, optimize=False, verbose=False,
        )
    optimize_graph(program.model)
    model = program.model_proto
    packed = pack_linears(model)  # reads the exporter's module names from the node metadata
    feed_packed_qkv(model)  # --ops onnxruntime: the fused attention reads the packed q/k/v product itself
    if weights in QUANTIZED_BITS:  # identical base weights quantize to identical bytes: still stored once
        model = quantize_weights(model, weights)
        record_packed(model, packed)
    for node in model.graph.node:  # the exporter's stack traces and FX text: most of a graph file's bytes, and paths
        del node.metadata_props[:]  # of the machine that exported it
    check_io(model, plan)
    store.externalize(model, plan.name)
    path = directory / f"{plan.name}.onnx"
    onnx.save_model(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)  # full_check runs strict shape inference
    return contract.GraphSpec(path.name, plan.inputs, plan.outputs)


def optimize_graph(model) -> None:
    """What the exporter's ``optimize=True`` does (onnxscript's ``optimize``), without its slowest part.

    That optimizer matches all 46 default rewrite rules together, twice; under cProfile on SmolLM2-135M's decode
    graph it was 101 of 162 s. Applied one rule at a time, once, the same rules take 10 s on the prefill graph and
    rewrite the nodes that matter (3,888 -> 2,927 after folding: reshape shapes materialised, squeeze/unsqueeze
    pairs merged; on the tiny test models a second pass finds nothing). So: inline, fold constants, each default
    rule once, then the same clean-up passes in the same order; ONNX Runtime and TensorRT optimize on top.
    Measured without a profiler (``benchmarks/export_time.py``, 2 idle cores, three graphs, fp32): 110.0 s with
    the exporter's optimizer, 88.9 s with this one.
    """
    import onnx_ir as ir
    import onnx_ir.passes.common as common
    import onnxscript.optimizer

    try:  # private names of onnxscript 0.7 (checked); where they moved, its public optimizer: same graph, slower
        from onnxscript.optimizer import _constant_folding as fold
        from onnxscript.rewriter import _DEFAULT_REWRITE_RULES, pattern
    except ImportError:
        onnxscript.optimizer.optimize_ir(model)
        return
    ir.passes.Sequential(
        common.InlinePass(),
        fold.FoldConstantsPass(shape_inference=True, input_size_limit=fold.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
                               output_size_limit=fold.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT),
        common.RemoveUnusedNodesPass(),
    )(model)
    for rule in _DEFAULT_REWRITE_RULES:
        pattern.RewriteRuleSet([rule]).apply_to_model(model)
    ir.passes.Sequential(
        common.RemoveUnusedNodesPass(),
        common.RemoveUnusedFunctionsPass(),
        common.RemoveUnusedOpsetsPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.LiftSubgraphInitializersToMainGraphPass(),
        common.DeduplicateInitializersPass(),
        common.CommonSubexpressionEliminationPass(),
        common.OutputFixPass(),
        common.NameFixPass(),
    )(model)


@contextlib.contextmanager
def quiet_exporter():
    """The exporter's chatter (progress emoji, optional-dependency and deprecation warnings) off stderr."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def check_io(model, plan: GraphPlan) -> None:
    """The exported graph's named I/O must be exactly the contract's (names, order, element types, rank)."""
    for kind, actual, expected in (("inputs", model.graph.input, plan.inputs), ("outputs", model.graph.output, plan.outputs)):
        got = [(v.name, dtypes.ONNX_ELEMENT_TYPES.get(v.type.tensor_type.elem_type, "other"), len(v.type.tensor_type.shape.dim))
               for v in actual]
        want = [(s.name, s.dtype, len(s.shape)) for s in expected]
        if got != want:
            raise RuntimeError(f"{plan.name}.onnx {kind} differ from the contract:\n got  {got}\n want {want}")


def with_model_defaults(config: ExportConfig) -> ExportConfig:
    """``config`` with ``max_seq`` filled in from the model's config.json: min(2048, the model's positions)."""
    from latentcache.model.loading import read_model_config

    if config.max_seq is not None:
        return config
    positions = read_model_config(config.base).max_position_embeddings
    return dataclasses.replace(config, max_seq=min(DEFAULT_MAX_SEQ, positions))


def copy_tokenizer(base: Path, directory: Path) -> tuple[tuple[str, ...], str | None]:
    copied = []
    for name in TOKENIZER_FILES:
        if (base / name).is_file():
            shutil.copy2(base / name, directory / name)
            copied.append(name)
    if "tokenizer.json" not in copied:
        raise LatentcacheError(f"{base} has no tokenizer.json: the runtime tokenizes with it; add it to the checkpoint")
    template = None
    if (base / CHAT_TEMPLATE_FILE).is_file():
        shutil.copy2(base / CHAT_TEMPLATE_FILE, directory / CHAT_TEMPLATE_FILE)
        template = CHAT_TEMPLATE_FILE
    return tuple(copied), template


def tool_versions() -> dict[str, str]:
    import onnx
    import onnxscript
    import transformers

    import latentcache

    return {"latentcache": latentcache.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "onnx": onnx.__version__, "onnxscript": onnxscript.__version__}


def coprocessor_metadata(directory: Path | None) -> dict:
    if directory is None:
        return {}
    from latentcache.model.checkpoint import WEIGHTS, load_state, resolve_checkpoint

    directory = resolve_checkpoint(Path(directory))
    state = load_state(directory)
    return {"config": state["coprocessor_config"], "step": state.get("step"), "fingerprints": state.get("fingerprints"),
            "metrics": state.get("metrics"), "weights_sha256": sha256_of(directory / WEIGHTS)}


def export_artifacts(config: ExportConfig, progress: Callable[[str], None] | None = None) -> Path:
    """Write the artifacts directory ``config.out``; returns its path."""
    from latentcache.model.checkpoint import load_models
    from latentcache.model.kv_update import OPSET

    steps = Steps(progress)
    out = Path(config.out)
    with folder_lock(out, what=" (another export or build on this --out)"):
        check_replaceable(config)  # again, now that no other latentcache writer can change it
        seen = snapshot(out)  # replaced at the end only if still exactly this
        config = with_model_defaults(config)
        short = config.dtype
        check_export_size(config, short)
        with steps.step("loading the models"):
            base, coprocessor = load_models(config.base, config.coprocessor, short, merge=config.lora == "merged")
        dtype = getattr(torch, dtypes.from_short(short))
        with staging_directory(out) as staging:
            store = WeightStore(staging / WEIGHTS_FILE)
            graphs = {}
            for plan in plan_graphs(base, coprocessor, config, dtype):
                form = dtypes.from_short(short) if config.weights == "float" else f"{config.weights} weights"
                kind = "fused attention" if config.ops == "onnxruntime" and plan.name != "coprocessor" else \
                    f"{config.kv_update} kv update" + (", ONNX Attention" if config.ops == "onnx-llm" else "")
                with steps.step(f"exporting {plan.name}.onnx ({kind}, {form})"):
                    graphs[plan.name] = export_graph(plan, OPSET[config.kv_update], store, staging, config.weights)
            store.write_index()
            tokenizer_files, template = copy_tokenizer(Path(config.base), staging)
            manifest = build_manifest(base, coprocessor, config, dtype, graphs, tokenizer_files, template, staging)
            (staging / contract.MANIFEST_FILE).write_text(manifest.to_json())
            replace_directory(staging, out, expected=seen)  # a --force'd --out is moved aside, then deleted
    steps.say(f"wrote {out} ({sum(f.stat().st_size for f in out.iterdir()) / 2**20:.1f} MiB) in {steps.total():.0f} s")
    return out


def check_export_size(config: ExportConfig, short: str) -> None:
    """--max-seq within the model's positions and the cache (tracing allocates it, past and present) in memory,
    checked from config.json before any weight is loaded."""
    from latentcache.model.loading import read_model_config

    mc = read_model_config(config.base)
    if config.max_seq > mc.max_position_embeddings:
        raise LatentcacheError(f"--max-seq {config.max_seq} exceeds the model's {mc.max_position_embeddings} positions")
    itemsize = 4 if short == "fp32" else 2
    needed = 2 * cache_bytes(mc.num_layers, config.batch, mc.num_kv_heads, config.max_seq, mc.head_dim, itemsize)
    check_memory(needed, f"a kv-cache of --batch {config.batch} x --max-seq {config.max_seq}",
                 "lower --batch or --max-seq")


def build_manifest(base, coprocessor, config, dtype, graphs, tokenizer_files, template, staging) -> contract.Manifest:
    from latentcache.export.quantize import weights_description
    from latentcache.model.kv_update import OPSET

    mc = base.config
    dtype_name = str(dtype).removeprefix("torch.")
    files = sorted(p.name for p in staging.iterdir() if p.is_file())
    return contract.Manifest(
        graphs=graphs,
        kv=contract.KVSpec(mc.num_layers, mc.num_kv_heads, mc.head_dim, config.max_seq, config.batch, dtype_name),
        model=mc.to_dict(),
        dtype=dtype_name,
        weights=weights_description(config.weights if config.weights != "float" else config.dtype, dtype_name),
        kv_update=config.kv_update,
        ops=config.ops,
        hidden_size=mc.hidden_size,
        vocab_size=mc.vocab_size,
        num_latents=coprocessor.config.num_latents if coprocessor is not None else 0,
        augmentation=coprocessor.variant if coprocessor is not None else "",
        latent_positions="latent i after a prompt ending at position p: position p + 1 + i, next cache slot"
                         + ("; then the last token again at position p (its old slot emptied)"
                            if coprocessor is not None and coprocessor.variant != "paper" else ""),
        special_tokens={"bos_token_id": mc.bos_token_id, "eos_token_ids": list(mc.eos_token_ids),
                        "pad_token_id": mc.pad_token_id},
        tokenizer_files=tokenizer_files,
        chat_template=template,
        opset=OPSET[config.kv_update],
        tool_versions=tool_versions(),
        files={name: sha256_of(staging / name) for name in files},
        weight_index=WEIGHT_INDEX_FILE,
        coprocessor=coprocessor_metadata(config.coprocessor),
        sources={"base": str(Path(config.base).resolve()),
                 "coprocessor": str(Path(config.coprocessor).resolve()) if config.coprocessor else None},
    )
