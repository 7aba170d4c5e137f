"""Benchmark: training throughput of the one block-masked pass, per attention kernel and batch, side by side.

    python -m latentcache.train.bench --base DIR [--seq-len 1024 --points 64 --latents 16 --ahead 16]
        [--variant gated] [--kernels sdpa,flex] [--batches 8,32] [--loop] [--find-max-batch] --json OUT

Times full training steps (forward, backward, fused AdamW on CUDA) after a warm-up, on the GPU when there is one
(bf16 autocast, base weights in bf16), for every kernel x batch in one run, and prints and writes tokens/s and
peak memory. ``--loop`` adds the per-point loop at the first batch (slow); on CUDA the kernels' losses and
gradients are compared on one batch (``kernel_check``), so a faster kernel that changed the loss is caught.
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
        losses.append(predict_groups(base, latents, cache, tokens, single, ahead, None, coprocessor.variant,
                                     coprocessor.latent_gate).loss())
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


def set_kernel(base, coprocessor, kernel: str) -> None:
    base.kernel = kernel
    if coprocessor.network is not None:
        coprocessor.network.kernel = kernel


def measure(base, coprocessor, args, batch, loss_fn, repeats, device, autocast, kernel="sdpa") -> dict:
    set_kernel(base, coprocessor, kernel)
    tokens = torch.randint(0, base.config.vocab_size, (batch, args.seq_len), device=device)
    row_points = sample_points(1, args.seq_len, args.points, args.ahead, torch.Generator().manual_seed(0))
    points = row_points.expand(batch, -1).to(device)
    optimizer = torch.optim.AdamW(coprocessor.trainable_parameters().values(), lr=1e-5, fused=device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = time_steps(make_step(base, coprocessor, optimizer, loss_fn, tokens, points, args.ahead, autocast),
                         device, repeats)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    row = {"kernel": kernel, "batch": batch, "step_s": seconds, "tokens_per_s": batch * args.seq_len / seconds,
           "peak_gib": peak}
    print(json.dumps(row), flush=True)
    return row


def kernel_check(base, coprocessor, args, device, autocast) -> dict:
    """Loss and gradients of one batch with every kernel: the largest difference against SDPA."""
    tokens = torch.randint(0, base.config.vocab_size, (2, args.seq_len), device=device)
    points = sample_points(2, args.seq_len, args.points, args.ahead, torch.Generator().manual_seed(1)).to(device)
    results = {}
    for kernel in args.kernels:
        set_kernel(base, coprocessor, kernel)
        with autocast():
            loss = one_pass_loss(base, coprocessor, tokens, points, args.ahead)
        grads = torch.autograd.grad(loss, list(coprocessor.trainable_parameters().values()))
        results[kernel] = (loss.item(), grads)
    reference_loss, reference_grads = results["sdpa"]
    return {kernel: {"loss": loss, "loss_diff": abs(loss - reference_loss),
                     "max_grad_diff": max((a - b).abs().max().item() for a, b in zip(grads, reference_grads)),
                     "max_grad": max(g.abs().max().item() for g in reference_grads)}
            for kernel, (loss, grads) in results.items()}


def _csv(kind):
    return lambda text: [kind(part) for part in text.split(",") if part]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--points", type=int, default=64)
    parser.add_argument("--latents", "--num-latents", dest="num_latents", type=int, default=16)
    parser.add_argument("--ahead", type=int, default=16)
    parser.add_argument("--variant", default="gated")
    parser.add_argument("--batches", type=_csv(int), default=[1])
    parser.add_argument("--kernels", type=_csv(str), default=["sdpa"], help="sdpa and/or flex (CUDA)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loop", action="store_true", help="also time the per-point loop (first batch, sdpa)")
    parser.add_argument("--find-max-batch", action="store_true", help="double the batch of the last kernel until OOM")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else nullcontext
    base = load_decoder(args.base, dtype=dtype, device=device)
    coprocessor = Coprocessor(base, CoprocessorConfig(args.num_latents, variant=args.variant)).to(device).float()

    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "base": args.base, "seq_len": args.seq_len, "points": args.points,
        "num_latents": args.num_latents, "ahead": args.ahead, "variant": args.variant,
        "precision": "bf16 autocast" if device.type == "cuda" else "fp32", "optimizer": "AdamW" +
        (" (fused)" if device.type == "cuda" else ""), "runs": [],
    }
    if device.type == "cuda" and len(args.kernels) > 1 and "sdpa" in args.kernels:
        try:
            result["kernel_check"] = kernel_check(base, coprocessor, args, device, autocast)
        except Exception as error:  # a kernel that cannot run is a result to report, not a reason to lose the rest
            result["kernel_check"] = {"error": f"{type(error).__name__}: {error}"[:2000]}
        print(json.dumps(result["kernel_check"]), flush=True)
    for kernel in args.kernels:
        for batch in args.batches:
            try:
                result["runs"].append(measure(base, coprocessor, args, batch, one_pass_loss, args.repeats, device,
                                              autocast, kernel))
            except torch.OutOfMemoryError:
                result["runs"].append({"kernel": kernel, "batch": batch, "oom": True})
                torch.cuda.empty_cache()
            except Exception as error:
                result["runs"].append({"kernel": kernel, "batch": batch, "error": f"{type(error).__name__}: {error}"[:2000]})
    if args.loop:
        result["loop"] = measure(base, coprocessor, args, args.batches[0], loop_loss, 1, device, autocast)
    if args.find_max_batch and device.type == "cuda":
        result["max_batch"] = find_max_batch(base, coprocessor, args, device, autocast)
    print(json.dumps(result, indent=2))
    write_atomically(Path(args.json), json.dumps(result, indent=2))


def find_max_batch(base, coprocessor, args, device, autocast) -> dict:
    batch, best, kernel = args.batches[-1], None, args.kernels[-1]
    while batch <= 4096:
        try:
            best = measure(base, coprocessor, args, batch, one_pass_loss, 1, device, autocast, kernel)
        except torch.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
        batch *= 2
    return best or {}


if __name__ == "__main__":
    main()
