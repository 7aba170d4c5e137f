"""`latentcache bench`: latency of one artifacts directory on one backend, warm-up excluded, repeated.

Reports time to first token (prefill [+ coprocessor + absorb] + first sample), the coprocessor + absorb
time, per-token decode median and p90, decode tokens/s, peak RSS and (CUDA) GPU memory, with versions
and the commit. Prompts are ``prompt_tokens`` ids of a fixed English passage (no chat template), so runs
are comparable across backends and machines.
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from latentcache.contract.files import write_atomically
from latentcache.errors import LatentcacheError
from latentcache.progress import Steps
from latentcache.runtime.generator import RequestStats
from latentcache.runtime.pipeline import Pipeline

PASSAGE = (
    "The river ran high that spring, and the mill at the bend of the valley worked day and night. "
    "Old Thomas kept the ledgers by lamplight, counting sacks of grain and the coins that came for them, "
    "while his daughter walked the bank each morning to see how far the water had climbed. "
)


@dataclass(frozen=True)
class BenchConfig:
    prompt_tokens: int = 128
    new_tokens: int = 128
    repetitions: int = 5
    warmup: int = 1
    coprocessor: bool = True
    policy: str = "end-of-prompt"

    def __post_init__(self) -> None:
        for name in ("prompt_tokens", "new_tokens", "repetitions"):
            if getattr(self, name) < 1:
                raise LatentcacheError(f"--{name.replace('_', '-')} must be at least 1")


def prompt_ids(pipeline: Pipeline, count: int) -> list[int]:
    ids: list[int] = []
    while len(ids) < count:
        ids += pipeline.tokenizer.fast.encode(PASSAGE, add_special_tokens=False).ids
    return ids[:count]


def one_request(pipeline: Pipeline, ids: list[int], config: BenchConfig) -> RequestStats:
    stats = RequestStats()
    policy = pipeline.policy(config.coprocessor, config.policy)
    # No stop ids: every run decodes exactly new_tokens, so runs are comparable.
    for _ in pipeline.generator.generate([ids] * pipeline.manifest.kv.batch, config.new_tokens, policy=policy,
                                         stats=stats):
        pass
    return stats


def check_room(pipeline: Pipeline, config: BenchConfig) -> None:
    """Every run decodes exactly --new-tokens (never clamped): refuse at once, in bench's own flags, what the
    kv-cache cannot hold."""
    capacity, policy = pipeline.generator.budget, pipeline.policy(config.coprocessor, config.policy)
    most = capacity.most(config.prompt_tokens, policy)
    if most < config.new_tokens:
        latents = capacity.latent_slots(config.new_tokens, policy)
        plus, fix = (f" + {latents} latent slots", ", pass --no-coprocessor") if latents else ("", "")
        raise LatentcacheError(f"--prompt-tokens {config.prompt_tokens}{plus} leave room for {most} tokens in the "
                               f"kv-cache's {capacity.slots} slots, not --new-tokens {config.new_tokens}: lower "
                               f"--new-tokens or --prompt-tokens{fix}, or re-export with a larger --max-seq")


def summarize(runs: list[RequestStats], batch: int) -> dict:
    steps = [s for run in runs for s in run.step_s]
    augment = [sum(run.augment_s) for run in runs if run.augment_s]
    median_step = statistics.median(steps) if steps else float("nan")
    return {
        "ttft_ms": 1000 * statistics.median(r.first_token_s for r in runs),
        "prefill_ms": 1000 * statistics.median(r.prefill_s for r in runs),
        "coprocessor_absorb_ms": 1000 * statistics.median(augment) if augment else None,
        "decode_ms_median": 1000 * median_step,
        "decode_ms_p90": 1000 * float(np.percentile(steps, 90)) if steps else None,
        "decode_tokens_per_s": batch / median_step if steps else None,
        "runs": len(runs),
    }


def environment(pipeline: Pipeline) -> dict:
    info = {"backend": pipeline.backend.describe(), "machine": platform.machine(), "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(), "tool_versions": pipeline.manifest.tool_versions}
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                        cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        info["commit"] = None
    return info


def run_bench(artifacts: Path, backend: str, config: BenchConfig, json_out: Path | None,
              threads: int | None = None, progress: Callable[[str], None] | None = None) -> dict:
    """Warm-up and timed requests (a line per request on stderr, or to ``progress``); the report as a dict."""
    steps = Steps(progress)
    pipeline = Pipeline(artifacts, backend, threads)
    check_room(pipeline, config)  # before any line: a refused bench prints only its one-line error
    ids = prompt_ids(pipeline, config.prompt_tokens)
    for i in range(config.warmup):
        with steps.step(f"warm-up request {i + 1} of {config.warmup}"):
            one_request(pipeline, ids, config)
    runs = []
    for i in range(config.repetitions):
        with steps.step(f"request {i + 1} of {config.repetitions}"):
            runs.append(one_request(pipeline, ids, config))
    report = {"config": asdict(config), "artifacts": str(artifacts), "num_latents": pipeline.manifest.num_latents,
              "dtype": pipeline.manifest.dtype, "batch": pipeline.manifest.kv.batch,
              **summarize(runs, pipeline.manifest.kv.batch),
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "gpu_memory_mib": gpu_memory_mib(), "environment": environment(pipeline)}
    pipeline.close()
    if json_out is not None:
        write_atomically(json_out, json.dumps(report, indent=2) + "\n")
    return report


def gpu_memory_mib() -> float | None:
    """Memory in use on GPU 0 as nvidia-smi reports it (None without a GPU)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, check=True, timeout=10).stdout
        return float(out.strip().splitlines()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def format_report(report: dict) -> str:
    cp = report["coprocessor_absorb_ms"]
    return "\n".join([
        (f"backend {report['environment']['backend']}  prompt {report['config']['prompt_tokens']}  "
         f"new {report['config']['new_tokens']}  latents {report['num_latents'] if cp is not None else 0}"),
        f"time to first token   {report['ttft_ms']:8.1f} ms",
        f"coprocessor + absorb  {cp:8.1f} ms" if cp is not None else "coprocessor + absorb       off",
        f"decode per token      {report['decode_ms_median']:8.2f} ms median, {report['decode_ms_p90']:.2f} ms p90",
        f"decode throughput     {report['decode_tokens_per_s']:8.1f} tokens/s",
        f"peak RSS              {report['peak_rss_mib']:8.0f} MiB",
    ])
