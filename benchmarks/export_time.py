"""Export time of SmolLM2-135M-Instruct with the embedded default coprocessor (all three graphs, fp32), with this
project's graph optimization and with the exporter's own (``torch.onnx.export(optimize=True)``), side by side.

    python benchmarks/export_time.py --base "$(latentcache models fetch smollm2-135m-instruct)" --json export_time.json

Each mode exports into a fresh temporary folder; the per-step lines go to stderr. The exporter's mode is what
``export_graph`` did before: ``onnxscript``'s ``optimize`` (all default rewrite rules matched together, twice).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from latentcache.demo import DEFAULT_COPROCESSOR
from latentcache.export import onnx_export
from latentcache.export.onnx_export import ExportConfig, export_artifacts


def exporter_optimize(model) -> None:
    from onnxscript._framework_apis.torch_2_8 import optimize

    optimize(model)


def timed_export(base: Path, out: Path, max_seq: int) -> float:
    start = time.perf_counter()
    export_artifacts(ExportConfig(base=base, out=out, coprocessor=DEFAULT_COPROCESSOR, max_seq=max_seq))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--max-seq", type=int, default=2048)
    parser.add_argument("--modes", default="ours,exporter")
    args = parser.parse_args()
    ours = onnx_export.optimize_graph
    report = {"cpus": len(os.sched_getaffinity(0)), "machine": platform.processor() or platform.machine(),
              "max_seq": args.max_seq, "seconds": {}}
    for mode in args.modes.split(","):
        onnx_export.optimize_graph = ours if mode == "ours" else exporter_optimize
        with tempfile.TemporaryDirectory() as scratch:
            seconds = timed_export(args.base, Path(scratch) / "art", args.max_seq)
        report["seconds"][mode] = round(seconds, 1)
        print(f"{mode}: {seconds:.1f} s", flush=True)
    onnx_export.optimize_graph = ours
    args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
