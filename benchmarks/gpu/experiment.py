"""Issue 6's runs on one multi-GPU machine: every run a detached job (two per GPU), evaluated where it trained.

    python3 benchmarks/gpu/experiment.py launch    # after setup.sh: copy the tree, tokenize once, start the jobs
    python3 benchmarks/gpu/experiment.py status    # log tails and GPU memory
    python3 benchmarks/gpu/experiment.py collect   # everything small into $OUT/results.tar.gz

Why detached jobs: one device command may run 10 minutes, a run needs ~11 minutes of training plus its
evaluation, and full fine-tuned checkpoints (540 MB) cannot come back, so each job trains, evaluates on the
GPU it trained on and leaves small files. Two jobs share a GPU: a batch-8 step of a 135M model does not fill an
H200 (measured: the LoRA job ran at 15.4k tokens/s beside a full N_L 8 job at 22.3k, against 27k alone). The last GPU runs the latency examples (issue 7) alone, so that no training
competes with what it times.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# Overridable for a local smoke run (tiny budgets on the CPU): LC_EXP_REPO, LC_EXP_RESULTS, LC_EXP_RUNS (names),
# LC_EXP_EVAL, LC_EXP_SLICE, LC_EXP_EXAMPLES=0, LC_EXP_INSTALL=0.
REPO = Path(os.environ.get("LC_EXP_REPO", "/tmp/repo"))  # a private copy: later device calls re-sync the tree
RESULTS = Path(os.environ.get("LC_EXP_RESULTS", "/tmp/exp"))
BASE = os.environ.get("MODEL_DIR", "/tmp/lc/models/smollm2-135m-instruct")
TRAIN_SECONDS = int(os.environ.get("TRAIN_SECONDS", "660"))
EVAL = os.environ.get("LC_EXP_EVAL", "--sequences 64 --batch-size 4 --points 16 --tasks arc-easy "
                      "--tasks arc-challenge --tasks mmlu --limit 400")
SLICE = os.environ.get("LC_EXP_SLICE", "--sequences 8 --batch-size 4 --points 16 --no-shuffled")  # the CPU check


@dataclass(frozen=True)
class Run:
    name: str
    gpu: int
    flags: str
    lr: float
    max_steps: int  # sized so the cosine schedule ends near TRAIN_SECONDS at the expected speed
    ship: bool = False  # the shipped-default candidate: packed to fp16, evaluated packed, plus the CPU slice

    def train_command(self) -> str:
        return (f"python3 -m latentcache.cli train --base {BASE} --out {RESULTS / self.name} {self.flags} "
                f"--lr {self.lr} --max-steps {self.max_steps} --batch-size 8 --warmup-steps 100 "
                "--eval-every 250 --save-every 250")


RUNS = (
    Run("full-nl8", 0, "--latents 8", 1e-4, 1600),
    Run("lora16", 0, "--latents 16 --lora-rank 16", 1e-3, 1600, ship=True),
    Run("full-nl16", 1, "--latents 16", 1e-4, 1400),
    Run("full-nl16-lr3e-4", 1, "--latents 16", 3e-4, 1400),
    Run("full-nl32", 2, "--latents 32", 1e-4, 1100),
    Run("pause16", 2, "--latents 16 --pause", 1e-3, 2000),
)
EXAMPLES_GPU = 3
SELECTED = [r for r in RUNS if r.name in os.environ.get("LC_EXP_RUNS", ",".join(r.name for r in RUNS)).split(",")]


def job_script(run: Run) -> str:
    out = RESULTS / run.name
    evaluated = out / ("packed" if run.ship else "checkpoint")
    lines = [
        f"echo train_start $(date +%s) >> {out}/times.txt",
        f"timeout -s INT {TRAIN_SECONDS} {run.train_command()}",
        f"echo train_end $(date +%s) >> {out}/times.txt",
    ]
    if run.ship:
        lines.append(f"python3 -c 'from latentcache.model.checkpoint import pack_checkpoint as p; "
                     f"p(\"{out}/checkpoint\", \"{evaluated}\")'")
    lines.append(f"python3 -m latentcache.cli eval --base {BASE} --coprocessor {evaluated} --json {out}/eval.json {EVAL}")
    if run.ship:
        lines.append(f"python3 -m latentcache.cli eval --base {BASE} --coprocessor {evaluated} "
                     f"--json {out}/slice.json {SLICE}")
    lines.append(f"echo eval_end $(date +%s) >> {out}/times.txt")
    return "set -x\n" + "\n".join(lines) + f"\ntouch {out}/done\n"


def examples_script() -> str:
    """Issue 7's GPU figures: 01 on the embedded default's shapes, 02 on the new LoRA once it is packed."""
    out = RESULTS / "examples"
    ship = next(r for r in RUNS if r.ship)
    packed = RESULTS / ship.name / "packed"
    return "\n".join([
        "set -x",
        f"python3 examples/01_coprocessor_cost/run.py --backend onnxruntime-cuda --repetitions 10 "
        f"--json {out}/01_gpu.json --png {out}/01_gpu.png",
        f"while [ ! -f {packed}/state.json ]; do sleep 10; done",
        f"python3 -m latentcache.cli export --base {BASE} --coprocessor {packed} --out /tmp/art-shipped "
        "--max-seq 2048 --force",
        "python3 examples/02_latents_vs_cot/run.py --artifacts /tmp/art-shipped --backend onnxruntime-cuda "
        f"--arc 200 --gsm8k 100 --json {out}/02_gpu.json --png {out}/02_gpu.png",
        f"touch {out}/done",
    ]) + "\n"


def _nvidia_smi(fields: str) -> str:
    try:
        return subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True,
                              text=True).stdout
    except FileNotFoundError:
        return "no nvidia-smi"


def start(name: str, script: str, gpu: int) -> None:
    folder = RESULTS / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "job.sh").write_text(script)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(gpu), "OMP_NUM_THREADS": "8", "PYTHONUNBUFFERED": "1"}
    with open(folder / "job.log", "wb") as log:
        # A new session: the job outlives this device command (the machine keeps it while it is held).
        subprocess.Popen(["bash", str(folder / "job.sh")], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True)


def launch() -> None:
    REPO.mkdir(parents=True, exist_ok=True)
    subprocess.run("tar --exclude='./.devcache/ort-gpu*' --exclude='./.devcache/smol*' --exclude=./.git --exclude=./.venv "
                   "--exclude=./.cache -cf - . "
                   f"| tar -xf - -C {REPO}", shell=True, check=True)
    if os.environ.get("LC_EXP_INSTALL", "1") == "1":
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--no-index", "-e", str(REPO)], check=True, stdout=subprocess.DEVNULL)
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.time()
    # Tokenize the corpus once; the jobs then read its cache instead of racing to build it.
    prepare = ("from latentcache.train.config import TrainConfig; from latentcache.train.run import "
               "prepare_training_data, _eos_id; from latentcache.model.loading import read_model_config; "
               f"prepare_training_data(TrainConfig(base='{BASE}', out='/tmp/unused'), "
               f"_eos_id(read_model_config('{BASE}')))")
    subprocess.run([sys.executable, "-c", prepare], cwd=REPO, check=True)
    gpus = _nvidia_smi("index,name,memory.total,driver_version")
    plan = {"runs": [asdict(r) | {"command": r.train_command()} for r in SELECTED], "train_seconds": TRAIN_SECONDS,
            "eval": EVAL, "slice": SLICE, "gpus": gpus.strip().splitlines(), "corpus_seconds": time.time() - started,
            "launched": time.time()}
    (RESULTS / "plan.json").write_text(json.dumps(plan, indent=2))
    for run in SELECTED:
        start(run.name, job_script(run), run.gpu)
    if os.environ.get("LC_EXP_EXAMPLES", "1") == "1":
        start("examples", examples_script(), EXAMPLES_GPU)
    print(json.dumps(plan, indent=2))


def status() -> None:
    for folder in sorted(p for p in RESULTS.iterdir() if p.is_dir()):
        log = folder / "job.log"
        tail = log.read_text(errors="replace").splitlines()[-3:] if log.exists() else []
        print(f"== {folder.name} {'DONE' if (folder / 'done').exists() else ''}")
        for line in tail:
            print("   ", line[-200:])
    print(_nvidia_smi("index,memory.used,utilization.gpu"))


SMALL = (".json", ".jsonl", ".md", ".png", ".txt", ".log", ".sh")


def collect() -> None:
    """Small files of every job, plus the packed (and pause) weights; never the 540 MB full checkpoints."""
    out = Path(os.environ["OUT"]) / "results.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        for path in sorted(RESULTS.rglob("*")):
            if not path.is_file():
                continue
            relative = path.relative_to(RESULTS)
            weights = path.suffix == ".safetensors" and (relative.parts[1] == "packed" or
                                                          relative.parts[0].startswith("pause"))
            if (path.suffix in SMALL or weights) and "optimizer" not in path.name:
                tar.add(path, arcname=str(relative))
    print(out, out.stat().st_size)


if __name__ == "__main__":
    {"launch": launch, "status": status, "collect": collect}[sys.argv[1]]()
