"""Where the device memory of ``OnnxRuntimeCudaBackend(share_weights=...)`` goes: one fresh process per configuration.

    python benchmarks/gpu/share_probe.py --copro DIR --base DIR --json OUT [--log OUT.log] [--only NAME ...]
    python benchmarks/gpu/share_probe.py --list                    # the configurations, without running them

``--copro``: artifacts with an (unmerged LoRA) coprocessor; ``--base``: the same base exported without one (on the
GPU machine: fp16, ``--max-seq 2304``, as benchmarks/gpu/issue14.sh exports /tmp/art14/fp16 and /tmp/art14/fp16base;
PYTHONPATH=/tmp/ort-gpu:/tmp/site). ``--provider cpu`` runs the same probes on ONNX Runtime's CPU provider, to test
the script where no GPU is (no device memory is read then). Results of the run on an H200:
docs/results/gpu15/ (share_probe.json, share_probe_extra.json, share_probe.log.gz).

Each configuration (``CONFIGS``; ``--only`` picks some by name) runs in a fresh process, since ONNX Runtime's arenas
and CUDA graphs are device-wide. The child makes the backend with ONNX Runtime logging at INFO and reads the device
memory in use (``torch.cuda.mem_get_info``, less what was in use when the child started, after torch's own CUDA
context) at each step: after the shared copies (``SharedWeights``, all made up front), after each session, before
and after the capture of the CUDA graphs, after one request (128-token prompt, 32 greedy tokens, the coprocessor
at the end of the prompt) and after a second. From ONNX Runtime's log the parent counts, per step: each arena's
growth ("Extending BFCArena for NAME" then "Extended allocation by", listed extension by extension), bytes reserved
outside an arena ("Reserving memory in BFCArena"), bytes a session plans for its initializers ("SessionStateInitializer
statically allocates"; onnxruntime-gpu 1.31.1 logs neither for CUDA initializers: it allocates them one by one from
the session's arena), the user-supplied initializers each session took ("Using user supplied initializer") or
refused ("Cannot use ..."), and initializers the optimizer dropped ("Removing initializer"). It prints a line per
configuration and a table, and writes all of it as JSON (after every row, so a run cut short keeps its rows).
Tokens are compared with the first row of the same artifacts (base, copro-own).

Knobs a configuration may set: ``share``; ``cuda_graphs`` and ``buckets`` (prefill widths captured);
``opt`` (graph optimization level: disable/basic/extended/all); ``provider`` (CUDA provider options for every
session, e.g. ``arena_extend_strategy``); ``config`` (session config entries, e.g.
``session.use_device_allocator_for_initializers``); ``mem_pattern`` (``enable_mem_pattern``); ``dump`` (write each
session's optimized graph and list its initializers that the exported graph does not have, with their bytes);
``shared_alloc`` ("pertensor": ``SharedWeights.ONE_BLOCK = False``, one ``OrtValue.ortvalue_from_numpy`` copy per
tensor from ONNX Runtime's Python CUDA arena, as before the fix; default: the one exact cudaMalloc block);
``env_arena`` (an ``OrtArenaCfg`` dict: one CUDA arena registered in ONNX Runtime's environment,
``create_and_register_allocator_v2``, that every session takes with ``session.use_env_allocators``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SAME = {"provider": {"arena_extend_strategy": "kSameAsRequested"}}  # each session's arena: extend by what is asked
NOGRAPHS = {"cuda_graphs": False, "buckets": []}
ENV_SAME = {"env_arena": {"arena_extend_strategy": 1}}  # one arena for both sessions, extended by what is asked
PER = {"shared_alloc": "pertensor"}  # the shared copies as before the fix: one Python-API OrtValue each
# name -> (artifacts "copro" | "base", knobs), in the order they run
CONFIGS = {
    "base": ("base", {}),
    "copro-own": ("copro", {"share": False}),
    "copro-shared-pertensor": ("copro", {"share": True, **PER}),
    "copro-shared": ("copro", {"share": True}),
    # 2. arena: extended by what is asked, not to the next power of two
    "base-same": ("base", dict(SAME)),
    "copro-own-same": ("copro", {"share": False, **SAME}),
    "copro-shared-pertensor-same": ("copro", {"share": True, **PER, **SAME}),
    "copro-shared-same": ("copro", {"share": True, **SAME}),
    # 3. activations: no CUDA graphs, no prompt buckets
    "base-nographs": ("base", dict(NOGRAPHS)),
    "copro-own-nographs": ("copro", {"share": False, **NOGRAPHS}),
    "copro-shared-pertensor-nographs": ("copro", {"share": True, **PER, **NOGRAPHS}),
    "copro-shared-nographs": ("copro", {"share": True, **NOGRAPHS}),
    # one arena registered in ONNX Runtime's environment for both sessions (session.use_env_allocators)
    "copro-shared-env": ("copro", {"share": True, "env_arena": {}}),
    "base-env-same": ("base", dict(ENV_SAME)),
    "copro-shared-env-same": ("copro", {"share": True, **ENV_SAME}),
    "copro-own-env-same": ("copro", {"share": False, **ENV_SAME}),
    # other session options of hypothesis 2
    "copro-shared-devinit": ("copro", {"share": True, "config": {"session.use_device_allocator_for_initializers": "1"}}),
    "copro-shared-pertensor-devinit": ("copro", {"share": True, **PER,
                                                 "config": {"session.use_device_allocator_for_initializers": "1"}}),
    "copro-shared-nomempattern": ("copro", {"share": True, "mem_pattern": False}),
    # 1. graph optimizer: fewer rewrites; the optimized graphs' initializers that the exported ones lack
    "copro-shared-opt-disable": ("copro", {"share": True, "opt": "disable"}),
    "copro-shared-opt-basic": ("copro", {"share": True, "opt": "basic"}),
    "copro-shared-dump": ("copro", {"share": True, "dump": True}),
    # run-to-run spread
    "base-again": ("base", {}),
    "copro-shared-again": ("copro", {"share": True}),
    "copro-own-again": ("copro", {"share": False}),
}
STEPS_RE = re.compile(r"^@@STEP (\S+)$")
PATTERNS = {
    "planned_init_bytes": re.compile(r"SessionStateInitializer statically allocates (\d+) bytes for (\S+)"),
    "reserved_bytes": re.compile(r"Reserving memory in BFCArena for (\S+) size: (\d+)"),
    "extending": re.compile(r"Extending BFCArena for (\S+)\. bin_num:\d+ \(requested\) num_bytes: (\d+)"),
    "extended_bytes": re.compile(r"Extended allocation by (\d+) bytes"),
    "arena_created": re.compile(r"Creating BFCArena for (\S+) with following configs: (.*)"),
    "user_init": re.compile(r"Using user supplied initializer with name \((.*)\)"),
    "user_init_refused": re.compile(r"Cannot use user supplied initializer with name: \((.*?)\)"),
    "removed_init": re.compile(r"Removing initializer '(.*)'\. It is no longer used by any node"),
}
KEEP_LOG = re.compile(r"@@STEP|BFCArena|Extended allocation|statically allocates|user supplied initializer|Removing initializer|"
                      r"cudaMalloc|out of memory|Error|error")


# ---------------------------------------------------------------------------------------------------------- child
def device_used(provider: str) -> int | None:
    if provider != "cuda":
        return None
    import torch

    free, total = torch.cuda.mem_get_info()
    return total - free


def step(name: str) -> None:
    print(f"@@STEP {name}", file=sys.stderr, flush=True)


def child(artifacts: Path, knobs: dict, provider: str, dump_dir: Path) -> dict:
    import numpy as np

    before = device_used(provider)  # torch's CUDA context exists from here on
    import onnxruntime as ort

    ort.set_default_logger_severity(1)  # INFO: arena growth and initializer placement (default logger)
    from latentcache.contract.manifest import load_manifest
    from latentcache.runtime.backends import onnxruntime as backends
    from latentcache.runtime.backends import shared_weights as sw
    from latentcache.runtime.generator import EndOfPrompt, Generator
    from latentcache.runtime.tokenizer import Tokenizer
    from decode_bench import prompt_ids

    marks: list[tuple[str, float | None]] = []

    def mark(name: str) -> None:
        used = device_used(provider)
        marks.append((name, None if used is None else round((used - before) / 2**20, 1)))
        step(name)

    levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    base_cls = backends.OnnxRuntimeCudaBackend if provider == "cuda" else backends.OnnxRuntimeBackend
    dumps: dict[str, dict] = {}

    class Probe(base_cls):
        def _session_options(self, threads, int8_activations):
            options = super()._session_options(threads, int8_activations)
            options.log_severity_level = 1
            if knobs.get("opt"):
                options.graph_optimization_level = levels[knobs["opt"]]
            if knobs.get("mem_pattern") is False:
                options.enable_mem_pattern = False
            for key, value in knobs.get("config", {}).items():
                options.add_session_config_entry(key, value)
            if knobs.get("env_arena") is not None:
                options.add_session_config_entry("session.use_env_allocators", "1")
            return options

        def provider_options(self, graph):
            return {**super().provider_options(graph), **knobs.get("provider", {})}

        def _session(self, graph, spec, options):
            if knobs.get("dump"):
                options.optimized_model_filepath = str(dump_dir / f"{graph}.onnx")
                options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                                 f"{graph}.bin")
                options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                                 "1024")
            step(f"session-{graph}")
            session = super()._session(graph, spec, options)
            mark(f"after-session-{graph}")
            if knobs.get("dump"):
                dumps[graph] = new_initializers(self.artifacts / spec.file, dump_dir / f"{graph}.onnx")
            return session

        def _capture(self):
            mark("before-capture")
            for run in self.fixed.values():
                step(f"capture-{run.graph}-{run.query}")
                for _ in range(2):
                    run.run({})
            self.reset()
            mark("after-capture")

    if knobs.get("shared_alloc") == "pertensor":
        sw.SharedWeights.ONE_BLOCK = False  # the code before the fix: one ONNX Runtime copy per tensor
    original_init = sw.SharedWeights.__init__

    def eager_init(self, ort_module, artifacts_dir, manifest, graphs, device):
        step("shared-copies")
        original_init(self, ort_module, artifacts_dir, manifest, graphs, device)
        for entries in self.entries.values():
            for entry in entries:
                self._value(entry)
        mark("after-shared-copies")

    sw.SharedWeights.__init__ = eager_init
    if knobs.get("env_arena") is not None:  # before any session: they take it at creation
        arena = ort.OrtArenaCfg({key: int(value) for key, value in knobs["env_arena"].items()})
        if provider == "cuda":
            info = ort.OrtMemoryInfo("Cuda", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator_v2("CUDAExecutionProvider", info, {}, arena)
        else:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, arena)
    manifest = load_manifest(artifacts)
    mark("start")
    kwargs = {"share_weights": bool(knobs.get("share"))}
    if provider == "cuda":
        kwargs["cuda_graphs"] = knobs.get("cuda_graphs", True)
        if knobs.get("buckets") is not None:
            kwargs["prefill_buckets"] = tuple(knobs["buckets"])
    else:
        kwargs.update(threads=2, fixed_shapes=bool(knobs.get("buckets", True)),
                      prefill_buckets=tuple(knobs.get("buckets") or (16, 32)))
    tick = time.perf_counter()
    backend = Probe(artifacts, manifest, **kwargs)
    made_s = time.perf_counter() - tick
    mark("loaded")
    tokenizer = Tokenizer(artifacts, manifest)
    ids = prompt_ids(lambda text: tokenizer.encode(text, chat=False), 128)
    policy = EndOfPrompt() if manifest.num_latents else None
    generator = Generator(backend)
    step("request-1")
    tokens = [int(t[0]) for t in generator.generate([ids], 32, policy=policy)]
    mark("after-request-1")
    step("request-2")
    tokens2 = [int(t[0]) for t in generator.generate([ids], 32, policy=policy)]
    mark("after-request-2")
    del np
    return {"marks": marks, "tokens": tokens, "tokens_repeat_identical": tokens == tokens2, "made_s": round(made_s, 2),
            "describe": backend.describe(), "dumps": dumps}


def new_initializers(exported: Path, optimized: Path) -> dict:
    """The optimized graph's initializers that the exported graph lacks (name -> bytes), and how many of the
    exported graph's initializers the optimized one dropped."""
    import onnx
    from onnx import helper

    def sizes(path):
        graph = onnx.load(str(path), load_external_data=False).graph
        out = {}
        for init in graph.initializer:
            count = 1
            for d in init.dims:
                count *= d
            out[init.name] = count * helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        return out

    before, after = sizes(exported), sizes(optimized)
    new = {name: size for name, size in after.items() if name not in before}
    biggest = sorted(new.items(), key=lambda kv: -kv[1])[:10]
    return {"exported": len(before), "optimized": len(after), "dropped": len(set(before) - set(after)),
            "new": len(new), "new_mib": round(sum(new.values()) / 2**20, 2), "biggest_new": biggest}


# --------------------------------------------------------------------------------------------------------- parent
def parse_log(text: str) -> dict:
    """Per step of the child: bytes and counts from ONNX Runtime's INFO log."""
    steps: dict[str, dict] = {}
    current = steps.setdefault("(before)", {})
    extending = None
    for line in text.splitlines():
        m = STEPS_RE.match(line.strip())
        if m:
            current = steps.setdefault(m.group(1), {})
            continue
        for key, pattern in PATTERNS.items():
            found = pattern.search(line)
            if not found:
                continue
            if key == "planned_init_bytes":
                current[f"planned_init_mib:{found.group(2)}"] = round(
                    current.get(f"planned_init_mib:{found.group(2)}", 0) + int(found.group(1)) / 2**20, 2)
            elif key == "reserved_bytes":
                k = f"reserved_mib:{found.group(1)}"
                current[k] = round(current.get(k, 0) + int(found.group(2)) / 2**20, 2)
            elif key == "extending":
                extending = found.group(1)
            elif key == "extended_bytes":
                k = f"arena_growth_mib:{extending}"
                current[k] = round(current.get(k, 0) + int(found.group(1)) / 2**20, 2)
                current.setdefault(f"arena_extensions:{extending}", []).append(round(int(found.group(1)) / 2**20, 2))
            elif key == "arena_created":
                current.setdefault("arenas_created", []).append(found.group(1))
                current["arena_config"] = found.group(2)
            elif key == "user_init":
                current["user_initializers_used"] = current.get("user_initializers_used", 0) + 1
            elif key == "removed_init":
                current["initializers_removed"] = current.get("initializers_removed", 0) + 1
                current.setdefault("removed_examples", [])
                if len(current["removed_examples"]) < 5:
                    current["removed_examples"].append(found.group(1))
            elif key == "user_init_refused":
                current["user_initializers_refused"] = current.get("user_initializers_refused", 0) + 1
    return {name: values for name, values in steps.items() if values}


def run_one(name: str, artifacts: Path, knobs: dict, provider: str, log_file) -> dict:
    dump_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"share_probe_{name}"
    dump_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    tick = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(
        {"artifacts": str(artifacts), "knobs": knobs, "provider": provider, "dump_dir": str(dump_dir)})],
        capture_output=True, text=True, env=env)
    wall = round(time.perf_counter() - tick, 1)
    if log_file is not None:
        log_file.write(f"===== {name} (exit {out.returncode}, {wall} s)\n")
        log_file.writelines(line[:400] + "\n" for line in out.stderr.splitlines() if KEEP_LOG.search(line))
        log_file.flush()
    row = {"name": name, "artifacts": str(artifacts), "knobs": knobs, "exit": out.returncode, "wall_s": wall}
    if out.returncode:
        row["error"] = out.stderr[-2000:]
        return row
    row.update(json.loads(out.stdout.strip().splitlines()[-1]))
    row["log"] = parse_log(out.stderr)
    return row


def summary_line(row: dict) -> str:
    if row["exit"]:
        return f"{row['name']:<34} FAILED: {row['error'][-300:]}"
    marks, log = dict(row["marks"]), row["log"]

    def total(prefix, steps):
        return sum(v for name, s in log.items() if any(name.startswith(p) for p in steps)
                   for k, v in s.items() if k.startswith(prefix) and isinstance(v, (int, float)))

    def f(value):
        return "      -" if value is None else f"{value:7.1f}"

    used = total("user_initializers_used", ("",))
    return (f"{row['name']:<34} MiB: copies {f(marks.get('after-shared-copies'))} prefill "
            f"{f(marks.get('after-session-prefill'))} copro {f(marks.get('after-session-coprocessor'))} "
            f"pre-capture {f(marks.get('before-capture'))} captured {f(marks.get('after-capture'))} "
            f"req1 {f(marks.get('after-request-1'))} req2 {f(marks.get('after-request-2'))} | reserved "
            f"{total('reserved_mib:Cuda', ('session-',)):.1f} arena growth: copies "
            f"{total('arena_growth_mib:Cuda', ('shared-copies',)):.0f} sessions "
            f"{total('arena_growth_mib:Cuda', ('session-',)):.0f} buffers "
            f"{total('arena_growth_mib:Cuda', ('after-session-',)):.0f} capture "
            f"{total('arena_growth_mib:Cuda', ('capture-', 'before-capture')):.0f} requests "
            f"{total('arena_growth_mib:Cuda', ('request-', 'loaded', 'after-request')):.0f} | user inits {used} "
            f"| {row['made_s']} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copro", type=Path)
    parser.add_argument("--base", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--log", type=Path, help="ONNX Runtime's relevant log lines of every child (optional)")
    parser.add_argument("--only", nargs="*", help="configuration names (default: all)")
    parser.add_argument("--provider", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--list", action="store_true", help="print the configurations and exit")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        result = child(Path(spec["artifacts"]), spec["knobs"], spec["provider"], Path(spec["dump_dir"]))
        print(json.dumps(result))
        return
    names = args.only or list(CONFIGS)
    if args.list:
        for name in names:
            print(name, CONFIGS[name])
        return
    rows = []
    log_file = args.log.open("w") if args.log else None
    for name in names:
        which, knobs = CONFIGS[name]
        artifacts = args.copro if which == "copro" else args.base
        if artifacts is None:
            print(f"{name}: skipped (no --{which})", flush=True)
            continue
        rows.append(run_one(name, artifacts, knobs, args.provider, log_file))
        print(summary_line(rows[-1]), flush=True)
        if args.json:  # after every row: a run cut short keeps what it measured
            args.json.write_text(json.dumps({"provider": args.provider, "rows": rows}, indent=1) + "\n")
    ok = {row["name"]: row for row in rows if not row["exit"]}
    base_tokens = {}
    for row in ok.values():
        base_tokens.setdefault(row["artifacts"], row["tokens"])
    table = []
    for row in ok.values():
        total = dict(row["marks"]).get("after-request-2")
        table.append({"name": row["name"], "mib": total,
                      "tokens_as_first_row_of_these_artifacts": row["tokens"] == base_tokens[row["artifacts"]]})
    print(json.dumps(table, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"provider": args.provider, "rows": rows, "table": table}, indent=1) + "\n")


if __name__ == "__main__":
    main()
