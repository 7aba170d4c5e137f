"""Issue 15, int4 quality: which 4-bit grid keeps SmolLM2's perplexity, and what ONNX Runtime's CPU kernel charges.

    python benchmarks/int4_grids.py --base BASE_DIR --json OUT [--sequences 8] [--seq-len 512]

The default SmolLM2 checkpoint is a Q4_1 GGUF dequantized to fp32 (``latentcache.registry``): every linear weight is
already ``d * q + m`` per block of 32 along K (q in 0..15, float d and m), and the tied embedding / LM head is Q8_0.
Quantizing it again to int4 rounds onto a second grid. This script replaces the PyTorch reference's linear weights
by each grid's dequantized values (block 32 along K, as the export's) and reports WikiText-2 test perplexity against
fp32, beside the per-call time of ONNX Runtime's MatMulNBits (CPU, this machine's threads) for the two zero-point
types those grids need (uint4 and float), measured side by side. Grids (every linear; "head" is the LM head):
- ``symmetric``: what ``--weights int4`` exports (signed int4, no zero point: what TensorRT imports);
- ``asymmetric``: ONNX Runtime's RTN with uint4 zero points (its range always holds 0);
- ``min-max``: uint4 zero points over each block's own [min, max];
- ``hqq``: ONNX Runtime's HQQ quantizer (scale and a float zero point, optimized per block), the HQQ grid with its
  zero point rounded to uint4 (``hqq-int``), and each with the LM head at 8 bits (ONNX Runtime's MatMulNBits 8-bit
  grid: asymmetric, block 32).
Needs the project's data (``LATENTCACHE_DATA`` or ../shared). Prints a table and writes one JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quantized_quality import full_perplexity  # noqa: E402

BLOCK = 32


def blocks(weight: torch.Tensor) -> torch.Tensor:
    return weight.reshape(-1, BLOCK)


def symmetric(weight):
    """ONNX Runtime's ``quant_slice_symmetric``: the extreme of larger magnitude maps to -8."""
    g = blocks(weight)
    high, low = g.max(1, keepdim=True).values, g.min(1, keepdim=True).values
    scale = torch.where(high.abs() > low.abs(), high, low) / -8.0
    return (torch.where(scale == 0, 0, g / scale).round().clamp(-8, 7) * scale).reshape(weight.shape)


def uint_grid(weight, low, high, levels: int):
    scale = (high - low).clamp(min=1e-12) / levels
    zero = (-low / scale).round().clamp(0, levels)
    return ((((blocks(weight) / scale) + zero).round().clamp(0, levels) - zero) * scale).reshape(weight.shape)


def asymmetric(weight, levels: int = 15):
    """ONNX Runtime's ``quant_slice_asymmetric`` (the range is widened to hold 0)."""
    g = blocks(weight)
    return uint_grid(weight, g.min(1, keepdim=True).values.clamp(max=0), g.max(1, keepdim=True).values.clamp(min=0),
                     levels)


def min_max(weight):
    g = blocks(weight)
    return uint_grid(weight, g.min(1, keepdim=True).values, g.max(1, keepdim=True).values, 15)


def hqq_grid(round_zero_after: bool):
    from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig, HQQWeightOnlyQuantizer

    quantizer = HQQWeightOnlyQuantizer(HQQWeightOnlyQuantConfig(block_size=BLOCK, bits=4))

    def grid(weight):
        # ONNX Runtime quantizes W^T [K, N] with axis 1 over K: on our [N, K] weight that is blocks along K.
        q, scale, zero = quantizer.quantize_internal(weight, bits=4, group_size=BLOCK)
        scale, zero = scale.reshape(-1, 1), zero.reshape(-1, 1)
        if round_zero_after:
            zero = zero.round().clamp(0, 15)
            q = (blocks(weight) / scale + zero).round().clamp(0, 15)
        return ((q.reshape(-1, BLOCK).float() - zero) * scale).reshape(weight.shape)

    return grid


def grids() -> dict:
    head8 = lambda w: asymmetric(w, 255)  # noqa: E731 - MatMulNBits 8-bit: uint8 zero points, block 32
    hqq, hqq_int = hqq_grid(False), hqq_grid(True)
    return {"symmetric": (symmetric, symmetric), "asymmetric": (asymmetric, asymmetric), "min-max": (min_max, min_max),
            "hqq": (hqq, hqq), "symmetric + head 8-bit": (symmetric, head8), "min-max + head 8-bit": (min_max, head8),
            "hqq-int + head 8-bit": (hqq_int, head8), "hqq + head 8-bit": (hqq, head8)}


def matmulnbits_us(float_zero_points: bool, k: int, n: int, threads: int, calls: int = 2000) -> float:
    """Microseconds per call of one 4-bit MatMulNBits (block 32, accuracy level 4) on a [1, k] activation."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    k_blocks = k // BLOCK
    zero = (rng.random(n * k_blocks, dtype=np.float32) * 15 if float_zero_points
            else rng.integers(0, 255, n * ((k_blocks + 1) // 2), dtype=np.uint8))
    initializers = [numpy_helper.from_array(rng.integers(0, 255, (n, k_blocks, BLOCK // 2), dtype=np.uint8), "q"),
                    numpy_helper.from_array(rng.random(n * k_blocks, dtype=np.float32) * 0.01, "s"),
                    numpy_helper.from_array(zero, "z")]
    node = helper.make_node("MatMulNBits", ["x", "q", "s", "z"], ["y"], domain="com.microsoft", K=k, N=n, bits=4,
                            block_size=BLOCK, accuracy_level=4)
    graph = helper.make_graph([node], "one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {"x": rng.random((1, k), dtype=np.float32)}
    for _ in range(50):
        session.run(None, feed)
    started = time.perf_counter()
    for _ in range(calls):
        session.run(None, feed)
    return (time.perf_counter() - started) / calls * 1e6


def main() -> None:
    from latentcache.model import load_decoder
    from latentcache.train.data import leading_batches
    from latentcache.train.run import _eos_id, _validation_sets

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    base = load_decoder(args.base).eval()
    wikitext = _validation_sets(args.base, (), args.seq_len, _eos_id(base.config))["wikitext2-test"]
    rows = [row for batch in leading_batches(wikitext, args.sequences, 1) for row in batch]
    linears = {name: module for name, module in base.named_modules() if isinstance(module, torch.nn.Linear)}
    original = {name: module.weight.detach().clone() for name, module in linears.items()}
    fp32 = full_perplexity(base, rows)
    report = {"base": str(args.base), "windows": len(rows), "seq_len": args.seq_len, "block": BLOCK,
              "fp32_perplexity": fp32, "grids": {}}
    print(f"{'fp32':>24}  WikiText-2 ppl {fp32:.3f}", flush=True)
    for label, (layer_grid, head_grid) in grids().items():
        for name, module in linears.items():
            grid = head_grid if name == "lm_head" else layer_grid
            module.weight = torch.nn.Parameter(grid(original[name]), requires_grad=False)  # unties the head
        perplexity = full_perplexity(base, rows)
        report["grids"][label] = {"perplexity": perplexity, "change_pct": (perplexity / fp32 - 1) * 100}
        print(f"{label:>24}  WikiText-2 ppl {perplexity:.3f} ({(perplexity / fp32 - 1) * 100:+.2f}% vs fp32)", flush=True)
    shape = (base.config.hidden_size, base.config.intermediate_size)  # an MLP up projection: K = hidden, N = inner
    report["matmulnbits_cpu_us"] = {"k": shape[0], "n": shape[1], "threads": args.threads,
                                    "uint4 zero points": matmulnbits_us(False, *shape, args.threads),
                                    "float zero points": matmulnbits_us(True, *shape, args.threads)}
    timing = report["matmulnbits_cpu_us"]
    print(f"MatMulNBits 4-bit [1, {shape[0]}] x [{shape[0]}, {shape[1]}], {args.threads} threads: uint4 zero points "
          f"{timing['uint4 zero points']:.0f} us, float zero points {timing['float zero points']:.0f} us per call")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
