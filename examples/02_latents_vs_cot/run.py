"""Example 2: latent deliberation against chain-of-thought.

The coprocessor deliberates in one parallel pass: N_L latents, absorbed by one base pass. Zero-shot
chain-of-thought ("Let's think step by step.") deliberates with N thinking tokens, one decode step each.
This example measures both, in latency and in accuracy on a small ARC-Easy / GSM8K subset, greedy:

- direct:   prompt -> "The answer is" -> answer
- latents:  prompt -> coprocessor + absorb (N_L latents) -> "The answer is" -> answer
- cot-N:    prompt -> "Let's think step by step." -> up to N thinking tokens (or the model's own stop)
            -> "\\nTherefore, the answer is" -> answer

ARC answers are read as the first option letter (else the first option text) in the answer; GSM8K answers
with latentcache.train.benchmarks.extract_answer.

    python examples/02_latents_vs_cot/run.py                       # 20 ARC-Easy + 10 GSM8K, CPU
    python examples/02_latents_vs_cot/run.py --backend onnxruntime-cuda --arc 200 --gsm8k 100
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from latentcache.errors import LatentcacheError
from latentcache.runtime import Pipeline
from latentcache.runtime.bench import environment
from latentcache.tasks import (
    arc_choice,
    arc_question,
    extract_answer,
    read_arc,
    read_gsm8k,
)

HERE = Path(__file__).resolve().parent
THINK = "Let's think step by step."
ANSWER = "The answer is"
THEREFORE = "\nTherefore, the answer is"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, help="artifacts with a coprocessor (default: the embedded default)")
    parser.add_argument("--backend", default="onnxruntime-cpu")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: cores, at most 8)")
    parser.add_argument("--data", type=Path, help="data root holding arc/ and gsm8k/ "
                        "(default: $LATENTCACHE_DATA, else ../shared/data)")
    parser.add_argument("--arc", type=int, default=20, help="ARC-Easy test items (the first N)")
    parser.add_argument("--gsm8k", type=int, default=10, help="GSM8K test items (the first N)")
    parser.add_argument("--thinking", type=int, nargs="+", default=[16, 32, 64], help="chain-of-thought budgets N")
    parser.add_argument("--arc-answer-tokens", type=int, default=4, help="greedy tokens read for an ARC answer")
    parser.add_argument("--gsm8k-answer-tokens", type=int, default=16, help="greedy tokens read for a GSM8K answer")
    parser.add_argument("--repetitions", type=int, default=5, help="timed runs of the latency comparison")
    parser.add_argument("--json", type=Path, default=HERE / "result.json")
    parser.add_argument("--png", type=Path, default=HERE / "chart.png")
    parser.add_argument("--quick", action="store_true", help="CI size: 2 + 1 items, budgets 4/8, 1 repetition")
    args = parser.parse_args(argv)
    if args.quick:
        args.arc, args.gsm8k, args.thinking, args.repetitions = 2, 1, [4, 8], 1
        args.arc_answer_tokens = args.gsm8k_answer_tokens = 4
    return args


# ---- one request, with the low-level Generator calls ---------------------------------------------------
class Runner:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline, self.generator, self.tokenizer = pipeline, pipeline.generator, pipeline.tokenizer
        self.stop = set(self.tokenizer.stop_ids)

    def ids(self, text: str) -> list[int]:
        return self.tokenizer.fast.encode(text, add_special_tokens=False).ids

    def feed(self, logits: np.ndarray, ids: list[int]) -> np.ndarray:
        """Append forced tokens (one decode step each); returns the logits after the last."""
        for token in ids:
            logits = self.generator.decode_step(np.array([token]))
        return logits

    def greedy(self, logits: np.ndarray, limit: int, stop_on_eos: bool = True) -> tuple[list[int], np.ndarray]:
        tokens = []
        while len(tokens) < limit:
            token = int(logits[0].argmax())
            if stop_on_eos and token in self.stop:
                break
            tokens.append(token)
            logits = self.generator.decode_step(np.array([token]))
        return tokens, logits

    def prompt(self, question: str, room: int) -> list[int]:
        ids = self.tokenizer.encode(question)  # inside the chat template, assistant turn opened
        keep = max(self.generator.capacity - room, 1)
        return ids[-keep:]  # left-truncated only if it cannot fit (tiny CI artifacts)

    def answer(self, question: str, condition: str, answer_tokens: int) -> dict:
        """Answer one question under ``condition`` (direct / latents / cot-N); text and timings."""
        think = int(condition.split("-")[1]) if condition.startswith("cot-") else 0
        trigger, closing = (self.ids(THINK), self.ids(THEREFORE)) if think else ([], self.ids(ANSWER))
        room = self.generator.num_latents + len(trigger) + think + len(closing) + answer_tokens + 1
        ids = self.prompt(question, room)
        start = time.perf_counter()
        logits = self.generator.prefill([ids])
        deliberation = time.perf_counter()
        if condition == "latents":
            logits = self.generator.absorb(self.generator.coprocess())
        thinking = []
        if think:
            logits = self.feed(logits, trigger)
            thinking, logits = self.greedy(logits, think)
        deliberation = time.perf_counter() - deliberation
        logits = self.feed(logits, closing)
        answer, _ = self.greedy(logits, answer_tokens)
        return {"answer": self.tokenizer.decode(answer), "thinking": self.tokenizer.decode(thinking),
                "thinking_tokens": len(thinking), "deliberation_ms": 1000 * deliberation,
                "total_ms": 1000 * (time.perf_counter() - start), "prompt_tokens": len(ids)}


# ---- latency ------------------------------------------------------------------------------------------
def latency(runner: Runner, question: str, thinking: list[int], repetitions: int) -> dict:
    """Latents against exactly N thinking tokens on one prompt (no early stop), medians over repetitions."""
    generator = runner.generator
    ids = runner.prompt(question, generator.num_latents + max(thinking) + 1)
    samples = {"coprocessor": [], "absorb": [], **{f"think-{n}": [] for n in thinking}}
    for rep in range(repetitions + 1):  # rep 0 warms up
        generator.prefill([ids])
        tick = time.perf_counter()
        latents = generator.coprocess()
        tock = time.perf_counter()
        generator.absorb(latents)
        times = {"coprocessor": tock - tick, "absorb": time.perf_counter() - tock}
        for n in thinking:
            logits = generator.prefill([ids])
            tick = time.perf_counter()
            runner.greedy(logits, n, stop_on_eos=False)
            times[f"think-{n}"] = time.perf_counter() - tick
        if rep:
            for key, value in times.items():
                samples[key].append(1000 * value)
    median = {key: statistics.median(values) for key, values in samples.items()}
    latents_ms = median["coprocessor"] + median["absorb"]
    return {"prompt_tokens": len(ids), "num_latents": generator.num_latents, "coprocessor_ms": median["coprocessor"],
            "absorb_ms": median["absorb"], "latents_ms": latents_ms,
            "thinking_ms": {str(n): median[f"think-{n}"] for n in thinking},
            "thinking_ms_per_token": statistics.median(median[f"think-{n}"] / n for n in thinking),
            "cot_over_latents": {str(n): median[f"think-{n}"] / latents_ms for n in thinking}}


def main(argv=None) -> dict:
    args = parse_args(argv)
    # The data first: a missing file fails in one line before the default artifacts are exported (minutes).
    arc = read_arc(args.data, "Easy", "Test")[: args.arc]
    gsm8k = read_gsm8k(args.data, "test")[: args.gsm8k]
    from latentcache.demo import ensure_artifacts

    artifacts = (args.artifacts or ensure_artifacts(print)).resolve()
    pipeline = Pipeline(artifacts, args.backend, args.threads)
    runner = Runner(pipeline)
    conditions = ["direct", "latents", *(f"cot-{n}" for n in args.thinking)]

    sample = arc_question(arc[0]) if arc else gsm8k[0].question  # the latency comparison's prompt
    timing = latency(runner, sample, args.thinking, args.repetitions)
    print(f"latents {timing['latents_ms']:.1f} ms vs thinking " + ", ".join(
        f"{n}: {ms:.0f} ms" for n, ms in timing["thinking_ms"].items()), flush=True)

    items, accuracy = [], {}
    for task, questions in (("arc-easy", arc), ("gsm8k", gsm8k)):
        records = {c: [] for c in conditions}
        for index, item in enumerate(questions):
            question = arc_question(item) if task == "arc-easy" else item.question
            answer_tokens = args.arc_answer_tokens if task == "arc-easy" else args.gsm8k_answer_tokens
            for condition in conditions:
                record = runner.answer(question, condition, answer_tokens)
                predicted = arc_choice(record["answer"], item) if task == "arc-easy" else extract_answer(
                    record["answer"])
                record.update(predicted=predicted, gold=item.answer, correct=predicted == item.answer)
                records[condition].append(record)
                items.append({"task": task, "index": index, "condition": condition, **record})
            print(f"{task} {index + 1}/{len(questions)}: " + " ".join(
                f"{c}={'+' if records[c][-1]['correct'] else '-'}" for c in conditions), flush=True)
        accuracy[task] = {"n": len(questions), "conditions": {c: summary(rs) for c, rs in records.items()}}

    report = {"example": "02_latents_vs_cot", "artifacts": str(artifacts), "backend": pipeline.backend.describe(),
              "num_latents": pipeline.manifest.num_latents,
              "config": {"arc": args.arc, "gsm8k": args.gsm8k, "thinking": args.thinking,
                         "answer_tokens": {"arc-easy": args.arc_answer_tokens, "gsm8k": args.gsm8k_answer_tokens},
                         "repetitions": args.repetitions, "quick": args.quick,
                         "arc_split": "ARC-Easy Test (first N)", "gsm8k_split": "test (first N)"},
              "latency": timing, "accuracy": accuracy, "items": items, "environment": environment(pipeline)}
    pipeline.close()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.png)
    print(tables(report))
    return report


def summary(records: list[dict]) -> dict:
    n = max(len(records), 1)
    return {"accuracy": sum(r["correct"] for r in records) / n,
            "answered": sum(r["predicted"] is not None for r in records) / n,
            "mean_thinking_tokens": sum(r["thinking_tokens"] for r in records) / n,
            "mean_deliberation_ms": sum(r["deliberation_ms"] for r in records) / n,
            "mean_total_ms": sum(r["total_ms"] for r in records) / n}


def tables(report: dict) -> str:
    t = report["latency"]
    lines = [f"| deliberation ({t['prompt_tokens']}-token prompt) | time | relative to latents |", "|---|---|---|",
             (f"| {t['num_latents']} latents (coprocessor {t['coprocessor_ms']:.1f} + absorb {t['absorb_ms']:.1f} ms) "
             f"| {t['latents_ms']:.1f} ms | 1.0× |")]
    lines += [f"| {n} thinking tokens | {ms:.1f} ms | {t['cot_over_latents'][n]:.1f}× |"
              for n, ms in t["thinking_ms"].items()]
    lines += ["", "| task | n | condition | accuracy | answered | thinking tokens | deliberation | total |",
              "|---|---|---|---|---|---|---|---|"]
    for task, result in report["accuracy"].items():
        for condition, s in result["conditions"].items():
            lines.append(f"| {task} | {result['n']} | {condition} | {100 * s['accuracy']:.0f} % | "
                         f"{100 * s['answered']:.0f} % | {s['mean_thinking_tokens']:.1f} | "
                         f"{s['mean_deliberation_ms']:.0f} ms | {s['mean_total_ms']:.0f} ms |")
    return "\n".join(lines)


def plot(report: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = report["latency"]
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.4))
    labels = [f"{t['num_latents']} latents"] + [f"{n} thinking\ntokens" for n in t["thinking_ms"]]
    values = [t["latents_ms"], *t["thinking_ms"].values()]
    bars = left.bar(labels, values, color=["tab:orange"] + ["tab:gray"] * len(t["thinking_ms"]))
    left.bar_label(bars, fmt="%.0f ms")
    left.set_ylabel("deliberation time (ms)")
    left.set_title(f"Deliberation cost, one {t['prompt_tokens']}-token prompt")

    tasks = list(report["accuracy"])
    conditions = list(report["accuracy"][tasks[0]]["conditions"])
    colors = dict(zip(conditions, ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]))
    width = 0.8 / len(conditions)
    for i, condition in enumerate(conditions):
        xs = [k + i * width for k in range(len(tasks))]
        accs = [100 * report["accuracy"][task]["conditions"][condition]["accuracy"] for task in tasks]
        middle.bar_label(middle.bar(xs, accs, width, color=colors[condition], label=condition), fmt="%.0f",
                         fontsize=7)
    middle.set_xticks([k + width * (len(conditions) - 1) / 2 for k in range(len(tasks))],
                      [f"{task} (n={report['accuracy'][task]['n']})" for task in tasks])
    middle.set_ylabel("accuracy (%)")
    middle.set_title("Accuracy, greedy")
    middle.legend(fontsize=8)

    for task, marker in zip(tasks, "os^v"):
        for condition, s in report["accuracy"][task]["conditions"].items():
            right.scatter(s["mean_total_ms"], 100 * s["accuracy"], color=colors[condition], marker=marker, s=50)
        right.scatter([], [], color="black", marker=marker, label=task)
    right.set_xlabel("mean time per question (ms)")
    right.set_ylabel("accuracy (%)")
    right.set_title("Accuracy against latency (colours as in the middle)")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.suptitle(f"Latents vs chain-of-thought: {Path(report['artifacts']).name}, {report['backend']}")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    try:
        main()
    except LatentcacheError as exc:  # missing data or bad input: the one line the CLI would print, no traceback
        sys.exit(f"error: {exc}")
