"""`latentcache demo`: the README's main job on the embedded default, end to end on ONNX Runtime CPU.

Fetches SmolLM2-135M-Instruct, exports it with the embedded default coprocessor (once; cached under
``$LATENTCACHE_HOME/artifacts``), answers one prompt with and without the coprocessor, and prints both
answers and a latency table. Needs the ``[export]`` extra for the one-time export.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from latentcache.errors import LatentcacheError

DEFAULT_COPROCESSOR = Path(__file__).parent / "defaults" / "smollm2-135m-instruct-lora16"
BASE_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class DemoResult:
    answers: dict[str, str]  # "base" / "augmented" -> text
    latency: dict[str, dict[str, float]]  # same keys -> ttft_ms, coprocessor_absorb_ms, decode_ms, tokens_per_s
    artifacts: Path
    backend: str


def artifacts_dir() -> Path:
    home = Path(os.environ.get("LATENTCACHE_HOME") or Path.home() / ".cache" / "latentcache")
    return home / "artifacts" / DEFAULT_COPROCESSOR.name


def ensure_artifacts(progress) -> Path:
    """The exported default; re-exported when missing or made from another default checkpoint."""
    from latentcache.contract.files import sha256_of
    from latentcache.registry import fetch
    from latentcache.contract.manifest import ManifestError, load_manifest

    target = artifacts_dir()
    weights_sha = sha256_of(DEFAULT_COPROCESSOR / "coprocessor.safetensors")
    try:
        if load_manifest(target, verify=False).coprocessor.get("weights_sha256") == weights_sha:
            return target
    except ManifestError:
        pass
    try:
        from latentcache.export.onnx_export import ExportConfig, export_artifacts
    except ImportError as exc:
        raise LatentcacheError(f"the one-time export needs the export extra ({exc}): pip install 'latentcache[export]'")
    base = fetch(BASE_MODEL)
    progress(f"exporting {BASE_MODEL} with the default coprocessor to {target} (once)")
    return export_artifacts(ExportConfig(base=base, out=target, coprocessor=DEFAULT_COPROCESSOR, max_seq=1024,
                                         force=True), progress=progress)


def run_demo(prompt: str, max_new_tokens: int, backend: str, progress) -> DemoResult:
    from latentcache.runtime import Pipeline, RequestStats
    from latentcache.runtime.bench import summarize

    artifacts = ensure_artifacts(progress)
    pipeline = Pipeline(artifacts, backend)
    answers, latency = {}, {}
    for name, coprocessor in (("base", False), ("augmented", True)):
        stats = RequestStats()
        answers[name] = "".join(pipeline.stream(prompt, max_new_tokens, policy=pipeline.policy(coprocessor),
                                                stats=stats))
        summary = summarize([stats], batch=1)
        latency[name] = {"ttft_ms": summary["ttft_ms"], "coprocessor_absorb_ms": summary["coprocessor_absorb_ms"] or 0.0,
                         "decode_ms": summary["decode_ms_median"],
                         "tokens_per_s": summary["decode_tokens_per_s"] or float("nan")}
    return DemoResult(answers, latency, artifacts, pipeline.backend.describe())


def format_demo(result: DemoResult) -> str:
    metadata = json.loads((DEFAULT_COPROCESSOR / "README.json").read_text()) if (
        DEFAULT_COPROCESSOR / "README.json").is_file() else {}
    lines = [f"backend: {result.backend}   artifacts: {result.artifacts}"]
    if metadata.get("summary"):
        lines.append(f"coprocessor: {metadata['summary']}")
    for name in ("base", "augmented"):
        lines += ["", f"[{name}] {result.answers[name].strip()}"]
    lines += ["", f"{'':12s}{'first token':>14s}{'coproc+absorb':>15s}{'per token':>12s}{'tokens/s':>10s}"]
    for name, row in result.latency.items():
        lines.append(f"{name:12s}{row['ttft_ms']:11.1f} ms{row['coprocessor_absorb_ms']:12.1f} ms"
                     f"{row['decode_ms']:9.1f} ms{row['tokens_per_s']:10.1f}")
    return "\n".join(lines)
