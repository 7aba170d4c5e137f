"""The native runtime (`latentcache-run`) against the Python runtime on the same artifacts, side by side in
one run: time to first token, coprocessor + absorb, per-token decode, start-up (process start to first
token, measured by this parent from the spawn) and peak RSS (the child's own, from wait4).

    .venv/bin/python benchmarks/native_vs_python.py ART [--threads 2] [--new-tokens 64] [--repetitions 3]
        [--no-coprocessor] [--native build/native/latentcache-run] [--json native_vs_python.json]

Both run ONNX Runtime CPU with the same thread count, greedy, the chat template, the same prompt; each
repetition is a fresh process (so start-up and RSS are per process) and the report takes medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Write a short poem about the sea."

# The Python side, in a fresh interpreter: the Pipeline with the stats the `latentcache bench` command uses.
PYTHON_CHILD = r"""
import json, sys, time
from latentcache.runtime import Pipeline
from latentcache.runtime.generator import RequestStats
art, prompt, count, threads, coprocessor = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
pipeline = Pipeline(art, "onnxruntime-cpu", threads)
stats, first = RequestStats(), None
tokens = []
for step in pipeline.token_stream([prompt], count, policy=pipeline.policy(coprocessor), stats=stats):
    if first is None:
        first = time.time()
    tokens.append(int(step[0]))
steps = sorted(stats.step_s)
print(json.dumps({"ttft_s": stats.first_token_s, "prefill_s": stats.prefill_s, "augment_s": stats.augment_s,
                  "decode_median_s": steps[len(steps) // 2] if steps else 0.0, "decode_steps": len(steps),
                  "first_token_unix_s": first, "tokens": tokens}))
"""


def run_measured(command: list[str]) -> dict:
    """Spawn and reap the child ourselves (wait4: its own peak RSS); start-up is timed from the spawn."""
    started = time.time()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} ... exited {process.returncode}")
    report = json.loads(out.strip().splitlines()[-1])
    report["startup_to_first_token_s"] = report["first_token_unix_s"] - started
    report["peak_rss_mb"] = usage.ru_maxrss / 1024  # KiB on Linux
    return report


def summarize(runs: list[dict]) -> dict:
    keys = ("ttft_s", "prefill_s", "decode_median_s", "startup_to_first_token_s", "peak_rss_mb")
    summary = {key: statistics.median(r[key] for r in runs) for key in keys}
    augments = [sum(r["augment_s"]) for r in runs if r.get("augment_s")]
    summary["augment_s"] = statistics.median(augments) if augments else None
    summary["decode_steps"] = runs[0]["decode_steps"]
    summary["runs"] = len(runs)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--no-coprocessor", action="store_true")
    parser.add_argument("--native", type=Path, default=ROOT / "build" / "native" / "latentcache-run")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--json", type=Path, default=Path("native_vs_python.json"))
    args = parser.parse_args()
    manifest = json.loads((args.artifacts / "manifest.json").read_text())
    coprocessor = manifest["num_latents"] > 0 and not args.no_coprocessor
    native_cmd = [str(args.native), str(args.artifacts), args.prompt, "--bench", "--ids", "--threads", str(args.threads),
                  "--max-new-tokens", str(args.new_tokens)] + ([] if coprocessor else ["--no-coprocessor"])
    python_cmd = [sys.executable, "-c", PYTHON_CHILD, str(args.artifacts), args.prompt, str(args.new_tokens),
                  str(args.threads), "1" if coprocessor else "0"]
    native_runs, python_runs = [], []
    for _ in range(args.repetitions):  # interleaved, so drift (thermal, page cache) hits both alike
        native_runs.append(run_measured(native_cmd))
        python_runs.append(run_measured(python_cmd))
    same = all(n["tokens"] == p["tokens"] for n, p in zip(native_runs, python_runs))
    report = {
        "artifacts": str(args.artifacts), "dtype": manifest["dtype"], "kv_update": manifest["kv_update"],
        "coprocessor": coprocessor, "threads": args.threads, "new_tokens": args.new_tokens, "prompt": args.prompt,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.machine()},
        "tokens_identical": same, "native": summarize(native_runs), "python": summarize(python_runs),
    }
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'':28}{'native':>12}{'python':>12}")
    for key, label in (("ttft_s", "TTFT (s)"), ("augment_s", "coprocessor+absorb (s)"),
                       ("decode_median_s", "decode per token (s)"), ("startup_to_first_token_s", "start-up to 1st token (s)"),
                       ("peak_rss_mb", "peak RSS (MiB)")):
        n, p = report["native"][key], report["python"][key]
        print(f"{label:28}{'-' if n is None else f'{n:.4f}':>12}{'-' if p is None else f'{p:.4f}':>12}")
    print(f"tokens identical: {same}; wrote {args.json}")


if __name__ == "__main__":
    main()
