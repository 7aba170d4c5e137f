"""Example 4: the coprocessor run synchronously, asynchronously, and skipped.

- end-of-prompt (sync, the paper): prefill -> coprocessor + absorb -> first token;
- async (the paper's appendix A.5): decoding starts at once, the coprocessor runs beside it on the prompt's
  cache, and its latents are absorbed at the next positions once it has finished;
- none: the base model alone.

Latency: time to first token, tokens generated before the latents were absorbed (RequestStats.augmented_at),
decode per token and end to end. Quality: ARC-Easy accuracy on a small subset, and how often each policy
gives the synchronous answer (ARC choices, and open-ended answers token for token).

    python examples/04_async/run.py                                # ONNX Runtime CPU, the embedded default
    python examples/04_async/run.py --backend onnxruntime-cuda --arc 200
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from latentcache.errors import LatentcacheError
from latentcache.runtime import Pipeline, RequestStats
from latentcache.runtime.bench import environment, prompt_ids, summarize
from latentcache.tasks import arc_choice, arc_question, read_arc

HERE = Path(__file__).resolve().parent
POLICIES = ("end-of-prompt", "async", "none")
ANSWER = "The answer is"
OPEN_QUESTIONS = [
    "Why is the sky blue?",
    "Explain how a refrigerator keeps food cold.",
    "What causes the seasons on Earth?",
    "Give three tips for learning a new language.",
    "How do vaccines help the immune system?",
]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, help="artifacts with a coprocessor (default: the embedded default)")
    parser.add_argument("--backend", default="onnxruntime-cpu")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: cores, at most 8)")
    parser.add_argument("--data", type=Path, help="data root holding arc/ (default: $LATENTCACHE_DATA, else ../shared/data)")
    parser.add_argument("--prompt-tokens", type=int, default=256, help="latency prompt length")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens decoded per latency request")
    parser.add_argument("--repetitions", type=int, default=3, help="timed latency requests (plus one warm-up)")
    parser.add_argument("--arc", type=int, default=20, help="ARC-Easy test items (the first N)")
    parser.add_argument("--answer-tokens", type=int, default=6, help="greedy tokens read for an ARC answer")
    parser.add_argument("--open", type=int, default=len(OPEN_QUESTIONS), help="open-ended questions compared")
    parser.add_argument("--open-tokens", type=int, default=48, help="greedy tokens per open-ended answer")
    parser.add_argument("--json", type=Path, default=HERE / "result.json")
    parser.add_argument("--png", type=Path, default=HERE / "chart.png")
    parser.add_argument("--quick", action="store_true", help="CI size: 16-token prompt, 2 ARC + 2 open questions")
    args = parser.parse_args(argv)
    if args.quick:
        args.prompt_tokens, args.new_tokens, args.repetitions = 16, 8, 1
        args.arc, args.answer_tokens, args.open, args.open_tokens = 2, 4, 2, 8
    return args


def generate(pipeline: Pipeline, ids: list[int], count: int, policy: str, stop: bool = True):
    """Greedy tokens for one prompt under ``policy``; returns (tokens, stats, wall seconds)."""
    stats = RequestStats()
    start = time.perf_counter()
    stop_ids = pipeline.tokenizer.stop_ids if stop else ()
    tokens = [int(step[0]) for step in pipeline.generator.generate(
        [ids], count, stop_ids=stop_ids, policy=pipeline.policy(policy != "none", policy), stats=stats)]
    if tokens and tokens[-1] in stop_ids:
        tokens = tokens[:-1]
    return tokens, stats, time.perf_counter() - start


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def main(argv=None) -> dict:
    args = parse_args(argv)
    # The data first: a missing file fails in one line before the default artifacts are exported (minutes).
    items = read_arc(args.data, "Easy", "Test")[: args.arc]
    from latentcache.demo import ensure_artifacts

    artifacts = (args.artifacts or ensure_artifacts(print)).resolve()
    pipeline = Pipeline(artifacts, args.backend, args.threads)
    tokenizer = pipeline.tokenizer

    # Latency: the bench's fixed passage, exactly new_tokens per request, the policies interleaved.
    ids = prompt_ids(pipeline, args.prompt_tokens)
    runs = {p: [] for p in POLICIES}
    for rep in range(args.repetitions + 1):  # rep 0 warms up
        for policy in POLICIES:
            _, stats, wall = generate(pipeline, ids, args.new_tokens, policy, stop=False)
            if rep:
                runs[policy].append((stats, wall))
    latency = {}
    for policy, measured in runs.items():
        stats = [s for s, _ in measured]
        latency[policy] = {**summarize(stats, pipeline.manifest.kv.batch),
                           "end_to_end_ms": 1000 * statistics.median(w for _, w in measured),
                           "augmented_at": [a for s in stats for a in s.augmented_at]}
        print(f"{policy}: ttft {latency[policy]['ttft_ms']:.1f} ms, absorbed after "
              f"{latency[policy]['augmented_at']} tokens", flush=True)

    # Quality 1: ARC-Easy choices ("The answer is" closes the prompt; the latents follow it).
    answer_ids = tokenizer.fast.encode(ANSWER, add_special_tokens=False).ids
    arc = {p: [] for p in POLICIES}
    for item in items:
        prompt = tokenizer.encode(arc_question(item)) + answer_ids
        prompt = prompt[-(pipeline.generator.capacity - args.answer_tokens - pipeline.manifest.num_latents - 1):]
        for policy in POLICIES:
            tokens, stats, _ = generate(pipeline, prompt, args.answer_tokens, policy)
            answer = tokenizer.decode(tokens)
            arc[policy].append({"answer": answer, "predicted": arc_choice(answer, item), "gold": item.answer,
                                "augmented_at": stats.augmented_at})
    # Quality 2: open-ended answers, token for token against the synchronous one.
    open_answers = {p: [] for p in POLICIES}
    for question in OPEN_QUESTIONS[: args.open]:
        prompt = tokenizer.encode(question)
        for policy in POLICIES:
            tokens, stats, _ = generate(pipeline, prompt, args.open_tokens, policy)
            open_answers[policy].append({"question": question, "ids": tokens, "answer": tokenizer.decode(tokens),
                                         "augmented_at": stats.augmented_at})

    sync_arc, sync_open = arc["end-of-prompt"], open_answers["end-of-prompt"]
    quality = {"arc-easy": {"n": len(items), "policies": {}}, "open": {"n": len(sync_open), "policies": {}}}
    for policy in POLICIES:
        records, answers = arc[policy], open_answers[policy]
        absorbed = [r["augmented_at"][0] for r in records + answers if r["augmented_at"]]
        quality["arc-easy"]["policies"][policy] = {
            "accuracy": sum(r["predicted"] == r["gold"] for r in records) / max(len(records), 1),
            "agrees_with_sync": sum(r["predicted"] == s["predicted"] for r, s in zip(records, sync_arc))
            / max(len(records), 1)}
        quality["open"]["policies"][policy] = {
            "identical_to_sync": sum(a["ids"] == s["ids"] for a, s in zip(answers, sync_open)) / max(len(answers), 1),
            "mean_common_prefix": sum(common_prefix(a["ids"], s["ids"]) for a, s in zip(answers, sync_open))
            / max(len(answers), 1)}
        latency[policy]["quality_runs_mean_augmented_at"] = sum(absorbed) / len(absorbed) if absorbed else None

    report = {"example": "04_async", "artifacts": str(artifacts), "backend": pipeline.backend.describe(),
              "num_latents": pipeline.manifest.num_latents,
              "config": {"prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
                         "repetitions": args.repetitions, "arc": args.arc, "answer_tokens": args.answer_tokens,
                         "open": args.open, "open_tokens": args.open_tokens, "quick": args.quick},
              "latency": latency, "quality": quality,
              "answers": {"arc-easy": arc, "open": open_answers}, "environment": environment(pipeline)}
    pipeline.close()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.png)
    print(table(report))
    return report


def table(report: dict) -> str:
    q = report["quality"]
    lines = [("| policy | first token | coprocessor + absorb | absorbed after (median) | decode per token | "
             "end to end | "
             f"ARC-Easy accuracy (n={q['arc-easy']['n']}) | ARC = sync | open answers = sync (n={q['open']['n']}) |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for policy, t in report["latency"].items():
        cost = f"{t['coprocessor_absorb_ms']:.1f} ms" if t["coprocessor_absorb_ms"] is not None else "–"
        cost += " (absorb only)" if policy == "async" else ""
        at = f"{statistics.median(t['augmented_at']):g} tokens" if t["augmented_at"] else "–"
        lines.append(f"| {policy} | {t['ttft_ms']:.1f} ms | {cost} | {at} | "
                     f"{t['decode_ms_median']:.2f} ms | {t['end_to_end_ms']:.0f} ms | "
                     f"{100 * q['arc-easy']['policies'][policy]['accuracy']:.0f} % | "
                     f"{100 * q['arc-easy']['policies'][policy]['agrees_with_sync']:.0f} % | "
                     f"{100 * q['open']['policies'][policy]['identical_to_sync']:.0f} % |")
    return "\n".join(lines)


def plot(report: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = list(report["latency"])
    colors = {"end-of-prompt": "tab:orange", "async": "tab:green", "none": "tab:blue"}
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    bars = axes[0].bar(policies, [report["latency"][p]["ttft_ms"] for p in policies],
                       color=[colors[p] for p in policies])
    axes[0].bar_label(bars, fmt="%.1f ms")
    axes[0].set_title(f"time to first token ({report['config']['prompt_tokens']}-token prompt)")
    bars = axes[1].bar(policies, [report["latency"][p]["end_to_end_ms"] for p in policies],
                       color=[colors[p] for p in policies])
    axes[1].bar_label(bars, fmt="%.0f ms")
    axes[1].set_title(f"end to end, {report['config']['new_tokens']} tokens")
    for ax in axes[:2]:
        ax.margins(y=0.15)
        ax.set_ylabel("ms")
    absorbed = report["latency"]["async"]["augmented_at"]
    if absorbed:
        axes[0].annotate(f"latents\nabsorbed\nafter {statistics.median(absorbed):g}\ntokens",
                         (policies.index("async"), report["latency"]["async"]["ttft_ms"] / 2), ha="center",
                         fontsize=8, color="white")
    q = report["quality"]
    width = 0.25
    metrics = [("ARC accuracy", [q["arc-easy"]["policies"][p]["accuracy"] for p in policies]),
               ("ARC = sync", [q["arc-easy"]["policies"][p]["agrees_with_sync"] for p in policies]),
               ("open answer = sync", [q["open"]["policies"][p]["identical_to_sync"] for p in policies])]
    for j, policy in enumerate(policies):
        bars = axes[2].bar([k + j * width for k in range(len(metrics))], [100 * m[1][j] for m in metrics], width,
                           color=colors[policy], label=policy)
        axes[2].bar_label(bars, fmt="%.0f", fontsize=7)
    axes[2].set_xticks([k + width for k in range(len(metrics))], [m[0] for m in metrics])
    axes[2].set_ylabel("%")
    axes[2].set_ylim(0, 112)
    axes[2].legend(fontsize=8)
    axes[2].set_title(f"quality (ARC n={q['arc-easy']['n']}, open n={q['open']['n']})")
    fig.suptitle(f"Async coprocessor: {Path(report['artifacts']).name}, {report['backend']}")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    try:
        main()
    except LatentcacheError as exc:  # missing data or bad input: the one line the CLI would print, no traceback
        sys.exit(f"error: {exc}")
