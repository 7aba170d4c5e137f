"""ONNX Runtime CUDA against ONNX Runtime CPU on the same artifacts: greedy tokens must be identical.

    python benchmarks/ort_cuda_parity.py ARTIFACTS --json OUT [--tokens 64] [--reference FP32_ARTIFACTS]

Needs onnxruntime-gpu (CUDAExecutionProvider). Also reports the greedy answers' text and the cosine between
the first next-token logits. ``--reference``: other artifacts of the same model (fp32) run on the CPU instead,
which is how fp16 on CUDA is held to the fp32 result.
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


def first_logits(pipeline, prompt: str):
    return pipeline.generator.prefill([pipeline.tokenizer.encode(prompt)])[0].astype("float64")


def cosine(a, b) -> float:
    import numpy as np

    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("artifacts", type=Path)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--reference", type=Path, help="artifacts run on the CPU as the reference (default: ARTIFACTS)")
    args = parser.parse_args()
    from latentcache.runtime import Pipeline

    reference = args.reference or args.artifacts
    cpu, cuda = Pipeline(reference, "onnxruntime-cpu"), Pipeline(args.artifacts, "onnxruntime-cuda")
    rows = []
    for prompt in PROMPTS:
        a, b = greedy(cpu, prompt, args.tokens), greedy(cuda, prompt, args.tokens)
        rows.append({"prompt": prompt, "identical": a == b, "first_difference": next(
            (i for i, (x, y) in enumerate(zip(a, b)) if x != y), None),
            "logits_cosine": cosine(first_logits(cpu, prompt), first_logits(cuda, prompt)), "text": cuda.tokenizer.decode(b)})
    report = {"artifacts": str(args.artifacts), "reference": str(reference), "backend": cuda.backend.describe(),
              "tokens": args.tokens, "all_identical": all(r["identical"] for r in rows),
              "min_logits_cosine": min(r["logits_cosine"] for r in rows), "prompts": rows}
    print(json.dumps(report, indent=2))
    args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
