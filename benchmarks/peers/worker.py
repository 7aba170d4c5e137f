"""Times one system in a process of its own and prints one JSON line (``cpu_anchors.py`` runs it).

    python worker.py --kind latentcache|transformers|genai|llamacpp|optimum --path P --ids IDS.json \
        --threads T --new-tokens N --repetitions R [--contexts 128,512,1024]

A fresh process per system: ONNX Runtime's spinning worker threads, torch's pools and llama.cpp's threads cannot
slow whichever system runs next, and a peer that needs other package versions runs under its own venv's python.
Each runner returns, for a batch-1 greedy run of exactly ``new_tokens`` on the given ids: the time to first token
(prefill + first token available), the per-step times of the rest, and the tokens. One warm-up run first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from importlib import metadata
from itertools import pairwise
from pathlib import Path


def gaps(stamps: list[float]) -> list[float]:
    """Per-step times from one timestamp per token (the first token's belongs to TTFT)."""
    return [b - a for a, b in pairwise(stamps)]


def latentcache_runner(path: Path, threads: int):
    from latentcache.contract.manifest import load_manifest
    from latentcache.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from latentcache.runtime.generator import Generator, RequestStats

    # no policy passed to generate: NoAugmentation, the coprocessor stays off
    generator = Generator(OnnxRuntimeBackend(path, load_manifest(path), threads=threads))

    def run(ids: list[int], new_tokens: int):
        stats = RequestStats()
        tokens = [int(t[0]) for t in generator.generate([ids], new_tokens, stats=stats)]
        return stats.first_token_s, list(stats.step_s), tokens

    run.generator = generator
    return run


def stamped_generate(model, torch, ids: list[int], new_tokens: int):
    """``generate`` with a timestamp per token: stopping criteria are called once after each new token."""
    from transformers import StoppingCriteria

    stamps: list[float] = []

    class Stamp(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            stamps.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             stopping_criteria=[Stamp()], pad_token_id=0)
    return stamps[0] - start, gaps(stamps), out[0, len(ids):].tolist()


def transformers_runner(path: Path, threads: int):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
    return lambda ids, new_tokens: stamped_generate(model, torch, ids, new_tokens)


def optimum_runner(path: Path, threads: int):
    import onnxruntime
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    torch.set_num_threads(threads)  # generate's own tensor work (logits processing) runs in torch
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    model = ORTModelForCausalLM.from_pretrained(path, provider="CPUExecutionProvider", session_options=options,
                                                use_cache=True)
    return lambda ids, new_tokens: stamped_generate(model, torch, ids, new_tokens)


def genai_runner(path: Path, threads: int):
    import onnxruntime_genai as og

    config = og.Config(str(path))
    # the builder writes no thread count; without one ORT takes every core, unlike the other systems
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    model = og.Model(config)

    def run(ids: list[int], new_tokens: int):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + new_tokens, min_length=len(ids) + new_tokens,
                                  do_sample=False)
        generator = og.Generator(model, params)
        start = time.perf_counter()
        generator.append_tokens(ids)  # prefill; the first token is sampled by the first generate_next_token
        stamps, tokens = [], []
        while not generator.is_done() and len(tokens) < new_tokens:
            generator.generate_next_token()
            stamps.append(time.perf_counter())
            tokens.append(int(generator.get_next_tokens()[0]))
        return stamps[0] - start, gaps(stamps), tokens

    return run


def llamacpp_runner(path: Path, threads: int, context: int):
    import llama_cpp

    # flash attention is off by default in llama-cpp-python; llama.cpp's own tools turn it on for CPU too
    model = llama_cpp.Llama(model_path=str(path), n_ctx=context, n_batch=512, n_threads=threads,
                            n_threads_batch=threads, flash_attn=True, verbose=False)

    def run(ids: list[int], new_tokens: int):
        model.reset()  # else generate() reuses the cached prompt prefix and the next TTFT skips prefill
        start = time.perf_counter()
        stamps, tokens = [], []
        for token in model.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0,
                                    reset=False):
            stamps.append(time.perf_counter())
            tokens.append(int(token))
            if len(tokens) == new_tokens:  # generate() itself never stops, not even at end-of-text
                break
        return stamps[0] - start, gaps(stamps), tokens

    return run


def per_token_at_contexts(generator, ids_source: list[int], contexts: list[int], steps: int = 32) -> dict:
    """latentcache's median decode step after a prompt of each length: cost should grow with attention only."""
    import numpy as np

    result = {}
    for context in contexts:
        # the kv-cache must hold the prompt and every timed step: a longer context is measured at the longest that
        # fits, under its real length
        context = min(context, generator.capacity - steps)
        ids = (ids_source * (context // len(ids_source) + 1))[:context]
        generator.prefill([ids])
        token = np.array([ids[-1]])
        times = []
        for _ in range(steps):
            tick = time.perf_counter()
            generator.decode_step(token)
            times.append(time.perf_counter() - tick)
        result[str(context)] = 1000 * statistics.median(times)
    return result


VERSIONED = ("latentcache", "onnxruntime", "onnxruntime-genai", "torch", "transformers", "optimum", "optimum-onnx",
             "llama-cpp-python", "numpy")


def versions() -> dict:
    found = {}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", required=True, choices=["latentcache", "transformers", "genai", "llamacpp",
                                                          "optimum"])
    parser.add_argument("--path", type=Path, required=True)
    parser.add_argument("--ids", type=Path, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--new-tokens", type=int, required=True)
    parser.add_argument("--repetitions", type=int, required=True)
    parser.add_argument("--contexts", default="")
    args = parser.parse_args()
    ids = json.loads(args.ids.read_text())
    contexts = [int(c) for c in args.contexts.split(",") if c]

    tick = time.perf_counter()
    if args.kind == "latentcache":
        run = latentcache_runner(args.path, args.threads)
    elif args.kind == "transformers":
        run = transformers_runner(args.path, args.threads)
    elif args.kind == "optimum":
        run = optimum_runner(args.path, args.threads)
    elif args.kind == "genai":
        run = genai_runner(args.path, args.threads)
    else:
        run = llamacpp_runner(args.path, args.threads, max([len(ids) + args.new_tokens, *contexts]) + 16)
    load_s = time.perf_counter() - tick
    run(ids, 8)  # warm-up: first-call allocations and kernel selection stay out of the samples
    ttft, steps, tokens = [], [], []
    for _ in range(args.repetitions):
        first, rest, tokens = run(ids, args.new_tokens)
        ttft.append(first)
        steps += rest
    result = {"load_s": load_s, "ttft_s": ttft, "step_s": steps, "tokens": tokens, "versions": versions(),
              "python": sys.version.split()[0], "executable": sys.executable, "pid": os.getpid(),
              "platform": platform.platform()}
    if contexts and hasattr(run, "generator"):
        result["decode_ms_by_context"] = per_token_at_contexts(run.generator, ids, contexts)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
