"""Example 1: what the coprocessor costs.

Time to first token, coprocessor + absorb, decode speed and end-to-end latency, with and without the
coprocessor, for prompts of 64 / 256 / 1024 tokens and N_L of 8 / 16 / 32 latents.

Only the N_L of the given artifacts has trained weights (16 for the embedded default). The other N_L are
exported once with an *untrained* coprocessor of that size: latency depends on shapes, not on weights.
Exports are cached under $LATENTCACHE_HOME/artifacts (about 3 minutes each for SmolLM2 on 2 CPU cores).

    python examples/01_coprocessor_cost/run.py                     # the embedded default, ONNX Runtime CPU
    python examples/01_coprocessor_cost/run.py --backend onnxruntime-cuda --repetitions 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from latentcache.runtime import Pipeline, RequestStats, load_manifest
from latentcache.runtime.bench import environment, prompt_ids, summarize
from latentcache.contract.manifest import ManifestError

HERE = Path(__file__).resolve().parent


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, help="artifacts with a coprocessor (default: the embedded default)")
    parser.add_argument("--backend", default="onnxruntime-cpu")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: cores, at most 8)")
    parser.add_argument("--prompt-tokens", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--latents", type=int, nargs="+",
                        help="N_L values (default: half, equal to and twice the artifacts' N_L: 8 16 32)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens decoded per request")
    parser.add_argument("--repetitions", type=int, default=3, help="timed requests per point (plus one warm-up)")
    parser.add_argument("--cache", type=Path, help="where extra exports go (default: $LATENTCACHE_HOME/artifacts)")
    parser.add_argument("--json", type=Path, default=HERE / "result.json")
    parser.add_argument("--png", type=Path, default=HERE / "chart.png")
    parser.add_argument("--quick", action="store_true", help="CI size: prompts 8/16/32, 4 new tokens, 1 repetition")
    args = parser.parse_args(argv)
    if args.quick:
        args.prompt_tokens, args.new_tokens, args.repetitions = [8, 16, 32], 4, 1
    return args


# ---- artifacts for every N_L ------------------------------------------------------------------------------
def export_variant(given: Path, num_latents: int, max_seq: int, cache: Path) -> Path:
    """``given``'s base with a coprocessor of ``num_latents`` (the trained one if it has that N_L, else an
    untrained one) exported with a ``max_seq``-slot cache; cached, re-used when already there."""
    manifest = load_manifest(given)
    trained = manifest.num_latents == num_latents
    name = f"{given.name}-nl{num_latents}{'' if trained else '-untrained'}-seq{max_seq}"
    out = cache / name
    try:
        done = load_manifest(out, verify=False)
        same_weights = not trained or done.coprocessor.get("weights_sha256") == manifest.coprocessor.get(
            "weights_sha256")
        if done.num_latents == num_latents and done.kv.max_seq == max_seq and same_weights:
            return out
    except ManifestError:  # not exported yet: export below
        pass
    from latentcache.export.onnx_export import ExportConfig, export_artifacts

    base = Path(manifest.sources["base"])
    coprocessor = Path(manifest.sources["coprocessor"]) if trained else untrained_coprocessor(
        base, num_latents, manifest.coprocessor["config"].get("lora_rank", 0), cache / f"{name}-checkpoint")
    dtype = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[manifest.dtype]
    print(f"exporting {out} (once)", flush=True)
    return export_artifacts(ExportConfig(base=base, out=out, coprocessor=coprocessor, dtype=dtype, max_seq=max_seq,
                                         batch=manifest.kv.batch, kv_update=manifest.kv_update, force=True),
                            progress=lambda message: print("  " + message, flush=True))


def untrained_coprocessor(base: Path, num_latents: int, lora_rank: int, out: Path) -> Path:
    """A freshly initialised coprocessor checkpoint, as `latentcache train` would write at step 0."""
    from latentcache.model import load_decoder
    from latentcache.model.checkpoint import base_fingerprint, save_checkpoint
    from latentcache.model.coprocessor import Coprocessor, CoprocessorConfig

    config = CoprocessorConfig(num_latents=num_latents, lora_rank=lora_rank)
    coprocessor = Coprocessor(load_decoder(base), config, seed=0)
    save_checkpoint(out, coprocessor.trainable_parameters(), None,
                    {"step": 0, "train_config": {"seed": 0}, "coprocessor_config": vars(config),
                     "fingerprints": {"base": base_fingerprint(base)}, "metrics": {}})
    return out


# ---- measurement ------------------------------------------------------------------------------------------
def request(pipeline: Pipeline, ids: list[int], new_tokens: int, coprocessor: bool) -> tuple[RequestStats, float]:
    """One greedy request of exactly ``new_tokens`` tokens (no stop ids); returns its stats and wall time."""
    stats = RequestStats()
    start = time.perf_counter()
    for _ in pipeline.generator.generate([ids] * pipeline.manifest.kv.batch, new_tokens,
                                         policy=pipeline.policy(coprocessor), stats=stats):
        pass
    return stats, time.perf_counter() - start


def split_cost(pipeline: Pipeline, ids: list[int]) -> tuple[float, float]:
    """Coprocessor and absorb times (s) on their own, with the low-level Generator calls."""
    generator = pipeline.generator
    generator.prefill([ids] * pipeline.manifest.kv.batch)
    tick = time.perf_counter()
    latents = generator.coprocess()
    tock = time.perf_counter()
    generator.absorb(latents)
    return tock - tick, time.perf_counter() - tock


def main(argv=None) -> dict:
    args = parse_args(argv)
    from latentcache.demo import artifacts_dir, ensure_artifacts

    given = (args.artifacts or ensure_artifacts(print)).resolve()
    cache = args.cache or artifacts_dir().parent
    manifest = load_manifest(given)
    latents = args.latents or [max(1, manifest.num_latents // 2), manifest.num_latents, 2 * manifest.num_latents]
    needed = max(args.prompt_tokens) + max(latents) + args.new_tokens
    max_seq = manifest.kv.max_seq if manifest.kv.max_seq >= needed else 1 << (needed - 1).bit_length()
    variants = {n: given if n == manifest.num_latents and manifest.kv.max_seq >= needed
                else export_variant(given, n, max_seq, cache) for n in latents}
    pipelines = {n: Pipeline(path, args.backend, args.threads) for n, path in variants.items()}
    reference = pipelines[manifest.num_latents] if manifest.num_latents in pipelines else next(iter(pipelines.values()))

    rows = []
    for count in args.prompt_tokens:
        ids = prompt_ids(reference, count)
        off, on = [], {n: [] for n in latents}
        e2e_off, e2e_on, split = [], {n: [] for n in latents}, {n: [] for n in latents}
        for rep in range(args.repetitions + 1):  # rep 0 warms up; off and every N_L interleaved against drift
            stats, wall = request(reference, ids, args.new_tokens, False)
            if rep:
                off.append(stats)
                e2e_off.append(wall)
            for n, pipeline in pipelines.items():
                stats, wall = request(pipeline, ids, args.new_tokens, True)
                cost = split_cost(pipeline, ids)
                if rep:
                    on[n].append(stats)
                    e2e_on[n].append(wall)
                    split[n].append(cost)
        batch = reference.manifest.kv.batch
        rows.append({"prompt_tokens": count, "num_latents": 0, "coprocessor": False, **summarize(off, batch),
                     "end_to_end_ms": 1000 * statistics.median(e2e_off)})
        for n in latents:
            rows.append({"prompt_tokens": count, "num_latents": n, "coprocessor": True,
                         "trained": n == manifest.num_latents, **summarize(on[n], batch),
                         "coprocessor_ms": 1000 * statistics.median(c for c, _ in split[n]),
                         "absorb_ms": 1000 * statistics.median(a for _, a in split[n]),
                         "end_to_end_ms": 1000 * statistics.median(e2e_on[n])})
        print(f"prompt {count}: " + ", ".join(
            f"N_L {r['num_latents']} ttft {r['ttft_ms']:.1f} ms" for r in rows if r["prompt_tokens"] == count),
            flush=True)

    report = {"example": "01_coprocessor_cost", "artifacts": str(given), "backend": reference.backend.describe(),
              "config": {"prompt_tokens": args.prompt_tokens, "latents": latents, "new_tokens": args.new_tokens,
                         "repetitions": args.repetitions, "max_seq": max_seq, "quick": args.quick},
              "variants": {str(n): str(p) for n, p in variants.items()}, "rows": rows,
              "environment": environment(reference)}
    for pipeline in pipelines.values():
        pipeline.close()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.png)
    print(table(report))
    return report


def table(report: dict) -> str:
    lines = ["| prompt | N_L | time to first token | coprocessor + absorb (alone: coprocessor + absorb) | "
             "decode per token | tokens/s | end to end |",
             "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        cost = (f"{r['coprocessor_absorb_ms']:.1f} ms ({r['coprocessor_ms']:.0f} + {r['absorb_ms']:.0f})"
                if r["coprocessor"] else "–")
        lines.append(f"| {r['prompt_tokens']} | {r['num_latents'] or 'off'} | {r['ttft_ms']:.1f} ms | {cost} | "
                     f"{r['decode_ms_median']:.2f} ms | {r['decode_tokens_per_s']:.1f} | {r['end_to_end_ms']:.0f} ms |")
    return "\n".join(lines)


def plot(report: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, prompts = report["rows"], report["config"]["prompt_tokens"]
    series = [0] + report["config"]["latents"]
    colors = dict(zip(series, ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]))
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    panels = [("ttft_ms", "time to first token (ms)"),
              ("coprocessor_absorb_ms", "coprocessor + absorb (ms)"),
              ("decode_ms_median", "decode per token, median (ms)"),
              ("end_to_end_ms", f"end to end, {report['config']['new_tokens']} new tokens (ms)")]
    for ax, (key, title) in zip(axes.flat, panels):
        for n in series:
            values = [next(r[key] for r in rows if r["prompt_tokens"] == p and r["num_latents"] == n) for p in prompts]
            if any(v is None for v in values):  # no coprocessor: no coprocessor cost
                continue
            ax.plot(prompts, values, marker="o", color=colors[n], label="no coprocessor" if n == 0 else f"N_L = {n}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(prompts, [str(p) for p in prompts])
        ax.set_xlabel("prompt tokens")
        ax.set_ylim(bottom=0)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0, 0].legend()
    fig.suptitle(f"Coprocessor cost: {Path(report['artifacts']).name}, {report['backend']}")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
