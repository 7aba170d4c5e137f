"""Issue 15, footprint: disk and resident memory of artifacts per weight form, with and without the coprocessor.

    python benchmarks/footprint.py --artifacts fp32=DIR --artifacts fp32+cop=DIR ... [--threads 2]
        [--native build/native] --json OUT

For each folder: the bytes on disk (every file), and the peak resident memory (ru_maxrss) of a fresh process that
loads it on ONNX Runtime CPU, prefills a 128-token prompt, runs the coprocessor when the folder has one, and
decodes 16 tokens: what a user's process holds. One process per folder, one after another. With ``--native``, the
native runtime (``latentcache-run --bench``) does the same, once with the sessions sharing weights.bin's tensors
(its default) and once with ``--no-share-weights``, and reports the resident memory after the request beside the
peak.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = """
import resource, sys
from pathlib import Path
from latentcache.contract.manifest import load_manifest
from latentcache.runtime.backends.onnxruntime import OnnxRuntimeBackend
from latentcache.runtime.generator import EndOfPrompt, Generator
artifacts = Path(sys.argv[1])
manifest = load_manifest(artifacts)
generator = Generator(OnnxRuntimeBackend(artifacts, manifest, threads=int(sys.argv[2])))
policy = EndOfPrompt() if manifest.num_latents else None
list(generator.generate([[(7 * i) % 1000 + 10 for i in range(128)]], 16, policy=policy))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def measure(artifacts: Path, threads: int) -> dict:
    from latentcache.contract.manifest import load_manifest

    manifest = load_manifest(artifacts)
    done = subprocess.run([sys.executable, "-c", CHILD, str(artifacts), str(threads)], check=True,
                          capture_output=True, text=True)
    return {"weights": manifest.weight_format, "coprocessor": bool(manifest.num_latents),
            "disk_mib": sum(f.stat().st_size for f in artifacts.iterdir() if f.is_file()) / 2**20,
            "peak_rss_mib": int(done.stdout.split()[-1]) / 2**10}  # ru_maxrss is in KiB on Linux


NATIVE_PROMPT = "the quick brown fox jumps over the lazy dog " * 14  # about 128 tokens of SmolLM2's tokenizer


def measure_native(build: Path, artifacts: Path, threads: int) -> dict:
    rows = {}
    for label, flags in (("shared", ()), ("per_session", ("--no-share-weights",))):
        done = subprocess.run([str(build / "latentcache-run"), str(artifacts), NATIVE_PROMPT, "--raw", "--bench",
                               "--max-new-tokens", "16", "--threads", str(threads), *flags],
                              check=True, capture_output=True, text=True)
        report = json.loads(done.stdout)
        rows[label] = {"peak_rss_mib": report["peak_rss_mb"], "rss_mib": report["rss_mb"],
                       "prompt_tokens": report["prompt_tokens"], "backend": report["backend"]}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", action="append", required=True, help="LABEL=DIR")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--native", type=Path, help="a native runtime build folder (latentcache-run) to measure too")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    report = {}
    for label, path in (a.split("=", 1) for a in args.artifacts):
        report[label] = measure(Path(path), args.threads)
        row = report[label]
        print(f"{label:>12}  {row['weights']:>5}  coprocessor {'yes' if row['coprocessor'] else 'no ':3}  "
              f"disk {row['disk_mib']:7.1f} MiB  peak RSS {row['peak_rss_mib']:7.1f} MiB", flush=True)
        if args.native:
            row["native"] = measure_native(args.native, Path(path), args.threads)
            for how, native in row["native"].items():
                print(f"{'':>12}  native, weights {how:<11}  peak RSS {native['peak_rss_mib']:7.1f} MiB  "
                      f"after the request {native['rss_mib']:7.1f} MiB", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
