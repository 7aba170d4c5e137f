"""Issue 13, goal 1: what an *untrained* coprocessor does to the frozen base, per augmentation variant.

    python benchmarks/step0.py --base "$(latentcache models fetch smollm2-135m-instruct)" --json step0.json

For each variant (the paper's literal one, ``refeed``, and ``gated`` at several initial gate biases) a fresh
coprocessor (a copy of the base, soft tokens from random vocabulary embeddings: exactly what training starts
from) is evaluated like ``latentcache eval``'s Table 1 on a slice of held-out Gutenberg books and WikiText-2 test:
the relative perplexity change by position against the base on the same targets, with 95 % paired intervals.
Needs the project's data (``LATENTCACHE_DATA`` or ../shared). Prints a table and writes one JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from latentcache.model import load_decoder
from latentcache.model.coprocessor import Coprocessor, CoprocessorConfig
from latentcache.train.data import leading_batches
from latentcache.train.evaluate import PerplexityConfig, evaluate_perplexity
from latentcache.train.run import _eos_id, _validation_sets


def variants(gate_inits: list[float], controls: bool = True) -> dict[str, dict]:
    runs = {"paper": {"variant": "paper"}, "refeed": {"variant": "refeed"}} if controls else {}
    runs.update({f"gated {g:g}": {"variant": "gated", "gate_init": g} for g in gate_inits})
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--num-latents", type=int, default=16)
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--points", type=int, default=16)
    parser.add_argument("--gate-init", type=float, action="append", default=None)
    parser.add_argument("--gated-only", action="store_true", help="Skip the paper and refeed variants.")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    base = load_decoder(args.base)
    eos = _eos_id(base.config)
    sets = _validation_sets(Path(args.base), (), args.seq_len, eos)
    report = {"base": args.base, "num_latents": args.num_latents, "sequences": args.sequences,
              "seq_len": args.seq_len, "points": args.points, "runs": {}}
    for name, options in variants(args.gate_init or [-2.0, -4.0, -6.0, -8.0], not args.gated_only).items():
        coprocessor = Coprocessor(base, CoprocessorConfig(args.num_latents, **options), seed=0).eval()
        report["runs"][name] = {}
        for set_name, dataset in sets.items():
            started = time.perf_counter()
            rows = leading_batches(dataset, args.sequences, 2)
            result = evaluate_perplexity(base, coprocessor, map(torch.from_numpy, rows),
                                         PerplexityConfig(points=args.points, eos_id=eos))
            report["runs"][name][set_name] = result.to_dict()
            cells = "  ".join(f"+{r.position}: {r.relative_change_pct:+.3f}%" for r in result.rows)
            print(f"{name:>10} {set_name:>18} {cells}  ({time.perf_counter() - started:.0f} s)", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
