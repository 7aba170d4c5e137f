"""kill -9 at random moments of training and export (slow): the run resumes or re-runs cleanly, nothing is lost.

Each test starts the real CLI in a subprocess and kills it with SIGKILL at a point drawn from a seeded RNG,
placed by the run's own progress rather than by the clock (a fast machine would otherwise finish first):
training after a random checkpointed step plus a random fraction of the next steps, export a random time
after its staging folder appears. Then it checks what is on disk at that moment (a checkpoint there is
always a verified one; never a half-written folder that looks valid), and finally runs the command to the end.
Stale ``.partial-*`` folders of the killed processes must be gone after the next run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from latentcache.contract.files import sha256_of
from tests.test_cli_train import TRAIN, make_base, write_corpus

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def start(args, env):
    return subprocess.Popen([sys.executable, "-m", "latentcache.cli", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def kill_when(process, ready, delay: float, timeout: float = 240.0) -> bool:
    """SIGKILL ``process`` ``delay`` seconds after ``ready()`` first holds, unless it finished first; whether it
    was killed."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.005)
    end = time.monotonic() + delay
    while time.monotonic() < end and process.poll() is None:
        time.sleep(0.002)
    if process.poll() is not None:
        return False
    process.send_signal(signal.SIGKILL)
    process.wait()
    return True


def saved_step(run: Path) -> int:
    """The step of the checkpoint on disk now (-1 while there is none or it is being swapped)."""
    try:
        return json.loads((run / "checkpoint" / "state.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return -1


def finish(args, env):
    result = subprocess.run([sys.executable, "-m", "latentcache.cli", *map(str, args)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def partials(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*.partial-*")] + [p for p in root.rglob(".*.tmp-*")]


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "LATENTCACHE_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}


def test_training_killed_at_random_resumes_exactly(tmp_path, env):
    from latentcache.model.checkpoint import load_state, verify_checkpoint

    make_base(tmp_path / "base")
    write_corpus(tmp_path / "corpus")
    run = tmp_path / "run"
    args = ["train", "--base", tmp_path / "base", "--data", tmp_path / "corpus", "--out", run, *TRAIN,
            "--max-steps", 40, "--save-every", 1, "--eval-every", 5]
    rng, outcomes = random.Random(17), []
    for point in range(4):
        resume = ["--resume"] if (run / "checkpoint").exists() or (run / "checkpoint.previous").exists() else []
        target = max(saved_step(run), 0) + rng.randint(1, 7)  # a few steps into this run; 40 leaves room
        killed = kill_when(start(args + resume, env), lambda: saved_step(run) >= target, rng.uniform(0.0, 0.15))
        step = None
        if (run / "checkpoint").exists() or (run / "checkpoint.previous").exists():
            verify_checkpoint(run / "checkpoint")  # whatever is there is complete and verified
            step = load_state(run / "checkpoint")["step"]
        outcomes.append((killed, step))
    finish(args + ["--resume"], env)
    assert load_state(run / "checkpoint")["step"] == 40
    verify_checkpoint(run / "checkpoint")
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 40  # no duplicate or cut line survives a resume
    assert partials(tmp_path) == [] and not (run / "checkpoint.previous").exists()
    print("training kill points (killed, checkpoint step):", outcomes)
    assert all(killed for killed, _ in outcomes), outcomes


def test_export_killed_at_random_reruns_cleanly_and_keeps_the_base(tmp_path, env):
    from latentcache.contract.manifest import load_manifest

    make_base(tmp_path / "base")
    base_before = {p.name: sha256_of(p) for p in (tmp_path / "base").iterdir()}
    out = tmp_path / "art"
    args = ["export", "--base", tmp_path / "base", "--out", out, "--max-seq", 64, "--force"]
    rng, outcomes = random.Random(5), []
    finish(args, env)  # a good export that the killed --force re-exports must never lose
    for point in range(3):
        staging = lambda: any(tmp_path.glob(".art.partial-*"))  # noqa: E731  the export has begun writing
        killed = kill_when(start(args, env), staging, rng.uniform(0.0, 1.5))
        load_manifest(out)  # the old export or the new one, complete and verified, never neither
        outcomes.append((killed, out.exists()))
    finish(args, env)
    load_manifest(out)
    assert {p.name: sha256_of(p) for p in (tmp_path / "base").iterdir()} == base_before
    assert partials(tmp_path) == [] and not list(tmp_path.glob(".*.lock"))
    print("export kill points (killed, --out present):", outcomes)
    assert all(killed for killed, _ in outcomes), outcomes
