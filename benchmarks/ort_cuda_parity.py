"""ONNX Runtime CUDA against ONNX Runtime CPU on the same artifacts: greedy tokens must be identical.

    python benchmarks/ort_cuda_parity.py ARTIFACTS --json OUT [--tokens 64]

Needs onnxruntime-gpu (CUDAExecutionProvider). Also reports the greedy answers' text.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in one sentence.",
    "List three prime numbers.",
    "Once upon a time, in a small village,",
]


def greedy(pipeline, prompt: str, tokens: int) -> list[int]:
    ids = pipeline.tokenizer.encode(prompt)
    return [int(t[0]) for t in pipeline.generator.generate([ids], tokens)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("artifacts", type=Path)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    from latentcache.runtime import Pipeline

    cpu, cuda = Pipeline(args.artifacts, "onnxruntime-cpu"), Pipeline(args.artifacts, "onnxruntime-cuda")
    rows = []
    for prompt in PROMPTS:
        a, b = greedy(cpu, prompt, args.tokens), greedy(cuda, prompt, args.tokens)
        rows.append({"prompt": prompt, "identical": a == b, "first_difference": next(
            (i for i, (x, y) in enumerate(zip(a, b)) if x != y), None), "text": cuda.tokenizer.decode(b)})
    report = {"artifacts": str(args.artifacts), "tokens": args.tokens, "all_identical": all(r["identical"] for r in rows),
              "prompts": rows}
    print(json.dumps(report, indent=2))
    args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
