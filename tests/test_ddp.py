"""`latentcache train` under ``torchrun --nproc_per_node 2`` (gloo, CPU) equals one process with the same global batch.

Under DDP ``--batch-size`` is per rank: rank ``r`` takes rows ``r, r + 2, ...`` of the global micro-batch with
their augmentation points, and DDP averages the two ranks' mean losses, which is the mean loss of the global
batch. So 2 ranks x batch 1 must follow the same optimisation path as 1 process x batch 2; only the order of
floating-point sums differs (see the tolerance below).
"""

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from tests.test_cli_train import TRAIN, make_base, write_corpus

pytestmark = pytest.mark.slow  # two fresh interpreters importing torch and transformers: ~15-20 s on 2 cores

STEPS = 3


def train_command(root, out, batch_size):
    return ["train", "--config", root / "train.yaml", "--base", root / "base", "--data", root / "corpus",
            "--out", out, *TRAIN, "--max-steps", STEPS, "--batch-size", batch_size]


def launch(args, root, ranks):
    env = {**os.environ, "LATENTCACHE_HOME": str(root / "home"), "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", "-m"]
    command = launcher if ranks > 1 else [sys.executable, "-m"]
    return subprocess.run([*command, "latentcache.cli", *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=300)


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_ranks_equal_one_process_with_the_global_batch_and_only_rank_0_writes(tmp_path):
    make_base(tmp_path / "base")
    write_corpus(tmp_path / "corpus")
    (tmp_path / "train.yaml").write_text("val_fraction: 0.3\nlog_every: 1\neval_every: 2\neval_batches: 2\n")
    # Rank 0 tokenizes into the data cache while rank 1 waits and then reads it; so does the single process.
    ddp = launch(train_command(tmp_path, tmp_path / "ddp", 1), tmp_path, ranks=2)
    assert ddp.returncode == 0, ddp.stderr
    assert ddp.stderr.count("tokenize: 100%") == 1 and len(list((tmp_path / "home" / "data").iterdir())) == 1
    single = launch(train_command(tmp_path, tmp_path / "single", 2), tmp_path, ranks=1)
    assert single.returncode == 0, single.stderr
    assert ddp.stdout.split() == [str(tmp_path / "ddp" / "checkpoint")] * 2  # each rank prints the path

    # Only rank 0 writes: one checkpoint (no stray partial folder), each step logged once.
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["checkpoint", "metrics.jsonl"]
    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoint").iterdir()) == [
        "coprocessor.safetensors", "optimizer.safetensors", "state.json"]
    assert [m["step"] for m in metrics(tmp_path / "ddp")] == list(range(1, STEPS + 1))
    assert ddp.stderr.count(f"| 0/{STEPS} [00:00<?, ?it/s]\n") == 1  # tqdm's first frame: one bar, rank 0's

    # Same path as one process with batch 2. Only the summation order differs (per-rank means averaged by
    # all-reduce vs one mean over the batch; other matmul shapes): ~1e-7 relative in fp32. AdamW turns each
    # gradient element into an update of about lr (1e-4 to 4e-4 here), so a component whose gradient were pure
    # rounding noise could drift by up to that, but none is: the measured worst difference is ~1e-8 against
    # ~6e-4 of movement. 1e-5 sits 1000x above the measured noise and 60x below the movement; per-rank point
    # seeds (the bug this guards) gave 1.2e-3.
    weights = load_file(tmp_path / "ddp" / "checkpoint" / "coprocessor.safetensors")
    reference = load_file(tmp_path / "single" / "checkpoint" / "coprocessor.safetensors")
    assert set(weights) == set(reference)
    worst = max((weights[k] - reference[k]).abs().max().item() for k in reference)
    assert worst <= 1e-5, f"max abs weight difference {worst:.3g}"
    base = load_file(tmp_path / "base" / "model.safetensors")
    moved = max((reference[k] - base["model." + k.removeprefix("network.")]).abs().max().item()
                for k in reference if k.startswith("network."))
    assert moved > 10 * 1e-5, f"training moved the weights by only {moved:.3g}"  # the comparison can tell
    for ours, theirs in zip(metrics(tmp_path / "ddp"), metrics(tmp_path / "single")):
        for key in ("loss", "grad_norm", "val_loss", "val_base_loss"):
            if key in theirs:
                assert ours[key] == pytest.approx(theirs[key], abs=1e-5), key
    assert "val_loss" in metrics(tmp_path / "ddp")[-1]
