"""Weight-only int4/int8 for the exported graphs, through ONNX Runtime's own quantizer (no hand-written kernels).

- ``int4``: every MatMul weight (the LM head included) becomes standard ONNX ``DequantizeLinear`` (int4, blocks of
  ``BLOCK_SIZE`` along the reduction axis, opset 21) feeding the MatMul. One graph serves every consumer: ONNX
  Runtime fuses DequantizeLinear + MatMul into its MatMulNBits kernel when it loads the graph (checked on 1.32: the
  optimized graph holds MatMulNBits only, 0.14 ms against 1.9 ms for a 2048x8192 fp32 GEMV), TensorRT reads the
  standard operators (weight-only int4). Round-to-nearest, symmetric (TensorRT imports signed int4 without zero
  points only): on SmolLM2-135M it costs +40 % perplexity (docs/results.md).
- ``int4-hqq``: ONNX Runtime's HQQ quantizer for the projections (per block a scale and a *float* zero point,
  optimized without calibration data) and its 8-bit MatMulNBits for the LM head; an ONNX Runtime graph. Float zero
  points are what the default SmolLM2 needs (its weights are a dequantized Q4_1 GGUF, ``d * q + m`` per block: an
  integer zero point cannot hold ``m``; benchmarks/int4_grids.py), but ONNX Runtime's CPU MatMulNBits runs them
  14 times slower than uint4 zero points (measured, 1.32). So each zero point is split
  (``split_float_zero_points``): its integer part goes to the fast uint4 kernel, and the remainder, constant per
  block, adds ``block_sums(x) @ C``, where ``block_sums`` sums the activation over each block of K (one small MatMul
  per distinct input) and ``C`` is ``[K / block, N]``: the same products, to fp32 rounding.
- ``int8``: ONNX Runtime's MatMulNBits with 8 bits (its quantizer writes 8-bit weights in that form only, and
  ONNX Runtime runs unfused int8 DequantizeLinear + MatMul slower than fp32): an ONNX Runtime graph; TensorRT
  builds refuse it and say to export int4 or a float format for TensorRT.
Embeddings (Gather) stay in the export dtype: a decode step reads one row of them, so they cost memory, not
bandwidth (ONNX Runtime's GatherBlockQuantized would shrink them but no other consumer reads it).
"""

from __future__ import annotations

import ast
import contextlib
import logging
import warnings
from pathlib import Path

QUANTIZED_BITS = {"int4": 4, "int4-hqq": 4, "int8": 8}
BLOCK_SIZE = 32  # llama.cpp's Q4_0/Q4_1 block, onnxruntime-genai's int4 default for CPU is 32 as well
CONSUMERS = {"int4": ("onnxruntime", "tensorrt"), "int4-hqq": ("onnxruntime",), "int8": ("onnxruntime",)}
FORMS = {"int4": "DequantizeLinear (int4, symmetric blocks along K) + MatMul; ONNX Runtime fuses it into MatMulNBits",
         "int4-hqq": "com.microsoft MatMulNBits (4 bits, uint4 zero points) + block sums @ zero-point remainders; "
                     "LM head MatMulNBits (8 bits)",
         "int8": "com.microsoft MatMulNBits (8 bits)"}
METHODS = {"int4": "round-to-nearest", "int4-hqq": "HQQ (ONNX Runtime's HQQ quantizer), LM head round-to-nearest",
           "int8": "round-to-nearest"}
HEAD_SUFFIX = "lm_head.weight.T"  # the LM head's MatMul weight, as name_weights_after_modules names it


def weights_description(weights: str, dtype: str) -> dict:
    """The manifest's ``weights`` entry: how the graphs store their weights and who can run them."""
    if weights not in QUANTIZED_BITS:
        return {"format": weights, "consumers": ["onnxruntime", "tensorrt"]}
    return {"format": weights, "bits": QUANTIZED_BITS[weights], "block_size": BLOCK_SIZE,
            "symmetric": weights == "int4", "method": METHODS[weights],
            "form": FORMS[weights], "quantized": "every MatMul weight, the LM head included"
            + (" (at 8 bits)" if weights == "int4-hqq" else ""),
            "unquantized": f"embeddings, norms, biases ({dtype})", "consumers": list(CONSUMERS[weights])}


def quantize_weights(model, weights: str):
    """``model`` (an ONNX ModelProto with in-memory weights) with its MatMul weights quantized to ``weights``."""
    with quiet_quantizer():
        from onnxruntime.quantization import QuantFormat
        from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig

    lm_head_as_matmul(model)
    name_weights_after_modules(model)
    initializers = {t.name for t in model.graph.initializer}
    # Only nn.Linear weights: LoRA adapters (x @ A^T @ B^T; rank 16 is under 5 % of the base's bytes) stay as exported.
    others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in initializers
              and not n.input[1].endswith(WEIGHT_SUFFIX)]
    if weights == "int4-hqq":
        return quantize_hqq(model, others)
    # int8's MatMulNBits multiplies in int8 only at accuracy level 4 (196 ms per SmolLM2 decode step in fp32: it
    # dequantizes every weight per call); int4's level is the session's (it fuses at load, default 4). int4 is
    # symmetric: TensorRT reads signed int4 without zero points only (uint4 + zero points fail to import).
    config = DefaultWeightOnlyQuantConfig(
        block_size=BLOCK_SIZE, is_symmetric=weights == "int4", bits=QUANTIZED_BITS[weights],
        accuracy_level=4 if weights == "int8" else None,
        quant_format=QuantFormat.QDQ if weights == "int4" else QuantFormat.QOperator,
        op_types_to_quantize=("MatMul",), quant_axes=(("MatMul", 0),),
    )
    return run_quantizer(model, others, config)


def run_quantizer(model, nodes_to_exclude: list[str], config):
    with quiet_quantizer():
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quantizer = MatMulNBitsQuantizer(model, nodes_to_exclude=nodes_to_exclude, algo_config=config)
        quantizer.process()
    return quantizer.model.model


def quantize_hqq(model, others: list[str]):
    """``int4-hqq``: HQQ projections (zero points split for the uint4 kernel), then the LM head at 8 bits."""
    with quiet_quantizer():
        from onnxruntime.quantization import QuantFormat
        from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                     HQQWeightOnlyQuantConfig)

    heads = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1].endswith(HEAD_SUFFIX)]
    model = run_quantizer(model, others + heads, HQQWeightOnlyQuantConfig(
        block_size=BLOCK_SIZE, bits=4, op_types_to_quantize=("MatMul",), quant_axes=(("MatMul", 0),)))
    split_float_zero_points(model)
    initializers = {t.name for t in model.graph.initializer}
    not_heads = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in initializers
                 and not n.input[1].endswith(HEAD_SUFFIX)]  # adapters, block sums, zero-point corrections
    # The LM head is a Q8_0 matrix in the default SmolLM2 GGUF: at 4 bits it alone costs +9 % perplexity, at 8
    # bits nothing measurable (benchmarks/int4_grids.py). Level 4: int8 products, the fast CPU path.
    return run_quantizer(model, not_heads, DefaultWeightOnlyQuantConfig(
        block_size=BLOCK_SIZE, is_symmetric=False, bits=8, accuracy_level=4, quant_format=QuantFormat.QOperator,
        op_types_to_quantize=("MatMul",), quant_axes=(("MatMul", 0),)))


ZERO_CORRECTION = ".zero_correction"  # + the weight's name: C [K / block, N] of split_float_zero_points
BLOCK_SUMS = "block_sums_"  # + K: the [K, K / block] 0/1 matrix that sums an activation over each block


def split_float_zero_points(model) -> None:
    """Rewrite each 4-bit MatMulNBits with float zero points ``z`` (HQQ's) as the uint4 kernel plus a correction.

    ``B[k, n] = s[n, b] * (q[n, k] - z[n, b])`` for ``k`` in block ``b``. With ``z = r + (z - r)``, ``r`` the
    nearest integer in 0..15: ``x @ B = MatMulNBits(x; q, s, r) + block_sums(x) @ C`` with ``C[b, n] = s[n, b] *
    (r[n, b] - z[n, b])``. Also sets accuracy level 4 (int8 products: HQQ's nodes come without one, and level 0
    runs 3 times slower on the CPU)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    initializers = {t.name: t for t in model.graph.initializer}
    sums: dict[str, str] = {}  # activation -> its block sums
    nodes = []
    for node in model.graph.node:
        zero = initializers.get(node.input[3]) if node.op_type == "MatMulNBits" and len(node.input) > 3 else None
        if zero is None or zero.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16):
            nodes.append(node)
            continue
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        k, n, block = attributes["K"], attributes["N"], attributes["block_size"]
        blocks = -(-k // block)
        scale = numpy_helper.to_array(initializers[node.input[2]]).astype(np.float32).reshape(n, blocks)
        exact = numpy_helper.to_array(zero).astype(np.float32).reshape(n, blocks)
        rounded = np.clip(np.rint(exact), 0, 15)
        packed = np.zeros((n, (blocks + 1) // 2), dtype=np.uint8)  # two per byte, low nibble first, rows padded
        packed |= rounded[:, 0::2].astype(np.uint8)
        packed[:, : blocks // 2] |= rounded[:, 1::2].astype(np.uint8) << 4
        weight = node.input[1].rsplit("_Q", 1)[0]
        zero_name, correction = f"{weight}_zero_points_u4", f"{weight}{ZERO_CORRECTION}"
        model.graph.initializer.extend([
            numpy_helper.from_array(packed.reshape(-1), zero_name),
            numpy_helper.from_array(np.ascontiguousarray((scale * (rounded - exact)).T), correction)])
        activation = node.input[0]
        if activation not in sums:
            sums[activation] = f"{activation}.block_sums"
            if f"{BLOCK_SUMS}{k}" not in initializers:
                indicator = (np.arange(k)[:, None] // block == np.arange(blocks)[None]).astype(np.float32)
                initializers[f"{BLOCK_SUMS}{k}"] = numpy_helper.from_array(indicator, f"{BLOCK_SUMS}{k}")
                model.graph.initializer.append(initializers[f"{BLOCK_SUMS}{k}"])
            nodes.append(helper.make_node("MatMul", [activation, f"{BLOCK_SUMS}{k}"], [sums[activation]],
                                          name=f"{activation}.block_sums"))
        output = node.output[0]
        kernel = helper.make_node("MatMulNBits", [activation, node.input[1], node.input[2], zero_name],
                                  [f"{output}.uint4"], name=node.name, domain=node.domain,
                                  **{**attributes, "accuracy_level": 4})
        nodes += [kernel, helper.make_node("MatMul", [sums[activation], correction], [f"{output}.correction"],
                                           name=f"{node.name}.correction"),
                  helper.make_node("Add", [f"{output}.uint4", f"{output}.correction"], [output],
                                   name=f"{node.name}.add")]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    drop_unread_initializers(model)  # the float zero points are gone


def drop_unread_initializers(model) -> None:
    """Remove the initializers no node reads (nor any graph output is): what a rewrite replaced."""
    read = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in read]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def lm_head_as_matmul(model) -> None:
    """Rewrite ``Gemm(x, W, transB=1)`` with a constant ``W`` (how the exporter writes ``nn.Linear`` on a 2-D input,
    the LM head's) as ``MatMul(x, W^T)``: the quantizer reads MatMul only, and the LM head is the largest weight
    a decode step reads (a fifth of SmolLM2-135M). ``W`` itself stays for the embedding Gather that ties to it."""
    import numpy as np
    from onnx import helper, numpy_helper

    initializers = {t.name: t for t in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "Gemm" or node.input[1] not in initializers or attributes.get("transA", 0) \
                or attributes.get("alpha", 1.0) != 1.0 or (len(node.input) > 2 and attributes.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]])
        transposed = f"{node.input[1]}.T"
        model.graph.initializer.append(numpy_helper.from_array(
            np.ascontiguousarray(weight.T if attributes.get("transB", 0) else weight), transposed))
        biased = len(node.input) > 2 and bool(node.input[2])
        product = f"{node.output[0]}.product" if biased else node.output[0]
        matmul = helper.make_node("MatMul", [node.input[0], transposed], [product], name=f"{node.name}.matmul")
        matmul.metadata_props.extend(node.metadata_props)  # module names: how a reader maps weights to parameters
        nodes.append(matmul)
        if biased:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}.bias"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)


WEIGHT_SUFFIX = ".weight.T"  # a MatMul weight is the transpose of its nn.Linear's weight


def module_of(node) -> str | None:
    """The ``nn.Linear`` a MatMul node came from, as the exporter's name scopes record it
    (``[..., "base.layers.0.self_attn", "base.layers.0.self_attn.q_proj", "linear"]``)."""
    scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
    if not scopes:
        return None
    names = ast.literal_eval(scopes)
    return names[-2] if len(names) >= 2 and names[-1].startswith("linear") else None


def name_weights_after_modules(model) -> None:
    """Rename each MatMul weight ``<module>.weight.T`` (the exporter names them ``val_<n>``): the quantizer keeps
    the name as a prefix of its outputs, so a reader of the graph knows which parameter each quantized tensor is
    (``dequantized_linears``, the reference for the parity tests). A weight shared by several MatMuls keeps the
    first one's module name."""
    initializers = {t.name: t for t in model.graph.initializer}
    renamed: dict[str, str] = {}
    for node in model.graph.node:
        module = module_of(node) if node.op_type == "MatMul" else None
        weight = node.input[1] if len(node.input) > 1 else ""
        if module and weight in initializers and weight not in renamed:
            renamed[weight] = module + WEIGHT_SUFFIX
    taken = set(initializers) - set(renamed)
    for old, new in list(renamed.items()):
        if new in taken:  # two weights from one module (cannot happen for nn.Linear): leave the second alone
            del renamed[old]
        taken.add(new)
    for tensor in model.graph.initializer:
        tensor.name = renamed.get(tensor.name, tensor.name)
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]


def dequantized_linears(graph: str | Path) -> dict[str, "np.ndarray"]:
    """``{module: weight [out, in] fp32}`` for every quantized MatMul weight of an exported graph, decoded by ONNX
    Runtime's own kernels (the DequantizeLinear node, or MatMulNBits times an identity, in fp32): the exact values
    the graph multiplies by, to load into the PyTorch reference so a parity test checks the graph, not the rounding."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(graph))
    initializers = {t.name: t for t in model.graph.initializer}
    weights = {}
    for node in model.graph.node:
        source = node.input[1] if node.op_type == "MatMulNBits" else node.input[0]  # the quantized weight
        if source not in initializers or WEIGHT_SUFFIX not in source:
            continue
        module = source[: source.index(WEIGHT_SUFFIX)]
        if node.op_type == "DequantizeLinear":
            weights[module] = _run_alone(model, node, initializers).T
        elif node.op_type == "MatMulNBits":
            k = next(a.i for a in node.attribute if a.name == "K")
            eye = np.eye(k, dtype=np.float32)
            product = _run_alone(model, node, initializers, eye)
            correction = initializers.get(f"{module}{WEIGHT_SUFFIX}{ZERO_CORRECTION}")  # int4-hqq's remainders
            if correction is not None:
                block = next(a.i for a in node.attribute if a.name == "block_size")
                product = product + np.repeat(numpy_helper.to_array(correction), block, axis=0)[:k]
            weights[module] = product.T
    return unpacked(weights, model)


def unpacked(weights: dict[str, "np.ndarray"], model) -> dict[str, "np.ndarray"]:
    """``weights`` with each packed weight (``export.pack_linears``) split back into its modules' rows."""
    from latentcache.export.pack_linears import parts_of_packed

    for packed, parts in parts_of_packed(model).items():
        if packed not in weights:
            continue
        value, start = weights.pop(packed), 0
        for module, rows in parts:
            weights[module], start = value[start: start + rows], start + rows
    return weights


def load_graph_weights(artifacts: str | Path, base, coprocessor=None) -> None:
    """Put quantized artifacts' dequantized weights into the PyTorch reference ``base`` (and ``coprocessor``, its
    adapters merged first when export merged them): it then computes what the graphs compute, up to fp32 order of
    operations. Raises ``ValueError`` unless every linear the graphs quantized is found (and every base linear)."""
    import torch

    from latentcache.model.lora import merge_lora

    targets = [("prefill.onnx", "base.", base)]
    if coprocessor is not None and coprocessor.network is not None:
        targets.append(("coprocessor.onnx", "coprocessor.network.", coprocessor.network))
    for graph, prefix, model in targets:
        weights = {name.removeprefix(prefix): value for name, value in dequantized_linears(Path(artifacts) / graph).items()}
        if graph == "coprocessor.onnx" and not any(name.endswith(".base") for name in weights):
            merge_lora(model)  # exported --lora merged (or a full fine-tune: nothing to merge)
        linears = {name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
        # The coprocessor has no LM head, and layer 0's q/k/v of its constant soft tokens fold into constants.
        missing = linears - set(weights) if graph == "prefill.onnx" else set()
        if missing or set(weights) - linears:
            raise ValueError(f"{graph}: quantized weights and the model's linears differ: "
                             f"{sorted(missing | (set(weights) - linears))[:4]}")
        with torch.no_grad():
            for name, value in weights.items():  # a new Parameter: unties an LM head from the embedding
                model.get_submodule(name).weight = torch.nn.Parameter(torch.from_numpy(value.copy()), requires_grad=False)


def _run_alone(model, node, initializers, activation=None):
    """Run one node of ``model`` by itself on ONNX Runtime (fp32 compute) and return its output."""
    import onnx
    import onnxruntime
    from onnx import helper

    inputs, feeds, graph_inputs = [name for name in node.input if name], {}, []
    if activation is not None:  # MatMulNBits: input 0 is the activation, the rest are initializers
        feeds[node.input[0]] = activation
        graph_inputs.append(helper.make_tensor_value_info(node.input[0], onnx.TensorProto.FLOAT, list(activation.shape)))
        inputs = inputs[1:]
    single = helper.make_node(node.op_type, list(node.input), ["out"], domain=node.domain,
                              **{a.name: helper.get_attribute_value(a) for a in node.attribute
                                 if a.name != "accuracy_level"})
    graph = helper.make_graph([single], "one", graph_inputs, [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None)],
                              [initializers[name] for name in inputs])
    alone = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL  # no fusion: this node only
    session = onnxruntime.InferenceSession(alone.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


@contextlib.contextmanager
def quiet_quantizer():
    """The quantizer logs a line per weight at INFO, and importing it configures the root logger at INFO (every
    later library's INFO lines would reach stderr); export prints its own progress. Both are put back."""
    root, logger = logging.getLogger(), logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    handlers, root_level, level = root.handlers[:], root.level, logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():  # HQQ hands torch a read-only numpy view of a weight it only reads
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            yield
    finally:
        root.handlers[:], root.level = handlers, root_level
        logger.setLevel(level)
