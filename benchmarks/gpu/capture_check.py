"""Which graphs ONNX Runtime's CUDA provider accepts for CUDA-graph capture, and whether capture changes tokens.

    python benchmarks/gpu/capture_check.py ARTIFACTS [--json OUT]

(1) Creates each graph's session with ``enable_cuda_graph`` and reports it accepted or the refusal (ONNX Runtime
refuses a graph with nodes off the CUDA provider, e.g. a host value copied to the GPU mid-graph; its verbose log,
``ORT_LOG=0``, names them). (2) Greedy tokens of the CUDA backend with and without CUDA graphs, for the parity
prompts with the coprocessor off, once at the end of the prompt and every 8 tokens. Needs onnxruntime-gpu.
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


def token_agreement(artifacts: Path, manifest, tokens: int) -> list[dict]:
    from latentcache.runtime.backends.onnxruntime import OnnxRuntimeCudaBackend
    from latentcache.runtime.generator import EndOfPrompt, EveryN, Generator, NoAugmentation

    generators = {graphs: Generator(OnnxRuntimeCudaBackend(artifacts, manifest, cuda_graphs=graphs))
                  for graphs in (True, False)}
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
            first = next((i for i, (a, b) in enumerate(zip(out[True], out[False])) if a != b), None)
            rows.append({"prompt": prompt, "policy": name, "identical": first is None, "first_difference": first})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", type=Path)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from latentcache.contract.manifest import load_manifest

    manifest = load_manifest(args.artifacts)
    report = {"artifacts": str(args.artifacts), "capture": capture_acceptance(args.artifacts, manifest)}
    report["tokens"] = token_agreement(args.artifacts, manifest, args.tokens)  # batch-1 artifacts
    report["all_identical"] = all(row["identical"] for row in report["tokens"])
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
