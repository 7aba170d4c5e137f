"""Benchmark: one block-masked pass over N_P augmentation points against the per-point loop.

    python -m latentcache.train.bench --base DIR [--seq-len 1024 --points 64 --latents 16 --ahead 16]
        [--batch 1] [--find-max-batch] --json OUT

Times full training steps (forward, backward, optimizer) after a warm-up, on the GPU when there is one
(bf16 autocast, base weights in bf16), and prints and writes tokens/s, peak memory and the speed-up.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from latentcache.contract.files import write_atomically
from latentcache.model import load_decoder
from latentcache.model.coprocessor import Coprocessor, CoprocessorConfig
from latentcache.model.layout import sample_points
from latentcache.train.objective import (
    augmented_predictions,
    base_cache_for,
    predict_groups,
)


def loop_loss(base, coprocessor, tokens, points, ahead):
    """The per-point reference: a cache cropped to x[..p], one coprocessor and one decoder pass per point."""
    losses = []
    for p in points[0].tolist():
        cache = base_cache_for(base, tokens[:, : p + 1])
        single = torch.full((tokens.shape[0], 1), p, device=tokens.device)
        latents = coprocessor(cache, single)
        losses.append(predict_groups(base, latents, cache, tokens, single, ahead).loss())
    return torch.stack(losses).mean()


def one_pass_loss(base, coprocessor, tokens, points, ahead):
    return augmented_predictions(base, coprocessor, tokens, points, ahead).loss()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step_fn, device, repeats: int) -> float:
    step_fn()  # warm-up (allocator, kernels)
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        step_fn()
    sync(device)
    return (time.perf_counter() - start) / repeats


def make_step(base, coprocessor, optimizer, loss_fn, tokens, points, ahead, autocast):
    def step():
        with autocast():
            loss = loss_fn(base, coprocessor, tokens, points, ahead)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def measure(base, coprocessor, args, batch, loss_fn, repeats, device, autocast) -> dict:
    tokens = torch.randint(0, base.config.vocab_size, (batch, args.seq_len), device=device)
    row_points = sample_points(1, args.seq_len, args.points, args.ahead, torch.Generator().manual_seed(0))
    points = row_points.expand(batch, -1).to(device)
    optimizer = torch.optim.AdamW(coprocessor.trainable_parameters().values(), lr=1e-5)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = time_steps(make_step(base, coprocessor, optimizer, loss_fn, tokens, points, args.ahead, autocast),
                         device, repeats)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"batch": batch, "step_s": seconds, "tokens_per_s": batch * args.seq_len / seconds, "peak_gib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--points", type=int, default=64)
    parser.add_argument("--latents", "--num-latents", dest="num_latents", type=int, default=16)
    parser.add_argument("--ahead", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--find-max-batch", action="store_true", help="double the one-pass batch until OOM")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else nullcontext
    base = load_decoder(args.base, dtype=dtype, device=device)
    coprocessor = Coprocessor(base, CoprocessorConfig(args.num_latents)).to(device).float()

    one_pass = measure(base, coprocessor, args, args.batch, one_pass_loss, args.repeats, device, autocast)
    loop = measure(base, coprocessor, args, args.batch, loop_loss, 1, device, autocast)
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "base": args.base, "seq_len": args.seq_len, "points": args.points,
        "num_latents": args.num_latents, "ahead": args.ahead, "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
        "one_pass": one_pass, "loop": loop, "speedup": loop["step_s"] / one_pass["step_s"],
    }
    if args.find_max_batch and device.type == "cuda":
        result["max_batch"] = find_max_batch(base, coprocessor, args, device, autocast)
    print(json.dumps(result, indent=2))
    write_atomically(Path(args.json), json.dumps(result, indent=2))


def find_max_batch(base, coprocessor, args, device, autocast) -> dict:
    batch, best = args.batch, None
    while batch <= 4096:
        try:
            best = measure(base, coprocessor, args, batch, one_pass_loss, 1, device, autocast)
        except torch.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
        batch *= 2
    return best or {}


if __name__ == "__main__":
    main()
