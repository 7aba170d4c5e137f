"""GPU decode side by side in one run: latentcache on ONNX Runtime CUDA (CUDA graphs with prompts captured at
``PREFILL_BUCKETS``, CUDA graphs for decode and absorb only, no CUDA graphs) against transformers (eager, and static
cache + torch.compile) on the same GPU, same prompts, greedy.

    python benchmarks/gpu/decode_bench.py --base MODEL_DIR --artifacts 1=DIR --artifacts 8=DIR ... --json OUT

``--artifacts BATCH=DIR`` names exported artifacts per batch size (the manifest's batch must match; several of
one batch, e.g. two graph forms, share its transformers rows); the
batch-1 ones, when exported with a coprocessor, also give coprocessor + absorb. Each measurement is the median
of ``--repetitions`` requests after one warm-up request: decode per token is a request's time after its first
token divided by the tokens after the first (every row generates ``--new-tokens``, no stop id), TTFT the time
to the first token (prefill and, for transformers, its first step). GPU memory: what the device had in use
after a request, less what it had before the backend was made (``torch.cuda.mem_get_info``, device-wide:
ONNX Runtime's arena and CUDA graphs included).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

TEXT = ("The old lighthouse keeper climbed the spiral stairs each evening, counting the steps as his father had "
        "taught him, and watched the ships pass beyond the reef while the lamp turned slowly above the water. ")


def prompt_ids(tokenizer_encode, length: int) -> list[int]:
    ids = []
    while len(ids) < length:
        ids += tokenizer_encode(TEXT)
    return ids[:length]


def device_used() -> int:
    import torch

    free, total = torch.cuda.mem_get_info()
    return total - free


def latentcache_runs(artifacts: Path, batch: int, contexts: list[int], new_tokens: int, repetitions: int,
                     attention_kernels: dict[str, str] | None = None, captured_only: bool = False) -> list[dict]:
    from latentcache.runtime.backends.onnxruntime import PREFILL_BUCKETS, OnnxRuntimeCudaBackend
    from latentcache.contract.manifest import load_manifest
    from latentcache.runtime.generator import EndOfPrompt, Generator, NoAugmentation
    from latentcache.runtime.tokenizer import Tokenizer

    manifest = load_manifest(artifacts)
    if manifest.kv.batch != batch:
        raise SystemExit(f"{artifacts} runs batches of {manifest.kv.batch}, not {batch}")
    tokenizer = Tokenizer(artifacts, manifest)
    rows = []
    modes = ((True, PREFILL_BUCKETS),) if captured_only else ((True, PREFILL_BUCKETS), (True, ()), (False, ()))
    for graphs, buckets in modes:
        before = device_used()
        backend = OnnxRuntimeCudaBackend(artifacts, manifest, cuda_graphs=graphs, prefill_buckets=buckets,
                                         attention_kernels=attention_kernels)
        generator = Generator(backend)
        resets = reset_times(backend)
        policies = [("none", NoAugmentation)] + ([("end-of-prompt", EndOfPrompt)] if manifest.num_latents else [])
        for context in contexts:
            if context + new_tokens + manifest.num_latents + 1 > manifest.kv.max_seq:
                continue
            prompts = [prompt_ids(lambda text: tokenizer.encode(text, chat=False), context)] * batch
            for policy_name, policy in policies:
                samples = [timed_request(generator, prompts, new_tokens, policy()) for _ in range(repetitions + 1)][1:]
                row = {"system": "latentcache onnxruntime-cuda", "cuda_graphs": graphs,
                       "prefill_buckets": list(backend.prefill_buckets), "dtype": manifest.dtype, "ops": manifest.ops,
                       "attention_kernels": backend.attention_kernels,
                       "batch": batch, "context": context, "new_tokens": new_tokens, "policy": policy_name,
                       "max_seq": manifest.kv.max_seq, **summarise(samples, batch), **resets,
                       "gpu_memory_mib": round((device_used() - before) / 2**20)}
                print(json.dumps(row), flush=True)
                rows.append(row)
        backend.close()
        del generator, backend
    return rows


def reset_times(backend, repetitions: int = 20) -> dict:
    """The cache reset inside every request's time to first token: its memset (``backend.memset``), and the host
    copy of zeros it replaced, each the median of ``repetitions``."""
    def median_ms() -> float:
        times = []
        for _ in range(repetitions):
            start = time.perf_counter()
            backend.reset()
            times.append(time.perf_counter() - start)
        return round(1e3 * statistics.median(times), 3)

    memset = backend.memset
    timed = {"reset_ms": median_ms(), "reset_by": memset.where if memset else "host copy"}
    backend.memset = None
    timed["reset_host_copy_ms"] = median_ms()
    backend.memset = memset
    return timed


def timed_request(generator, prompts, new_tokens: int, policy) -> dict:
    from latentcache.runtime.generator import RequestStats

    stats = RequestStats()
    start = time.perf_counter()
    tokens = [t for t in generator.generate(prompts, new_tokens, policy=policy, stats=stats)]
    total = time.perf_counter() - start
    return {"ttft": stats.first_token_s, "total": total, "tokens": len(tokens),
            "augment": sum(stats.augment_s), "step": statistics.median(stats.step_s) if stats.step_s else 0.0}


def summarise(samples: list[dict], batch: int) -> dict:
    per_token = [(s["total"] - s["ttft"]) / (s["tokens"] - 1) for s in samples]
    decode = statistics.median(per_token)
    return {"decode_ms_per_token": round(1e3 * decode, 3), "ttft_ms": round(1e3 * statistics.median(s["ttft"] for s in samples), 2),
            "decode_step_ms": round(1e3 * statistics.median(s["step"] for s in samples), 3),
            "coprocessor_absorb_ms": round(1e3 * statistics.median(s["augment"] for s in samples), 2),
            "tokens_per_s": round(batch / decode, 1), "repetitions": len(samples)}


def transformers_runs(base: Path, batch: int, contexts: list[int], new_tokens: int, repetitions: int) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList

    class Stamps(StoppingCriteria):
        """Records when each token is out (generate syncs on its stop check every step anyway)."""

        def __init__(self):
            self.times = []

        def __call__(self, input_ids, scores, **kwargs):
            torch.cuda.synchronize()
            self.times.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    tokenizer = AutoTokenizer.from_pretrained(base)
    rows = []
    for mode in ("eager", "static+compile"):
        before = device_used()
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float16).cuda().eval()
        for context in contexts:
            ids = torch.tensor([prompt_ids(lambda t: tokenizer.encode(t, add_special_tokens=False), context)] * batch,
                               device="cuda")
            options = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False,
                       "pad_token_id": tokenizer.eos_token_id}
            if mode == "static+compile":  # transformers compiles the forward itself with a static cache
                options["cache_implementation"] = "static"
            samples = []
            for _ in range(repetitions + 2):  # two warm-ups: the compile, then the CUDA graphs' recording
                stamps = Stamps()
                torch.cuda.synchronize()
                start = time.perf_counter()
                with torch.inference_mode():
                    model.generate(ids, attention_mask=torch.ones_like(ids), stopping_criteria=StoppingCriteriaList([stamps]),
                                   **options)
                samples.append({"ttft": stamps.times[0] - start, "total": stamps.times[-1] - start,
                                "tokens": len(stamps.times), "augment": 0.0,
                                "step": statistics.median(np.diff(stamps.times)) if len(stamps.times) > 1 else 0.0})
            row = {"system": f"transformers {mode}", "dtype": "float16", "batch": batch, "context": context,
                   "new_tokens": new_tokens, **summarise(samples[2:], batch),
                   "gpu_memory_mib": round((device_used() - before) / 2**20)}
            print(json.dumps(row), flush=True)
            rows.append(row)
        del model
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True, help="the Hugging Face model directory (transformers)")
    parser.add_argument("--artifacts", action="append", required=True, help="BATCH=DIR, once per batch size")
    parser.add_argument("--contexts", default="128,2000", help="prompt lengths, batch 1 (larger batches: the first)")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--captured-only", action="store_true", help="latentcache with CUDA graphs and buckets only")
    parser.add_argument("--attention-kernels", action="append", default=[],
                        help="GRAPH=KERNELS (onnx-llm artifacts): e.g. decode=math, the kernels ONNX Runtime may use")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    import torch

    import onnxruntime
    import transformers

    contexts = [int(c) for c in args.contexts.split(",")]
    report = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "transformers": transformers.__version__,
              "onnxruntime": onnxruntime.__version__, "rows": []}
    anchored = set()  # batches whose transformers rows are in (several artifacts may share a batch: graph forms)
    for item in args.artifacts:
        batch, directory = item.split("=", 1)
        batch = int(batch)
        lengths = contexts if batch == 1 else contexts[:1]
        report["rows"] += latentcache_runs(Path(directory), batch, lengths, args.new_tokens, args.repetitions,
                                           dict(pair.split("=", 1) for pair in args.attention_kernels)
                                           if args.attention_kernels else None,  # None: the backend's default
                                           args.captured_only)
        args.json.write_text(json.dumps(report, indent=2) + "\n")  # kept if a later part fails or runs out of time
        if not args.skip_transformers and batch not in anchored:
            anchored.add(batch)
            report["rows"] += transformers_runs(args.base, batch, lengths, args.new_tokens, args.repetitions)
            args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
