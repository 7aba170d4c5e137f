"""GPU memory of the ONNX Runtime CUDA backend with and without one copy of the base for all its sessions.

    python benchmarks/gpu/shared_weights.py --coprocessor DIR [--base-only DIR] --json OUT

``--coprocessor``: artifacts exported with an (unmerged LoRA) coprocessor; ``--base-only`` (optional): the same base
exported without one. Each configuration runs in a fresh process (ONNX Runtime's arena and CUDA graphs are
device-wide): the backend is made, one request runs (128-token prompt, 32 greedy tokens, the coprocessor at the end
of the prompt when there is one), and the device memory in use then, less what was in use before the backend was
made (``torch.cuda.mem_get_info``), is its footprint. Tokens are compared between sharing on and off.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from decode_bench import device_used, prompt_ids  # this folder's GPU benchmark: the same prompt and memory reading


def measure(artifacts: Path, share: bool) -> dict:
    from latentcache.contract.manifest import load_manifest
    from latentcache.runtime.backends.onnxruntime import OnnxRuntimeCudaBackend
    from latentcache.runtime.generator import EndOfPrompt, Generator, RequestStats
    from latentcache.runtime.tokenizer import Tokenizer

    before = device_used()
    manifest = load_manifest(artifacts)
    backend = OnnxRuntimeCudaBackend(artifacts, manifest, share_weights=share)
    loaded = device_used() - before  # sessions, weights, caches and captured graphs, before any request
    tokenizer = Tokenizer(artifacts, manifest)
    ids = prompt_ids(lambda text: tokenizer.encode(text, chat=False), 128)
    policy = EndOfPrompt() if manifest.num_latents else None
    generator = Generator(backend)
    tokens = [int(t[0]) for t in generator.generate([ids], 32, policy=policy)]
    stats = RequestStats()  # a second request, timed: sharing must not slow the steps down
    list(generator.generate([ids], 32, policy=policy, stats=stats))
    return {"artifacts": str(artifacts), "share_weights": share, "coprocessor": bool(manifest.num_latents),
            "gpu_memory_mib": round((device_used() - before) / 2**20, 1), "loaded_mib": round(loaded / 2**20, 1),
            "decode_step_ms": round(1e3 * statistics.median(stats.step_s), 3), "describe": backend.describe(),
            "tokens": tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-only", type=Path, help="base-only artifacts of the same base (optional)")
    parser.add_argument("--coprocessor", type=Path, required=True)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # ARTIFACTS SHARE: the child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(Path(args.one[0]), args.one[1] == "1")))
        return
    rows = []
    runs = [(args.coprocessor, False), (args.coprocessor, True)]
    if args.base_only:
        runs = [(args.base_only, False), (args.base_only, True)] + runs
    for artifacts, share in runs:
        out = subprocess.run([sys.executable, __file__, "--coprocessor", "-", "--json", "-",
                              "--one", str(artifacts), "1" if share else "0"], capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(out.stderr[-3000:])
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print({k: v for k, v in rows[-1].items() if k != "tokens"}, flush=True)
    per_session, shared = rows[-2:]
    summary = {"coprocessor_shared_over_per_session": round(shared["gpu_memory_mib"] / per_session["gpu_memory_mib"], 3),
               "tokens_identical": {"coprocessor": per_session["tokens"] == shared["tokens"]}}
    if args.base_only:
        base = rows[0]["gpu_memory_mib"]
        summary["coprocessor_over_base_only"] = {"per session": round(per_session["gpu_memory_mib"] / base, 3),
                                                 "shared": round(shared["gpu_memory_mib"] / base, 3)}
        summary["tokens_identical"]["base only"] = rows[0]["tokens"] == rows[1]["tokens"]
    print(json.dumps(summary, indent=1))
    args.json.write_text(json.dumps({"rows": rows, **summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
