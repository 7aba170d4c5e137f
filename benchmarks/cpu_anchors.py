"""Decode speed against the field's anchors, side by side in one run on one machine (issue: runtime).

    python benchmarks/cpu_anchors.py --base BASE_DIR --artifacts ARTIFACTS [--genai GENAI_DIR] \
        [--threads 2] [--prompt-tokens 128] [--new-tokens 128] [--repetitions 5] --json OUT

Systems, all fp32, batch 1, greedy, the same prompt ids, ``threads`` CPU threads each:
- latentcache on ONNX Runtime CPU (the artifacts, coprocessor off);
- transformers ``generate`` (eager, SDPA, dynamic cache) on the same checkpoint;
- onnxruntime-genai's model-builder model, if ``--genai`` is given (build it with
  ``python -m onnxruntime_genai.models.builder -m BASE_DIR -o GENAI_DIR -p fp32 -e cpu
  --extra_options prune_lm_head=true``; needs ``pip install onnxruntime-genai onnx-ir``).
Reports time to first token (median) and decode tokens/s (median per-token time), plus latentcache's
per-token decode latency at contexts 128, 512 and 1024 (cost grows with attention, never by copying the
cache). Systems run one after another (ONNX Runtime's spinning worker threads would slow whichever system
runs next to them if they were interleaved), each with a warm-up, in one process and one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np


def ours(artifacts: Path, threads: int):
    from latentcache.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from latentcache.runtime.generator import Generator, RequestStats
    from latentcache.contract.manifest import load_manifest

    generator = Generator(OnnxRuntimeBackend(artifacts, load_manifest(artifacts), threads=threads))

    def run(ids: list[int], new_tokens: int) -> tuple[float, list[float], list[int]]:
        stats = RequestStats()
        tokens = [int(t[0]) for t in generator.generate([ids], new_tokens, stats=stats)]
        return stats.first_token_s, stats.step_s, tokens

    return run, generator


def transformers_eager(base: Path, threads: int):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="sdpa").eval()

    def run(ids: list[int], new_tokens: int) -> tuple[float, list[float], list[int]]:
        from transformers import StoppingCriteria

        stamps: list[float] = []

        class Stamp(StoppingCriteria):  # called once per generated token
            def __call__(self, input_ids, scores, **kwargs):
                stamps.append(time.perf_counter())
                return torch.zeros(input_ids.shape[0], dtype=torch.bool)

        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 do_sample=False, stopping_criteria=[Stamp()], pad_token_id=0)
        steps = list(np.diff(stamps))
        return stamps[0] - start, steps, out[0, len(ids):].tolist()

    return run


def onnxruntime_genai(directory: Path, threads: int):
    import onnxruntime_genai as og

    config = og.Config(str(directory))
    model = og.Model(config)

    def run(ids: list[int], new_tokens: int) -> tuple[float, list[float], list[int]]:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + new_tokens, min_length=len(ids) + new_tokens,
                                  do_sample=False)
        generator = og.Generator(model, params)
        start = time.perf_counter()
        generator.append_tokens(ids)
        stamps, tokens = [], []
        while not generator.is_done():
            generator.generate_next_token()
            stamps.append(time.perf_counter())
            tokens.append(int(generator.get_next_tokens()[0]))
        return stamps[0] - start, list(np.diff(stamps)), tokens

    return run


def prompt_ids(base: Path, count: int) -> list[int]:
    from tokenizers import Tokenizer

    from latentcache.runtime.bench import PASSAGE

    tokenizer = Tokenizer.from_file(str(base / "tokenizer.json"))
    ids: list[int] = []
    while len(ids) < count:
        ids += tokenizer.encode(PASSAGE, add_special_tokens=False).ids
    return ids[:count]


def per_token_at_contexts(generator, ids_source: list[int], contexts: list[int], steps: int = 32) -> dict:
    """Median decode step time after a prompt of each context length (coprocessor off)."""
    result = {}
    for context in contexts:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--artifacts", type=Path, required=True)
    parser.add_argument("--genai", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--contexts", default="128,512,1024")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()

    ids = prompt_ids(args.base, args.prompt_tokens)
    contexts = [int(c) for c in args.contexts.split(",")]
    makers = {"latentcache-ort-cpu": lambda: ours(args.artifacts, args.threads),
              "transformers-eager": lambda: (transformers_eager(args.base, args.threads), None)}
    if args.genai:
        makers["onnxruntime-genai"] = lambda: (onnxruntime_genai(args.genai, args.threads), None)
    samples, by_context = {}, None
    for name, make in makers.items():
        run, generator = make()
        run(ids, 8)  # warm-up
        samples[name] = {"ttft": [], "steps": [], "tokens": None}
        for _ in range(args.repetitions):
            ttft, steps, tokens = run(ids, args.new_tokens)
            samples[name]["ttft"].append(ttft)
            samples[name]["steps"] += steps
            samples[name]["tokens"] = tokens
        if generator is not None:
            by_context = per_token_at_contexts(generator, ids, contexts)
        del run, generator
    report = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
              "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "repetitions": args.repetitions,
              "systems": {}}
    for name, s in samples.items():
        report["systems"][name] = {
            "ttft_ms": 1000 * statistics.median(s["ttft"]),
            "decode_ms_median": 1000 * statistics.median(s["steps"]),
            "decode_tokens_per_s": 1 / statistics.median(s["steps"]),
            "greedy_equal_to_latentcache": s["tokens"] == samples["latentcache-ort-cpu"]["tokens"],
        }
    ours_tps = report["systems"]["latentcache-ort-cpu"]["decode_tokens_per_s"]
    report["ratios"] = {f"latentcache_over_{name}": ours_tps / r["decode_tokens_per_s"]
                        for name, r in report["systems"].items() if name != "latentcache-ort-cpu"}
    report["latentcache_decode_ms_by_context"] = by_context
    print(json.dumps(report, indent=2))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
