"""Issue 15, quality: what int4/int8 weights cost, against fp32, on the weights the exported graphs hold.

    python benchmarks/quantized_quality.py --base BASE_DIR --coprocessor CHECKPOINT \
        --artifacts int8=ART_INT8 --artifacts int4=ART_INT4 --fp32-artifacts ART_FP32 --json OUT

Each ``--artifacts`` folder is an export of BASE (+ CHECKPOINT) with ``--weights int8|int4``. Its graphs' weights are
decoded back (``export.quantize.dequantized_linears``) into the PyTorch reference, so the figures are the quantized
model's, not a re-quantization. Reports, each against fp32:
- the base's perplexity over every token of WikiText-2 test (``--sequences`` windows of ``--seq-len`` tokens);
- the coprocessor's Table-1 relative perplexity change at +1/+4/+16 (WikiText-2 test, ``--points`` per sequence),
  computed with the quantized base and the quantized coprocessor, beside fp32's on the same targets;
- greedy agreement through the runtime itself (ONNX Runtime CPU, the artifacts as a user runs them, int8
  activations): tokens identical to ``--fp32-artifacts`` over the parity prompts, coprocessor off.
Needs the project's data (``LATENTCACHE_DATA`` or ../shared). Prints a table and writes one JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

PARITY_PROMPTS = (  # short chat-style prompts, as a user types them (the runtime wraps them in the template)
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in one sentence.",
    "List three prime numbers greater than 10.",
    "Translate 'good morning' into Spanish.",
    "What is 17 times 3?",
    "Give one tip for writing clean code.",
    "Who wrote Romeo and Juliet?",
)
TABLE_POSITIONS = (1, 4, 16)


def full_perplexity(base, rows) -> float:
    """Perplexity of every next token over windows ``rows [n, L]`` (causal, no document boundaries inside)."""
    from latentcache.train.objective import causal_document_mask

    total, count = 0.0, 0
    for row in rows:
        tokens = torch.from_numpy(row[None]).long()
        positions = torch.arange(tokens.shape[1])[None]
        hidden = base(tokens, position_ids=positions, attention_mask=causal_document_mask(tokens, None))
        logprobs = torch.log_softmax(base.logits(hidden).float(), -1)[0, :-1]
        total -= logprobs.gather(-1, tokens[0, 1:, None]).sum().item()
        count += tokens.shape[1] - 1
    return math.exp(total / count)


def load_models(args, artifacts: Path | None):
    from latentcache.export.quantize import load_graph_weights
    from latentcache.model.checkpoint import load_coprocessor

    base, coprocessor = load_coprocessor(Path(args.coprocessor), Path(args.base))
    if artifacts is not None:
        load_graph_weights(artifacts, base, coprocessor)
    return base.eval(), coprocessor.eval()


def greedy_runs(artifacts: Path, new_tokens: int, threads: int) -> list[list[int]]:
    from latentcache.contract.manifest import load_manifest
    from latentcache.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from latentcache.runtime.generator import Generator
    from latentcache.runtime.tokenizer import Tokenizer

    manifest = load_manifest(artifacts)
    generator = Generator(OnnxRuntimeBackend(artifacts, manifest, threads=threads))
    tokenizer = Tokenizer(artifacts, manifest)
    runs = []
    for prompt in PARITY_PROMPTS:
        ids = tokenizer.encode(prompt, chat=True)
        runs.append([int(t[0]) for t in generator.generate([ids], new_tokens)])
    return runs


def agreement(reference: list[list[int]], other: list[list[int]]) -> dict:
    """Prompts whose greedy tokens are identical, and the mean length of the identical prefix."""
    prefixes = []
    for a, b in zip(reference, other):
        same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        prefixes.append(same)
    return {"identical_prompts": sum(a == b for a, b in zip(reference, other)), "prompts": len(reference),
            "mean_identical_prefix": sum(prefixes) / len(prefixes), "new_tokens": len(reference[0])}


def main() -> None:
    from latentcache.train.data import leading_batches
    from latentcache.train.evaluate import PerplexityConfig, evaluate_perplexity
    from latentcache.train.run import _eos_id, _validation_sets

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True)
    parser.add_argument("--coprocessor", required=True)
    parser.add_argument("--artifacts", action="append", required=True, help="LABEL=DIR, a quantized export")
    parser.add_argument("--fp32-artifacts", type=Path, required=True, help="the fp32 export (greedy reference)")
    parser.add_argument("--sequences", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--points", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    forms = {"fp32": None, **{label: Path(path) for label, path in (a.split("=", 1) for a in args.artifacts)}}
    base, _ = load_models(args, None)
    eos = _eos_id(base.config)
    wikitext = _validation_sets(Path(args.base), (), args.seq_len, eos)["wikitext2-test"]
    rows = [row for batch in leading_batches(wikitext, args.sequences, 1) for row in batch]
    reference_tokens = greedy_runs(args.fp32_artifacts, args.new_tokens, args.threads)
    report = {"base": args.base, "coprocessor": args.coprocessor, "sequences": len(rows), "seq_len": args.seq_len,
              "points": args.points, "forms": {}}
    for label, artifacts in forms.items():
        started = time.perf_counter()
        base, coprocessor = load_models(args, artifacts)
        batches = [torch.from_numpy(b) for b in leading_batches(wikitext, args.sequences, 2)]
        table = evaluate_perplexity(base, coprocessor, batches, PerplexityConfig(positions=TABLE_POSITIONS,
                                                                                 points=args.points, eos_id=eos))
        entry = {"perplexity": full_perplexity(base, rows),
                 "table1": {f"+{r.position}": r.relative_change_pct for r in table.rows}}
        if artifacts is not None:
            entry["greedy"] = agreement(reference_tokens, greedy_runs(artifacts, args.new_tokens, args.threads))
        report["forms"][label] = entry
        print_row(label, entry, report["forms"]["fp32"], time.perf_counter() - started)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))


def print_row(label: str, entry: dict, fp32: dict, seconds: float) -> None:
    change = (entry["perplexity"] / fp32["perplexity"] - 1) * 100
    table = "  ".join(f"{k}: {v:+.2f}% (fp32 {fp32['table1'][k]:+.2f}%)" for k, v in entry["table1"].items())
    greedy = entry.get("greedy")
    agree = f"  greedy identical {greedy['identical_prompts']}/{greedy['prompts']}" if greedy else ""
    print(f"{label:>5}  WikiText-2 ppl {entry['perplexity']:.3f} ({change:+.2f}% vs fp32)  {table}{agree}  "
          f"({seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
