"""Tables and plots for docs/results.md from the experiment's results (benchmarks/gpu/experiment.py collect).

    python benchmarks/experiment_report.py RESULTS_DIR --out docs/results/experiment > /tmp/tables.md

RESULTS_DIR is the unpacked results.tar.gz: plan.json and one folder per run (metrics.jsonl, times.txt,
checkpoint/state.json, eval.json). Writes table1-<set>.png, validation.png and summary.json under --out and
prints the markdown. Every run was scored on the same targets (same data, seed and points), so their Table-1
columns share one baseline; markdown_table refuses runs that were not.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from latentcache.train.config import TrainConfig
from latentcache.train.evaluate import PerplexityResult, markdown_table, plot_relative_change



def label(config: dict) -> str:
    """``full N_L 16, lr 0.0003`` from the training config the checkpoint recorded."""
    kind = "pause" if config["pause"] else f"LoRA r{config['lora_rank']}" if config["lora_rank"] else "full"
    return f"{kind} N_L {config['num_latents']}, lr {config['lr']:g}"


def tokens_per_step(config: dict) -> int:
    return config["batch_size"] * config["grad_accum"] * config["seq_len"]


def read_run(folder: Path) -> dict:
    log = folder / "metrics.jsonl"  # absent when a run stopped before its first log line
    metrics = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    validations = [m for m in metrics if "val_loss" in m]
    times = dict(line.split() for line in (folder / "times.txt").read_text().splitlines() if line.strip())
    state = json.loads((folder / "checkpoint" / "state.json").read_text())
    config = TrainConfig.from_dict(state["train_config"]).to_dict()  # also reads configs saved before num_latents
    speeds = sorted(m["tokens_per_s"] for m in metrics if "tokens_per_s" in m)
    return {
        "config": config,
        "label": label(config),
        "steps": state["step"],
        "tokens": state["step"] * tokens_per_step(config),
        "train_s": int(times["train_end"]) - int(times["train_start"]),
        "eval_s": int(times["eval_end"]) - int(times["train_end"]) if "eval_end" in times else None,
        "tokens_per_s": speeds[len(speeds) // 2] if speeds else None,
        "validation": [{k: m[k] for k in ("step", "val_loss", "val_base_loss", "val_delta")} for m in validations],
        "eval": json.loads((folder / "eval.json").read_text()) if (folder / "eval.json").exists() else None,
    }


def runs_table(plan: dict, runs: dict) -> str:
    lines = ["| run | steps | tokens | train time | tokens/s | last val loss (base) |", "|---|---|---|---|---|---|"]
    for spec in plan["runs"]:
        run = runs[spec["name"]]
        last = run["validation"][-1] if run["validation"] else None
        val = f"{last['val_loss']:.4f} ({last['val_base_loss']:.4f}, {last['val_delta']:+.4f})" if last else "–"
        lines.append(f"| {run['label']} | {run['steps']} | {run['tokens'] / 1e6:.1f}M | {run['train_s'] / 60:.1f} min | "
                     f"{run['tokens_per_s'] or 0:,.0f} | {val} |")
    return "\n".join(lines) + "\n"


def perplexity_sets(plan: dict, runs: dict, shuffled: bool) -> dict[str, dict[str, PerplexityResult]]:
    sets: dict[str, dict[str, PerplexityResult]] = {}
    for spec in plan["runs"]:
        report = runs[spec["name"]]["eval"]
        if report is None:
            continue
        for set_name, results in report["perplexity"].items():
            for key, result in results.items():
                if key == "no-augmentation" or key.endswith("(shuffled latents)") != shuffled:
                    continue
                name = runs[spec["name"]]["label"] + (" (shuffled)" if shuffled else "")
                sets.setdefault(set_name, {})[name] = PerplexityResult.from_dict(result)
    return sets


def benchmarks_table(plan: dict, runs: dict) -> str:
    lines = ["| run | task | n | baseline | augmented | Δ (points) | gained / lost |", "|---|---|---|---|---|---|---|"]
    for spec in plan["runs"]:
        report = runs[spec["name"]]["eval"]
        for results in (report or {}).get("benchmarks", {}).values():
            for task, result in results.items():
                base, aug = result["baseline"]["accuracy"], result["augmented"]["accuracy"]
                gained, lost = result.get("flips", {}).get("accuracy", ["?", "?"])
                lines.append(f"| {runs[spec['name']]['label']} | {task} | {result['n']} | {100 * base:.2f} | {100 * aug:.2f} | "
                             f"{100 * (aug - base):+.2f} | {gained} / {lost} |")
    return "\n".join(lines) + "\n"


def plot_validation(plan: dict, runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for spec in plan["runs"]:
        points = runs[spec["name"]]["validation"]
        axes.plot([p["step"] for p in points], [100 * math.expm1(p["val_delta"]) for p in points], marker="o",
                  label=runs[spec["name"]]["label"])
    axes.axhline(0.0, color="grey", linewidth=0.8)
    shape = next(iter(runs.values()))["config"]
    axes.set_xlabel(f"step ({shape['batch_size'] * shape['grad_accum']} x {shape['seq_len']} tokens)")
    axes.set_ylabel("ahead-token perplexity vs frozen base (%)")
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _by_position(result: dict) -> dict[str, float]:
    return {str(row["position"]): round(row["relative_change_pct"], 4) for row in result["rows"]}


def default_readme(plan: dict, runs: dict, results: Path) -> dict:
    """README.json of the shipped default: where it came from, what it reached, and the slice the CPU re-runs."""
    spec = next(r for r in plan["runs"] if r["ship"])
    run, name = runs[spec["name"]], spec["name"]
    last = run["validation"][-1]
    table = {set_name: _by_position(results_[name]) for set_name, results_ in run["eval"]["perplexity"].items()}
    slice_report = json.loads((results / name / "slice.json").read_text())
    slice_args = dict(zip(plan["slice"].split()[0::2], plan["slice"].split()[1::2]))
    return {
        "summary": (f"{run['label']}: {run['steps']} steps, {run['tokens'] / 1e6:.1f}M Gutenberg tokens, "
                    f"{run['train_s'] / 60:.0f} min on one H200 shared with another run. Ahead-token validation "
                    f"loss {last['val_loss']:.4f} vs the frozen base's {last['val_base_loss']:.4f}; Table 1 at +1: "
                    + ", ".join(f"{k} {v['1']:+.1f}%" for k, v in table.items())
                    + ". The latents still cost the next token more than they give later: not yet a gain."),
        "base": "smollm2-135m-instruct",
        "latents": run["config"]["num_latents"],
        "lora_rank": run["config"]["lora_rank"],
        "lr": run["config"]["lr"],
        "steps": run["steps"],
        "tokens_seen": run["tokens"],
        "val_loss": last["val_loss"],
        "val_base_loss": last["val_base_loss"],
        "val_step": last["step"],  # the last in-training validation (the run stopped at `steps`)
        "table1_relative_change_pct": table,
        "table1_eval": plan["eval"],
        "benchmarks": {task: {k: r[k] for k in ("n", "baseline", "augmented", "flips")}
                       for results_ in run["eval"]["benchmarks"].values() for task, r in results_.items()},
        "weights": "fp16 copy of the fp32 checkpoint (pack_checkpoint; restored into fp32 parameters)",
        "slice": {
            "sequences": int(slice_args["--sequences"]), "batch_size": int(slice_args["--batch-size"]),
            "points": int(slice_args["--points"]),
            "relative_change_pct": {set_name: _by_position(results_[name])
                                    for set_name, results_ in slice_report["perplexity"].items()},
            "ci95_pct": {set_name: {str(row["position"]): [round(row["ci95_low_pct"], 2), round(row["ci95_high_pct"], 2)]
                                    for row in results_[name]["rows"]}
                         for set_name, results_ in slice_report["perplexity"].items()},
            "measured_on": "NVIDIA H200, fp32 weights (this packed file), latentcache eval --device auto",
            "command": f"latentcache eval --base SMOLLM2 --coprocessor <this folder> --json slice.json {plan['slice']}",
        },
        "command": f"benchmarks/gpu/experiment.py launch: {spec['command']}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--default-readme", type=Path, help="Also write the shipped run's README.json here.")
    args = parser.parse_args()
    plan = json.loads((args.results / "plan.json").read_text())
    plan["runs"] = [r for r in plan["runs"] if (args.results / r["name"] / "checkpoint" / "state.json").exists()]
    runs = {spec["name"]: read_run(args.results / spec["name"]) for spec in plan["runs"]}
    args.out.mkdir(parents=True, exist_ok=True)
    print("### Runs\n\n" + runs_table(plan, runs))
    for set_name, results in perplexity_sets(plan, runs, shuffled=False).items():
        print(f"### Table 1: {set_name}\n\n" + markdown_table(results))
        plot_relative_change(results, args.out / f"table1-{set_name}.png")
    for set_name, results in perplexity_sets(plan, runs, shuffled=True).items():
        print(f"### Shuffled-latents control: {set_name}\n\n" + markdown_table(results))
    print("### Benchmarks (coprocessor once at the end of the prompt)\n\n" + benchmarks_table(plan, runs))
    plot_validation(plan, runs, args.out / "validation.png")
    summary = {name: {k: v for k, v in run.items() if k not in ("eval", "config", "label")}
               for name, run in runs.items()}
    (args.out / "summary.json").write_text(json.dumps({"plan": plan, "runs": summary}, indent=2))
    if args.default_readme:
        args.default_readme.write_text(json.dumps(default_readme(plan, runs, args.results), indent=2) + "\n")


if __name__ == "__main__":
    main()
