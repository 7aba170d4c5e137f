"""Exported graphs against the PyTorch reference, on ONNX Runtime CPU, for every tiny architecture.

Each row of a left-padded batch of two is compared with the reference run on that row alone, so padding,
write indices, masks and positions are all exercised. Tolerance 1e-4 (fp32).
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
import torch

from latentcache.contract.manifest import ManifestError, load_manifest
from latentcache.model.generate import advance, augment, greedy_tokens, prefill
from latentcache.runtime.backends.onnxruntime import OnnxRuntimeBackend, OnnxRuntimeCudaBackend
from latentcache.runtime.generator import EndOfPrompt, Generator
from tests.exported import PROMPTS, export_tiny
from tests.tiny import ARCHITECTURES, build_tiny, save_tiny_tokenizer

ATOL = 1e-4


# Three families in the default run (GQA+tied, sliding window, Gemma-2 soft-caps/sandwich norms); all in slow.
DEFAULT_SET = ("llama-gqa-tied", "mistral-sliding", "gemma2")


# Weight-only quantized graphs, against the reference holding the graphs' dequantized weights.
# int4-hqq on the tied model: its LM head (the embedding's transpose) goes to 8 bits, the projections to HQQ int4.
QUANTIZED = [("llama-gqa-tied", "int4"), ("qwen2-bias", "int8"), ("llama-gqa-tied", "int4-hqq"),
             pytest.param(("gemma2", "int4"), marks=pytest.mark.slow)]
# ONNX Runtime's fused attention (--ops onnxruntime), batch 1: its kernel absorbs no latents at batch > 1.
# llama's head size (8) rotates before the node, gemma3's (16) inside it (two rope kinds, qk-norm, sliding layers).
# gemma2's (16, no q/k norms) reads the packed q/k/v product itself (export.pack_linears.feed_packed_qkv).
FUSED = [("llama-gqa-tied", "float", "onnxruntime"), ("gemma3", "int4", "onnxruntime"),
         ("gemma2", "float", "onnxruntime")]
# ONNX's Attention and RotaryEmbedding (--ops onnx-llm), batch 2 like the standard form: grouped-query heads and the
# latent gate (llama), rotary nodes beside the explicit soft-capped attention (gemma2), sliding windows (mistral,
# slow) and quantized weights.
ONNX_LLM = [("llama-gqa-tied", "float", "onnx-llm"), ("gemma2", "float", "onnx-llm"),
            pytest.param(("mistral-sliding", "int4", "onnx-llm"), marks=pytest.mark.slow)]


@pytest.fixture(scope="module", params=[
    arch if arch in DEFAULT_SET else pytest.param(arch, marks=pytest.mark.slow) for arch in ARCHITECTURES
] + QUANTIZED + FUSED + ONNX_LLM, ids=lambda p: "-".join(p) if isinstance(p, tuple) else p)
def exported(request, tmp_path_factory):
    arch, weights, ops = (*request.param, "standard")[:3] if isinstance(request.param, tuple) else \
        (request.param, "float", "standard")
    return export_tiny(arch, tmp_path_factory.mktemp(f"{arch}-{weights}-{ops}"), kv_update="inplace",
                       weights=weights, ops=ops, batch=1 if ops == "onnxruntime" else 2)


def prompts_of(exported) -> list[list[int]]:
    """The test prompts the artifacts' batch takes (a fused-attention export runs one)."""
    return PROMPTS[: load_manifest(exported.artifacts).kv.batch]


def backend(exported):
    return OnnxRuntimeBackend(exported.artifacts, load_manifest(exported.artifacts), separate_decode=True,
                              **exported.backend_options)


def test_every_graph_passes_checker_and_shape_inference(exported):
    manifest = load_manifest(exported.artifacts)
    assert set(manifest.graphs) == {"prefill", "decode", "coprocessor"}
    for spec in manifest.graphs.values():
        path = exported.artifacts / spec.file
        onnx.checker.check_model(str(path), full_check=True)
        inferred = onnx.shape_inference.infer_shapes(onnx.load(str(path)), strict_mode=True)
        assert [o.name for o in inferred.graph.output] == [s.name for s in spec.outputs]


def test_projections_reading_one_activation_are_one_weight_whose_parts_the_graph_names(exported):
    """q/k/v and gate/up become one weight each (``export.pack_linears``): the graph records the parts in column
    order with the widths of the model's own linears, and no unpacked q/k/v/gate/up weight is left in it (the
    parity tests here and the quantized ones, which split the parts back out, check the products)."""
    from latentcache.export.pack_linears import parts_of_packed

    model = onnx.load(str(exported.artifacts / "decode.onnx"), load_external_data=False)
    expected = {}
    for i, layer in enumerate(exported.base.layers):
        for block, parts in (("self_attn", ("q", "k", "v")), ("mlp", ("gate", "up"))):
            prefix = f"base.layers.{i}.{block}"
            expected[f"{prefix}.{'_'.join(parts)}_proj"] = [
                (f"{prefix}.{part}_proj", getattr(getattr(layer, block), f"{part}_proj").out_features) for part in parts]
    assert parts_of_packed(model) == expected
    unpacked = {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"}
    leaves = {t.name.split(".weight")[0].rsplit(".", 1)[-1] for t in model.graph.initializer if ".weight" in t.name}
    assert leaves and not leaves & unpacked


def test_prefill_logits_and_cache_match_reference(exported):
    generator, prompts = Generator(backend(exported)), prompts_of(exported)
    logits = generator.prefill(prompts)
    longest = max(map(len, prompts))
    for row, prompt in enumerate(prompts):
        state = prefill(exported.base, prompt, 64)
        expected = exported.base.logits(state.hidden)[0].numpy()
        assert np.abs(logits[row] - expected).max() <= exported.atol
        for layer in range(exported.base.config.num_layers):
            keys, values = generator.backend.read_cache(layer)
            pad = longest - len(prompt)
            assert np.abs(keys[row, :, pad:longest] - state.cache.keys[layer][0, :, : len(prompt)].numpy()).max() <= exported.atol
            assert np.abs(values[row, :, pad:longest] - state.cache.values[layer][0, :, : len(prompt)].numpy()).max() <= exported.atol


def test_latents_absorbed_cache_and_16_decode_steps_match_reference(exported):
    generator, prompts = Generator(backend(exported)), prompts_of(exported)
    generator.prefill(prompts)
    latents = generator.coprocess()
    logits = generator.absorb(latents)
    longest = max(map(len, prompts))
    n_latents = latents.shape[1]
    states = []
    for row, prompt in enumerate(prompts):
        state = prefill(exported.base, prompt, 64)
        points = torch.tensor([[len(prompt) - 1]])
        expected = exported.coprocessor(state.cache, points, context_len=len(prompt))[0].numpy()
        assert np.abs(latents[row] - expected).max() <= exported.atol, "coprocessor latents"
        state = augment(exported.base, exported.coprocessor, state)
        assert np.abs(logits[row] - exported.base.logits(state.hidden)[0].numpy()).max() <= exported.atol, "logits after absorb"
        keys, _ = generator.backend.read_cache(exported.base.config.num_layers - 1)
        ref = state.cache.keys[-1][0, :, len(prompt): len(prompt) + n_latents].numpy()
        assert np.abs(keys[row, :, longest: longest + n_latents] - ref).max() <= exported.atol, "absorbed cache"
        states.append(state)
    tokens = np.array([7, 11])[: len(prompts)]
    for step in range(16):
        logits = generator.decode_step(tokens)
        for row, state in enumerate(states):
            states[row] = advance(exported.base, state, torch.tensor([int(tokens[row])]))
            hidden = states[row].hidden
            assert np.abs(logits[row] - exported.base.logits(hidden)[0].numpy()).max() <= exported.atol, f"decode step {step}"
        tokens = (tokens * 5 + step) % 90 + 3


@pytest.mark.parametrize("augmented", [False, True])
def test_greedy_32_tokens_equal_reference_pipeline(exported, augmented):
    generator, prompts = Generator(backend(exported)), prompts_of(exported)
    policy = EndOfPrompt() if augmented else None
    tokens = np.stack(list(generator.generate(prompts, 32, policy=policy)), axis=1)
    for row, prompt in enumerate(prompts):
        state = prefill(exported.base, prompt, 80)
        if augmented:
            state = augment(exported.base, exported.coprocessor, state)
        assert tokens[row].tolist() == greedy_tokens(exported.base, state, 32)


@pytest.fixture(scope="module", params=["mistral-sliding", pytest.param("gemma3", marks=pytest.mark.slow)])
def portable(request, tmp_path_factory):
    return export_tiny(request.param, tmp_path_factory.mktemp(f"portable-{request.param}"), kv_update="portable")


def test_portable_lowering_uses_no_tensorscatter_and_matches_reference(portable):
    manifest = load_manifest(portable.artifacts)
    assert manifest.kv_update == "portable" and manifest.opset == 18
    ops = {node.op_type for node in onnx.load(str(portable.artifacts / "decode.onnx"), load_external_data=False).graph.node}
    assert "TensorScatter" not in ops
    generator = Generator(OnnxRuntimeBackend(portable.artifacts, manifest, separate_decode=True))
    for augmented in (False, True):
        tokens = np.stack(list(generator.generate(PROMPTS, 32, policy=EndOfPrompt() if augmented else None)), axis=1)
        for row, prompt in enumerate(PROMPTS):
            state = prefill(portable.base, prompt, 80)
            if augmented:
                state = augment(portable.base, portable.coprocessor, state)
            assert tokens[row].tolist() == greedy_tokens(portable.base, state, 32)


def test_artifacts_are_as_readable_as_other_model_files(exported):
    """Published through a staging folder (mkdtemp makes 0700) and atomic writes (mkstemp makes 0600): the
    artifacts still get the umask's usual modes, so the group can read them like any downloaded model."""
    umask = os.umask(0)
    os.umask(umask)
    assert exported.artifacts.stat().st_mode & 0o777 == 0o777 & ~umask
    for path in exported.artifacts.iterdir():
        assert path.stat().st_mode & 0o444 & ~umask == 0o444 & ~umask, path.name


@pytest.mark.parametrize("weights", ["int4", "int8", "int4-hqq"])
def test_quantized_graphs_store_every_projection_once_and_say_so(tmp_path, weights):
    """Every projection (the LM head included) quantized, base weights shared by prefill and decode on disk, and the
    manifest naming the form and the backends that read it."""
    quantized = export_tiny("llama-gqa-tied", tmp_path / weights, weights=weights)
    manifest = load_manifest(quantized.artifacts)
    assert manifest.weight_format == weights and manifest.weights["block_size"] == 32
    assert manifest.readable_by("onnxruntime") and manifest.readable_by("tensorrt") == (weights == "int4")
    layers = quantized.base.config.num_layers
    for graph in ("prefill", "decode"):
        model = onnx.load(str(quantized.artifacts / f"{graph}.onnx"), load_external_data=False)
        op = "DequantizeLinear" if weights == "int4" else "MatMulNBits"
        # q/k/v packed into one weight and gate/up into another: 4 per layer (export.pack_linears)
        assert sum(n.op_type == op for n in model.graph.node) == 4 * layers + 1
        float_weights = [t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and
                         len(t.dims) == 2 and t.name.endswith(".weight.T")]
        assert not float_weights
    names = {t.name: t for t in onnx.load(str(quantized.artifacts / "decode.onnx"), load_external_data=False).graph.initializer}
    prefill = onnx.load(str(quantized.artifacts / "prefill.onnx"), load_external_data=False)
    if weights == "int4-hqq":  # the LM head at 8 bits, every projection at 4
        assert [t.name for t in prefill.graph.initializer if t.name.endswith("_Q8")] == ["base.lm_head.weight.T_Q8"]
    shared = [t for t in prefill.graph.initializer if t.name.endswith("_Q8" if weights == "int8" else "_Q4")]
    assert shared and all({e.key: e.value for e in t.external_data} ==
                          {e.key: e.value for e in names[t.name].external_data} for t in shared)  # one copy on disk


def test_hqq_zero_points_split_for_the_uint4_kernel_keep_the_float_zero_points_weights(tmp_path):
    """int4-hqq: a 4-bit MatMulNBits with HQQ's float zero points equals, weight for weight, the uint4 kernel plus
    the block-sum correction that replaces it, and ONNX Runtime runs the rewritten graph to the same products."""
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig

    from latentcache.export import quantize

    k, n = 80, 24  # K not a multiple of the block: the last block is partial
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(k, n)).astype(np.float32) + rng.normal(size=(1, n)).astype(np.float32)  # off-centre
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "proj.weight.T"], ["y"], name="proj")], "one",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, n])],
                              [numpy_helper.from_array(weight, "proj.weight.T")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    model = quantize.run_quantizer(model, [], HQQWeightOnlyQuantConfig(block_size=32, bits=4))
    onnx.save(model, str(tmp_path / "float_zero_points.onnx"))
    float_zero = quantize.dequantized_linears(tmp_path / "float_zero_points.onnx")["proj"]
    zeros = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith("_zero_points"))
    assert np.abs(zeros - np.rint(zeros)).max() > 0.1  # HQQ's zero points are not integers: the split matters
    quantize.split_float_zero_points(model)
    onnx.save(model, str(tmp_path / "split.onnx"))
    assert {node.op_type for node in model.graph.node} == {"MatMulNBits", "MatMul", "Add"}
    np.testing.assert_allclose(quantize.dequantized_linears(tmp_path / "split.onnx")["proj"], float_zero, atol=1e-5)
    assert np.abs(float_zero.T - weight).max() < np.abs(weight).max() / 8  # and it is a 4-bit copy of the weight
    x = rng.normal(size=(3, k)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(tmp_path / "split.onnx"), providers=["CPUExecutionProvider"])
    expected = x @ float_zero.T
    assert np.abs(session.run(None, {"x": x})[0] - expected).max() < 0.02 * np.abs(expected).max()  # int8 products


def test_weight_index_shares_a_tensor_only_where_every_reader_takes_the_same_weights(tmp_path):
    """weights.json: identical tensors are stored once, and a tensor is ``shared`` (one copy and one prepacked form
    for every session) only where each operator type reads it with the same other weights: ONNX Runtime's prepacked
    container would otherwise hand a MatMulNBits these codes packed with another node's scales."""
    from onnx import helper, numpy_helper

    from latentcache.export.weight_store import WeightStore

    rng = np.random.default_rng(0)
    codes, other = rng.integers(0, 256, (16, 2, 16), dtype=np.uint8), rng.normal(size=(16, 8)).astype(np.float32)

    def model(scale: float, typed: bool):
        nodes = [helper.make_node("MatMulNBits", ["x", "codes", "scales"], ["y"], domain="com.microsoft", K=64, N=16,
                                  bits=4, block_size=32), helper.make_node("MatMul", ["y", "other"], ["z"])]
        scales = helper.make_tensor("scales", onnx.TensorProto.FLOAT, [32], [scale] * 32) if typed else \
            numpy_helper.from_array(np.full(32, scale, np.float32), "scales")  # float_data, no raw bytes
        weights = [numpy_helper.from_array(codes, "codes"), numpy_helper.from_array(other, "other"), scales]
        return helper.make_model(helper.make_graph(nodes, "g", [], [], weights))

    def index_of(*scales, typed=False):
        store = WeightStore(tmp_path / f"{len(scales)}{typed}.bin", min_bytes=64)
        for i, scale in enumerate(scales):
            store.externalize(model(scale, typed), f"graph{i}")
        index = json.loads(store.write_index().read_text())
        return {g: {e["name"]: (e["offset"], e["shared"]) for e in entries} for g, entries in index["graphs"].items()}

    same = index_of(1.0, 1.0)
    assert same["graph0"] == same["graph1"] and all(shared for _, shared in same["graph0"].values())
    assert (tmp_path / "2False.bin").stat().st_size == 512 + 512 + 128  # codes, other, scales: each once
    differ = index_of(1.0, 1.0, 2.0)
    assert not any(differ[g]["codes"][1] for g in differ)  # read with two different scales: never shared
    assert differ["graph2"]["scales"][0] != differ["graph0"]["scales"][0] and differ["graph2"]["other"][1]
    assert not index_of(1.0, 2.0, typed=True)["graph0"]["codes"][1]  # scales kept in the graph count by value too


def test_weight_index_names_each_graphs_initializers_where_they_lie(tmp_path):
    """Every entry of weights.json is the graph's own tensor at that offset, and an unmerged LoRA coprocessor's base
    weights are the prefill graph's (same bytes, marked shared): what the native runtime maps once for both."""
    from onnx import numpy_helper

    artifacts = export_tiny("qwen2-bias", tmp_path, batch=1, weights="int8").artifacts
    manifest = load_manifest(artifacts)
    index = json.loads((artifacts / manifest.weight_index).read_text())
    stored = (artifacts / index["file"]).read_bytes()
    for graph, entries in index["graphs"].items():
        model = onnx.load(str(artifacts / manifest.graphs[graph].file))  # external data resolved by onnx itself
        tensors = {t.name: t for t in model.graph.initializer}
        assert entries and len({e["name"] for e in entries}) == len(entries)
        for entry in entries:
            tensor = tensors[entry["name"]]
            assert (entry["data_type"], entry["dims"]) == (tensor.data_type, list(tensor.dims))
            assert stored[entry["offset"]:entry["offset"] + entry["length"]] == numpy_helper.to_array(tensor).tobytes()
    prefill = {e["offset"] for e in index["graphs"]["prefill"] if e["shared"]}
    base_codes = [e for e in index["graphs"]["coprocessor"] if e["name"].endswith(".base.weight.T_Q8")]
    # 4 packed projections per layer (2 layers), less layer 0's q/k/v, which fold over the constant soft tokens
    assert len(base_codes) >= 7 and all(e["shared"] and e["offset"] in prefill for e in base_codes)


def test_quantized_weights_keep_fp32_activations(tmp_path):
    from latentcache.errors import LatentcacheError
    from latentcache.export.onnx_export import ExportConfig

    with pytest.raises(LatentcacheError, match="--weights int4 keeps fp32 activations: drop --dtype fp16"):
        ExportConfig(base=tmp_path / "b", out=tmp_path / "o", dtype="fp16", weights="int4")
    with pytest.raises(LatentcacheError, match="--weights must be float, int4, int4-hqq, int8, got 'int3'"):
        ExportConfig(base=tmp_path / "b", out=tmp_path / "o", weights="int3")


def test_unmerged_lora_equals_merged_and_adds_only_the_adapters_on_disk(tmp_path):
    """The default LoRA export multiplies by the base's own weights (stored once) plus the adapters; the merged one
    by a folded second copy. Same latents within fp32 rounding; on disk the coprocessor costs about its adapters."""
    from latentcache.export.onnx_export import ExportConfig, export_artifacts
    from latentcache.model.lora import LoRALinear

    unmerged = export_tiny("llama-gqa-tied", tmp_path / "unmerged")
    folders = {"unmerged": unmerged.artifacts}
    for name, options in (("merged", {"coprocessor": unmerged.checkpoint, "lora": "merged"}), ("base", {})):
        folders[name] = export_artifacts(ExportConfig(base=unmerged.base_dir, out=tmp_path / name, max_seq=64, batch=2,
                                                      **options), progress=lambda _: None)
    latents = {}
    for name in ("unmerged", "merged"):
        generator = Generator(OnnxRuntimeBackend(folders[name], load_manifest(folders[name])))
        generator.prefill(PROMPTS)
        latents[name] = generator.coprocess().copy()  # a view of the backend's output buffer otherwise
    assert np.abs(latents["unmerged"] - latents["merged"]).max() <= ATOL
    size = {name: (folder / "weights.bin").stat().st_size for name, folder in folders.items()}  # tensors >= 1 KiB
    adapters = sum(p.numel() * p.element_size() for m in unmerged.coprocessor.modules() if isinstance(m, LoRALinear)
                   for p in (m.lora_a, m.lora_b))
    base_linears = sum(p.numel() * 4 for n, p in unmerged.base.named_parameters() if "layers" in n and p.dim() == 2)
    assert size["merged"] - size["base"] > base_linears / 2  # a second copy of the projections (layer 0 q/k/v fold)
    assert size["unmerged"] - size["base"] < 2 * adapters, (size, adapters)  # adapters, soft tokens' folded keys


def test_fused_attention_form_is_one_node_per_layer_and_onnxruntime_only(tmp_path):
    """``--ops onnxruntime``: GroupQueryAttention replaces the cache scatters and the explicit attention in prefill
    and decode (the coprocessor keeps the standard form), the manifest says so, TensorRT refuses it with the fix,
    and the export refuses what ONNX Runtime's kernel cannot run."""
    from latentcache.errors import BackendUnavailable
    from latentcache.export.onnx_export import ExportConfig

    fused = export_tiny("gemma3", tmp_path / "fused", batch=1, ops="onnxruntime")
    manifest = load_manifest(fused.artifacts)
    assert manifest.ops == "onnxruntime" and manifest.readable_by("onnxruntime") and not manifest.readable_by("tensorrt")
    layers = manifest.kv.num_layers
    for graph in ("prefill", "decode", "coprocessor"):
        nodes = onnx.load(str(fused.artifacts / f"{graph}.onnx"), load_external_data=False).graph.node
        ops = [n.op_type for n in nodes]
        assert (ops.count("GroupQueryAttention"), "TensorScatter" in ops, "Softmax" in ops, "Neg" in ops) == \
            ((0, False, True, True) if graph == "coprocessor" else (layers, False, False, False))  # rope's Neg: gone
        rotary = {a.i for n in nodes if n.op_type == "GroupQueryAttention" for a in n.attribute if a.name == "do_rotary"}
        assert rotary == (set() if graph == "coprocessor" else {1})  # head size 16: the node rotates
        # q/k norms sit between the packed product and the node: its q, k and v stay three inputs
        assert all(n.input[1] and n.input[2] for n in nodes if n.op_type == "GroupQueryAttention")
    packed = export_tiny("gemma2", tmp_path / "packed", batch=1, ops="onnxruntime")
    for graph in ("prefill", "decode"):
        nodes = onnx.load(str(packed.artifacts / f"{graph}.onnx"), load_external_data=False).graph.node
        attention = [n for n in nodes if n.op_type == "GroupQueryAttention"]
        producers = {out: n for n in nodes for out in n.output}
        assert len(attention) == 3 and all(not n.input[1] and not n.input[2] for n in attention)
        assert {producers[n.input[0]].op_type for n in attention} == {"MatMul"}  # the packed product, no Split
    for error in (ManifestError, BackendUnavailable):
        with pytest.raises(error, match="fused attention .* re-export with --ops standard for tensorrt"):
            manifest.require_consumer("tensorrt", error)
    with pytest.raises(BackendUnavailable, match="CPU provider only: use --backend onnxruntime-cpu"):
        OnnxRuntimeCudaBackend(fused.artifacts, manifest)
    base = fused.base_dir
    refusals = {"fp32 only": {"dtype": "fp16"}, "drop --kv-update portable": {"kv_update": "portable"},
                "cannot absorb latents at --batch > 1": {"batch": 2, "coprocessor": fused.checkpoint}}
    for message, options in refusals.items():
        with pytest.raises(Exception, match=message):
            ExportConfig(base=base, out=tmp_path / "refused", ops="onnxruntime", **options)



def test_onnx_llm_form_is_three_standard_nodes_per_layer_for_every_consumer(tmp_path):
    """``--ops onnx-llm``: in every graph (the coprocessor's too) each layer attends in one ONNX Attention node and
    rotates q and k in two RotaryEmbedding nodes, with no explicit softmax or rope arithmetic left; the cache is
    still written by TensorScatter; both consumers may read it; and the export refuses the opset-18 lowering with
    the fix (the parity tests run these graphs)."""
    from latentcache.export.onnx_export import ExportConfig

    llm = export_tiny("gemma3", tmp_path / "llm", batch=2, ops="onnx-llm")
    manifest = load_manifest(llm.artifacts)
    assert manifest.ops == "onnx-llm" and manifest.readable_by("onnxruntime") and manifest.readable_by("tensorrt")
    layers = manifest.kv.num_layers
    for graph in ("prefill", "decode", "coprocessor"):
        ops = [n.op_type for n in onnx.load(str(llm.artifacts / f"{graph}.onnx"), load_external_data=False).graph.node]
        assert (ops.count("Attention"), ops.count("RotaryEmbedding"), "Softmax" in ops, "Neg" in ops) == \
            (layers, 2 * layers, False, False), graph
        assert ops.count("TensorScatter") == (0 if graph == "coprocessor" else 2 * layers)
    with pytest.raises(Exception, match="--ops onnx-llm uses opset-23 operators.*drop --kv-update portable"):
        ExportConfig(base=llm.base_dir, out=tmp_path / "refused", ops="onnx-llm", kv_update="portable")


def test_fused_attention_form_at_batch_2_gives_the_standard_tokens(tmp_path):
    """Base-only artifacts may run a left-padded batch (no latents to absorb); the node then leaves rope to the
    graph (on a first prompt it would number left-padded rows by slot)."""
    from latentcache.export.onnx_export import ExportConfig, export_artifacts

    build_tiny("gemma3", tmp_path / "base")
    save_tiny_tokenizer(tmp_path / "base")
    tokens = []
    for ops in ("standard", "onnxruntime"):
        artifacts = export_artifacts(ExportConfig(base=tmp_path / "base", out=tmp_path / ops, batch=2, max_seq=64,
                                                  ops=ops), progress=lambda message: None)
        generator = Generator(OnnxRuntimeBackend(artifacts, load_manifest(artifacts)))
        tokens.append(np.stack(list(generator.generate(PROMPTS, 24)), axis=1))
    assert (tokens[0] == tokens[1]).all()
