"""Where a decode step's GPU time goes: every CUDA kernel ONNX Runtime launches, per graph form, summed by name.

    python benchmarks/gpu/kernel_profile.py DIR [DIR ...] --json OUT [--attention-kernels GRAPH=KERNELS]

Each artifact runs on the ONNX Runtime CUDA backend without CUDA graphs (so each kernel is its own launch; with
``--fixed-shapes`` at the shapes a captured step has, the mask padded to the capacity) under
torch's profiler, whose CUPTI tracing records every kernel in the process, ONNX Runtime's included. A request of
1 + ``--steps`` greedy tokens is profiled beside a request of 1 token, both from the same 128-token prompt after a
warm-up; the difference per kernel name, divided by ``--steps``, is what one decode step runs on the GPU.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

PROMPT = [1, 504, 3458, 282, 4649, 314, 1345, 30] * 16  # 128 tokens


def kernel_totals(generator, tokens: int) -> tuple[Counter, Counter]:
    """GPU microseconds and launches per kernel name over one request of ``tokens`` greedy tokens."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in generator.generate([PROMPT], tokens):
            pass
    micros, launches = Counter(), Counter()
    for event in prof.key_averages():
        device_us = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0)
        if device_us:
            micros[event.key] += device_us
            launches[event.key] += event.count
    return micros, launches


def profile_artifact(artifacts: Path, steps: int, attention_kernels: dict[str, str] | None,
                     fixed_shapes: bool) -> dict:
    from latentcache.contract.manifest import load_manifest
    from latentcache.runtime.backends.onnxruntime import OnnxRuntimeCudaBackend
    from latentcache.runtime.generator import Generator

    manifest = load_manifest(artifacts)
    attention_kernels = attention_kernels if manifest.ops == "onnx-llm" else None  # only ONNX's Attention reads them
    backend = OnnxRuntimeCudaBackend(artifacts, manifest, cuda_graphs=False, fixed_shapes=fixed_shapes,
                                     attention_kernels=attention_kernels)
    generator = Generator(backend)
    for _ in generator.generate([PROMPT], 8):  # warm-up: kernels chosen, arena grown
        pass
    one_us, one_n = kernel_totals(generator, 1)
    many_us, many_n = kernel_totals(generator, 1 + steps)
    per_step = {name: ((many_us[name] - one_us[name]) / steps, (many_n[name] - one_n[name]) / steps)
                for name in many_us}
    ranked = sorted(per_step.items(), key=lambda item: -item[1][0])
    total = sum(us for us, _ in per_step.values())
    backend.close()
    return {"artifacts": str(artifacts), "ops": manifest.ops, "dtype": manifest.dtype, "fixed_shapes": fixed_shapes,
            "attention_kernels": backend.attention_kernels, "steps": steps,
            "gpu_ms_per_step": round(total / 1e3, 3),
            "launches_per_step": round(sum(n for _, n in per_step.values()), 1),
            "kernels": [{"name": name[:160], "us_per_step": round(us, 1), "launches_per_step": round(n, 2)}
                        for name, (us, n) in ranked[:25]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="+", type=Path)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--attention-kernels", action="append", default=[], metavar="GRAPH=KERNELS",
                        help="ONNX Runtime's CUDA attention kernels for one graph of the onnx-llm artifacts, as in "
                             "decode_bench.py")
    parser.add_argument("--fixed-shapes", action="store_true",
                        help="the captured runs' shapes (every step attends the whole capacity), still uncaptured")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    kernels = dict(item.split("=", 1) for item in args.attention_kernels) if args.attention_kernels else None
    rows = []
    for artifacts in args.artifacts:
        row = profile_artifact(artifacts, args.steps, kernels, args.fixed_shapes)
        print(json.dumps({k: row[k] for k in ("artifacts", "ops", "gpu_ms_per_step", "launches_per_step")}))
        for kernel in row["kernels"][:12]:
            print(f"  {kernel['us_per_step']:8.1f} us {kernel['launches_per_step']:6.1f}x  {kernel['name'][:110]}")
        rows.append(row)
    args.json.write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
