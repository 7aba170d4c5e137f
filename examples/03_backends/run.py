"""Example 3: one model and one prompt on every backend.

ONNX Runtime CPU, ONNX Runtime CUDA, TensorRT (engines from `latentcache build`) and the PyTorch reference,
each with and without the coprocessor: load time, time to first token, coprocessor + absorb, decode per
token, and whether its greedy answer matches ONNX Runtime CPU's token for token. A backend that cannot run
here is reported as skipped, with the reason the runtime gives (BackendUnavailable), never dropped.

    python examples/03_backends/run.py                                   # CPU: ORT CPU and torch run
    latentcache build ART --backend tensorrt && python examples/03_backends/run.py --artifacts ART   # GPU
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from latentcache.runtime import Pipeline
from latentcache.runtime.backend import BackendUnavailable
from latentcache.runtime.backends import BACKENDS
from latentcache.runtime.bench import BenchConfig, environment, one_request, prompt_ids, summarize

HERE = Path(__file__).resolve().parent
QUESTION = "Why is the sky blue?"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, help="artifacts with a coprocessor (default: the embedded default)")
    parser.add_argument("--backend", nargs="+", default=list(BACKENDS), help="backends to try, in order")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: cores, at most 8)")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repetitions", type=int, default=3, help="timed requests (plus one warm-up)")
    parser.add_argument("--question", default=QUESTION, help="chat prompt whose greedy answers are compared")
    parser.add_argument("--answer-tokens", type=int, default=32)
    parser.add_argument("--json", type=Path, default=HERE / "result.json")
    parser.add_argument("--png", type=Path, default=HERE / "chart.png")
    parser.add_argument("--quick", action="store_true", help="CI size: 16-token prompt, 4 new tokens, 1 repetition")
    args = parser.parse_args(argv)
    if args.quick:
        args.prompt_tokens, args.new_tokens, args.repetitions, args.answer_tokens = 16, 4, 1, 8
    return args


def measure(pipeline: Pipeline, args) -> dict:
    """Latency with the coprocessor off and on (bench's prompt and method), and the greedy answers."""
    ids = prompt_ids(pipeline, args.prompt_tokens)
    result = {}
    for mode, coprocessor in (("off", False), ("on", True)):
        config = BenchConfig(args.prompt_tokens, args.new_tokens, args.repetitions, coprocessor=coprocessor)
        one_request(pipeline, ids, config)  # warm-up
        runs = [one_request(pipeline, ids, config) for _ in range(args.repetitions)]
        tokens = [int(step[0]) for step in pipeline.token_stream([args.question], args.answer_tokens,
                                                                 policy=pipeline.policy(coprocessor))]
        result[mode] = {**summarize(runs, pipeline.manifest.kv.batch), "answer_ids": tokens,
                        "answer": pipeline.tokenizer.decode(tokens)}
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    from latentcache.demo import ensure_artifacts

    artifacts = (args.artifacts or ensure_artifacts(print)).resolve()
    backends, env = [], None
    for name in args.backend:
        tick = time.perf_counter()
        try:
            pipeline = Pipeline(artifacts, name, args.threads)
        except BackendUnavailable as exc:
            backends.append({"backend": name, "status": "skipped", "reason": str(exc)})
            print(f"{name}: skipped ({exc})", flush=True)
            continue
        load_s = time.perf_counter() - tick
        entry = {"backend": name, "status": "ran", "describe": pipeline.backend.describe(), "load_s": load_s,
                 **measure(pipeline, args)}
        env = env or environment(pipeline)
        pipeline.close()
        backends.append(entry)
        print(f"{name}: ttft {entry['off']['ttft_ms']:.1f} / {entry['on']['ttft_ms']:.1f} ms (off / on), "
              f"decode {entry['on']['decode_ms_median']:.2f} ms/token", flush=True)

    ran = [b for b in backends if b["status"] == "ran"]
    if ran:  # greedy answers against the first backend that ran (ONNX Runtime CPU by default)
        reference = ran[0]
        for entry in ran:
            for mode in ("off", "on"):
                entry[mode]["matches_reference"] = entry[mode]["answer_ids"] == reference[mode]["answer_ids"]
                entry[mode]["first_difference"] = first_difference(entry[mode]["answer_ids"],
                                                                   reference[mode]["answer_ids"])
    report = {"example": "03_backends", "artifacts": str(artifacts), "reference": ran[0]["backend"] if ran else None,
              "config": {"prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
                         "repetitions": args.repetitions, "question": args.question,
                         "answer_tokens": args.answer_tokens, "quick": args.quick},
              "backends": backends, "environment": env}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.png)
    print(table(report))
    return report


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The first index where two token lists differ (None if identical)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def table(report: dict) -> str:
    lines = ["| backend | load | first token (off / on) | coprocessor + absorb | decode per token (on) | tokens/s "
             f"| greedy answer = {report['reference']} |", "|---|---|---|---|---|---|---|"]
    for b in report["backends"]:
        if b["status"] != "ran":
            lines.append(f"| {b['backend']} | skipped: {b['reason']} | | | | | |")
            continue
        same = "/".join("yes" if b[m]["matches_reference"] else f"no (token {b[m]['first_difference']})"
                        for m in ("off", "on"))
        lines.append(f"| {b['backend']} | {b['load_s']:.1f} s | {b['off']['ttft_ms']:.1f} / {b['on']['ttft_ms']:.1f} ms"
                     f" | {b['on']['coprocessor_absorb_ms']:.1f} ms | {b['on']['decode_ms_median']:.2f} ms | "
                     f"{b['on']['decode_tokens_per_s']:.1f} | {same} |")
    return "\n".join(lines)


def plot(report: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [b["backend"] for b in report["backends"]]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    panels = [(("off", "ttft_ms"), ("on", "ttft_ms"), "time to first token (ms)"),
              (("on", "coprocessor_absorb_ms"), None, "coprocessor + absorb (ms)"),
              (("off", "decode_ms_median"), ("on", "decode_ms_median"), "decode per token (ms)")]
    for ax, (first, second, title) in zip(axes, panels):
        keys = [k for k in (first, second) if k]
        width = 0.8 / len(keys)
        for j, (mode, key) in enumerate(keys):
            values = [b[mode][key] if b["status"] == "ran" else 0 for b in report["backends"]]
            bars = ax.bar([i + j * width for i in range(len(names))], values, width,
                          color="tab:blue" if mode == "off" else "tab:orange", label=f"coprocessor {mode}")
            ax.bar_label(bars, labels=[f"{v:.1f}" if b["status"] == "ran" else "skipped"
                                       for v, b in zip(values, report["backends"])], fontsize=7, rotation=90,
                         padding=2)
        ax.set_xticks([i + width * (len(keys) - 1) / 2 for i in range(len(names))], names, rotation=20, fontsize=8)
        ax.set_title(title)
        ax.margins(y=0.25)
        if len(keys) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(f"Backends: {Path(report['artifacts']).name}, {report['config']['prompt_tokens']}-token prompt")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
