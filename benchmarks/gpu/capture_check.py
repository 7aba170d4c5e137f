"""Which graphs ONNX Runtime's CUDA provider accepts for CUDA-graph capture, and whether capture changes tokens.

    python benchmarks/gpu/capture_check.py ARTIFACTS [--reference FP32_ARTIFACTS] [--json OUT]

(1) Creates each graph's session with ``enable_cuda_graph`` and reports it accepted or the refusal (ONNX Runtime
refuses a graph with nodes off the CUDA provider, e.g. a host value copied to the GPU mid-graph; its verbose log,
``ORT_LOG=0``, names them). (2) Greedy tokens of the CUDA backend with and without CUDA graphs, for the parity
prompts with the coprocessor off, once at the end of the prompt and every 8 tokens. With ``--reference``, also
CUDA graphs without captured prompts (no prefill buckets), and each configuration against ONNX Runtime CPU on the
reference artifacts (fp32: the CPU backend's tokens). Needs onnxruntime-gpu.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

PROMPTS = ([5, 17, 33, 8, 41, 12, 60, 9, 27], [44, 6, 71, 30, 15], [1, 504, 3458, 282, 4649, 314, 1345, 30])


def capture_acceptance(artifacts: Path, manifest) -> dict[str, str]:
    import onnxruntime as ort

    verdicts = {}
    for name, spec in manifest.graphs.items():
        options = ort.SessionOptions()
        options.log_severity_level = int(os.environ.get("ORT_LOG", 3))
        try:
            ort.InferenceSession(str(artifacts / spec.file), options,
                                 providers=[("CUDAExecutionProvider", {"enable_cuda_graph": "1"})])
            verdicts[name] = "accepted"
        except Exception as exc:  # noqa: BLE001 - the refusal is the result
            verdicts[name] = f"refused: {exc}"
    return verdicts


def token_agreement(artifacts: Path, manifest, tokens: int, reference: Path | None = None) -> list[dict]:
    from latentcache.contract.manifest import load_manifest
    from latentcache.runtime.backends.onnxruntime import OnnxRuntimeBackend, OnnxRuntimeCudaBackend
    from latentcache.runtime.generator import EndOfPrompt, EveryN, Generator, NoAugmentation

    generators = {graphs: Generator(OnnxRuntimeCudaBackend(artifacts, manifest, cuda_graphs=graphs))
                  for graphs in (True, False)}
    if reference is not None:
        generators["graphs, prompts uncaptured"] = Generator(OnnxRuntimeCudaBackend(artifacts, manifest,
                                                                                    prefill_buckets=()))
        generators["cpu reference"] = Generator(OnnxRuntimeBackend(reference, load_manifest(reference)))
    policies = {"none": NoAugmentation}
    if manifest.num_latents:
        policies.update({"end-of-prompt": EndOfPrompt, "every-8": lambda: EveryN(8)})
    vocab = manifest.vocab_size
    rows = []
    for prompt in PROMPTS:
        prompt = [token % vocab for token in prompt]
        for name, policy in policies.items():
            out = {graphs: [int(t[0]) for t in g.generate([prompt], tokens, policy=policy())]
                   for graphs, g in generators.items()}
            first = first_difference(out[True], out[False])
            row = {"prompt": prompt, "policy": name, "identical": first is None, "first_difference": first}
            if reference is not None:
                row["first_difference_from_cpu"] = {str(k): first_difference(v, out["cpu reference"])
                                                    for k, v in out.items() if k != "cpu reference"}
            rows.append(row)
    return rows


def first_difference(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", type=Path)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--reference", type=Path, help="fp32 artifacts of the same model for ONNX Runtime CPU")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from latentcache.contract.manifest import load_manifest

    manifest = load_manifest(args.artifacts)
    report = {"artifacts": str(args.artifacts), "capture": capture_acceptance(args.artifacts, manifest)}
    report["tokens"] = token_agreement(args.artifacts, manifest, args.tokens, args.reference)  # batch-1 artifacts
    report["all_identical"] = all(row["identical"] for row in report["tokens"])
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
