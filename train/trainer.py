"""The training recipe: setup, train, validate, checkpoint, resume. Runs as is under ``torchrun`` (DDP).

Determinism is by construction, not by saved RNG state: global micro-batch ``c`` always takes the same
sequences (a seeded permutation per epoch) and the same augmentation points (a generator seeded by
``(seed, c)``), so a resumed run replays exactly what an uninterrupted one would have done.

Under DDP ``batch_size`` is per rank: the global micro-batch holds ``batch_size * world`` sequences and rank
``r`` takes its rows ``r, r + world, ...`` together with their points. Ranks therefore see disjoint sequences,
and since DDP averages equal-sized ranks' mean losses, a run on ``world`` ranks computes the same update as one
process with ``batch_size * world`` (up to floating-point summation order). Validation is split the same way.
Only rank 0 writes (checkpoint, metrics, log lines).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from latentcache.contract.files import write_atomically
from latentcache.errors import CheckpointError, LatentcacheError
from latentcache.model import ModelConfig, load_decoder
from latentcache.model import checkpoint as ckpt
from latentcache.model.coprocessor import Coprocessor, CoprocessorConfig
from latentcache.model.layout import sample_points
from latentcache.train.config import ConfigError, TrainConfig
from latentcache.train.data import sequence_order, stack_rows
from latentcache.train.objective import (
    augmented_predictions,
    baseline_logprobs,
    check_positions,
    document_ids,
)

CHECKPOINT_DIR, METRICS_FILE = "checkpoint", "metrics.jsonl"
VALIDATION_STREAM = 10**9  # seeds the validation points; beyond any micro-batch counter


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``lr * min_lr_ratio`` at ``max_steps``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps))
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when there is one; under torchrun each rank takes the GPU of its ``LOCAL_RANK``."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
    if device.type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def check_against_base(config: TrainConfig, base: ModelConfig) -> None:
    """What the config alone cannot know: whether N_L and the sequence length fit this base."""
    if config.num_latents > base.vocab_size:
        raise ConfigError(f"--latents {config.num_latents} exceeds the base's vocabulary of {base.vocab_size} tokens "
                          "(soft tokens start as embeddings of distinct tokens); lower --latents")
    check_positions(base, config.seq_len, config.num_latents, "lower --seq-len or --latents")


class Distributed:
    """Rank/world from torchrun's environment; a single process otherwise."""

    def __init__(self, device: torch.device) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.owner = self.world > 1 and not torch.distributed.is_initialized()
        if self.owner:
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        self.device = device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mine(self, rows):
        """This rank's rows of a global batch: ``rank, rank + world, ...``."""
        return rows[self.rank :: self.world]

    def sum(self, values: Sequence[float]) -> list[float]:
        if self.world == 1:
            return list(values)
        tensor = torch.tensor(values, device=self.device, dtype=torch.float64)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def mean(self, value: float) -> float:
        return self.sum([value])[0] / self.world

    @contextmanager
    def main_first(self):
        """Rank 0 runs the block first (e.g. builds a shared cache), then the others (which find it built).

        A failure on rank 0 still releases the others; they meet the same error themselves.
        """
        if not self.main:
            torch.distributed.barrier()
        try:
            yield
        finally:
            if self.main and self.world > 1:
                torch.distributed.barrier()

    def close(self) -> None:
        if self.owner and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _logged_step(line: str) -> int | None:
    """The step of one metrics.jsonl line, or None when the line is not a complete record."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


class TrainingDiverged(LatentcacheError):
    """The loss or the gradients became NaN or infinite; nothing of that step was applied or saved."""


class Trainer:
    def __init__(self, config: TrainConfig, train_data: Sequence, val_data: Sequence, data_fingerprint: str,
                 on_step: Callable[[int, dict], None] | None = None) -> None:
        self.config, self.train_data, self.val_data = config, train_data, val_data
        self.data_fingerprint, self.on_step = data_fingerprint, on_step
        self.out = Path(config.out)
        self.step = 0
        self.saved_step: int | None = None  # the step of the checkpoint on disk (None: none yet)

    # ---- setup -------------------------------------------------------------------------------------------
    def setup(self, resume: bool) -> None:
        cfg = self.config
        self.device = resolve_device(cfg.device)
        self.dist = Distributed(self.device)
        self.bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda")
        base_dtype = torch.bfloat16 if self.bf16 else torch.float32
        self.base = load_decoder(cfg.base, dtype=base_dtype, device=self.device)
        check_against_base(cfg, self.base.config)
        self.eos_id = self.base.config.eos_token_ids[0] if self.base.config.eos_token_ids else None
        coprocessor_config = CoprocessorConfig(cfg.num_latents, cfg.init, cfg.lora_rank, pause=cfg.pause,
                                               variant=cfg.variant, gate_init=cfg.gate_init)
        self.coprocessor = Coprocessor(self.base, coprocessor_config, seed=cfg.seed).to(self.device).float()
        self._choose_attention_kernel()
        self.trainable = self.coprocessor.trainable_parameters()
        self.optimizer = torch.optim.AdamW(self._parameter_groups(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                           betas=(0.9, 0.95), fused=self.device.type == "cuda")
        self.model = self.coprocessor
        if self.dist.world > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(self.coprocessor)
        if len(self.val_data) == 0:
            self._log("warning: the validation split is empty; no validation metrics (raise val_fraction)")
        self.fingerprints = {"base": ckpt.base_fingerprint(Path(cfg.base)),
                             "tokenizer": ckpt.tokenizer_fingerprint(Path(cfg.base)), "data": self.data_fingerprint}
        directory = self.out / CHECKPOINT_DIR
        if resume:
            self._resume(directory)
        elif ckpt.checkpoint_exists(directory):
            raise LatentcacheError(f"{directory}: a checkpoint exists; pass --resume to continue it "
                                   "or choose another --out")

    def _choose_attention_kernel(self) -> None:
        """SDPA by default (the gate folded into its keys); FlexAttention on request. Measured on an H200
        (docs/results.md), our FlexAttention path trained 7x slower than SDPA, so it is not the default."""
        kernel = self.config.attention
        if kernel == "auto":
            kernel = "sdpa"
        if kernel == "flex" and self.device.type != "cuda":
            raise LatentcacheError("attention 'flex' trains on a CUDA GPU only (FlexAttention has no CPU backward): "
                                   "use attention 'sdpa' or 'auto' on the CPU")
        for model in (self.base, self.coprocessor.network):
            if model is not None:
                model.kernel = kernel

    def _parameter_groups(self) -> list[dict]:
        """The gate in a group of its own: its learning rate is a logit step, not a weight step (``lr_scale``
        keeps the schedule's shape for it)."""
        gate = [p for name, p in self.trainable.items() if name == "latent_gate"]
        rest = [p for name, p in self.trainable.items() if name != "latent_gate"]
        groups = [{"params": rest, "lr_scale": 1.0}]
        if gate:
            groups.append({"params": gate, "lr_scale": self.config.gate_lr / self.config.lr, "weight_decay": 0.0})
        return groups

    def _resume(self, directory: Path) -> None:
        if not ckpt.checkpoint_exists(directory):
            raise CheckpointError(f"{directory}: no checkpoint to resume; drop --resume to start a new run")
        state = ckpt.load_state(directory)
        saved = state["train_config"]
        try:
            saved_config = TrainConfig.from_dict(saved)
        except (TypeError, LatentcacheError) as exc:
            raise CheckpointError(f"{directory}: its training config does not load here ({exc}); it was written "
                                  "by another version, start a new --out") from exc
        changed = self.config.diff(saved_config)
        if changed:
            now = self.config.to_dict()
            was = saved_config.to_dict()
            details = ", ".join(f"{key} {now[key]!r} (was {was[key]!r})" for key in changed)
            raise CheckpointError(f"{directory}: cannot resume with a changed config ({details}); "
                                  "restore them or start a new --out")
        base = self.config.base
        other = {"base": f"another base than {base}", "tokenizer": f"another tokenizer than {base}'s",
                 "data": "other data (the contents of the --data files changed, or the tokenizer or packing did)"}
        for kind, value in self.fingerprints.items():
            if state["fingerprints"].get(kind) != value:
                raise CheckpointError(f"{directory}: was trained on {other[kind]} (fingerprint mismatch); "
                                      "resume with the same --base and --data")
        ckpt.restore_trainable(self.trainable, ckpt.load_tensors(directory), directory)
        ckpt.restore_optimizer(self.optimizer, self.trainable, ckpt.load_tensors(directory, ckpt.OPTIMIZER),
                               state["step"])
        self.step = self.saved_step = state["step"]
        self._truncate_metrics_after(self.step)
        self._log(f"resumed from step {self.step}")

    # ---- data --------------------------------------------------------------------------------------------
    def _global_size(self) -> int:
        return self.config.batch_size * self.dist.world

    def _micro_batch(self, counter: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's sequences and points of global micro-batch ``counter`` (a fixed function of the counter)."""
        cfg, size = self.config, self._global_size()
        per_epoch = len(self.train_data) // size
        if per_epoch == 0:
            raise LatentcacheError(f"the training split has {len(self.train_data)} sequences, fewer than one batch "
                                   f"of {cfg.batch_size} per rank on {self.dist.world} rank(s); lower --batch-size "
                                   "or add text")
        epoch, index = divmod(counter, per_epoch)
        rows = sequence_order(len(self.train_data), cfg.seed, epoch)[index * size : (index + 1) * size]
        tokens = torch.from_numpy(stack_rows(self.train_data, self.dist.mine(rows)))
        return tokens, self.dist.mine(self._points(size, [cfg.seed, counter]))

    def _points(self, rows: int, seed_parts: list[int]) -> torch.Tensor:
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence(seed_parts).generate_state(1)[0]))
        return sample_points(rows, self.config.seq_len, self.config.points, self.config.ahead, generator)

    # ---- training ----------------------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def _documents(self, tokens: torch.Tensor) -> torch.Tensor | None:
        return document_ids(tokens, self.eos_id) if self.config.document_masking else None

    def _loss(self, tokens: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return augmented_predictions(self.base, self.model, tokens, points, self.config.ahead,
                                         self._documents(tokens)).loss()

    def train_step(self) -> dict:
        cfg = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.step, cfg) * group["lr_scale"]
        total = 0.0
        for micro in range(cfg.grad_accum):
            tokens, points = (t.to(self.device) for t in self._micro_batch(self.step * cfg.grad_accum + micro))
            sync = nullcontext() if micro == cfg.grad_accum - 1 or self.dist.world == 1 else self.model.no_sync()
            with sync:
                loss = self._loss(tokens, points) / cfg.grad_accum
                loss.backward()
            total += loss.item()
        norm = torch.nn.utils.clip_grad_norm_(self.trainable.values(), cfg.grad_clip)
        loss = self.dist.mean(total)
        if not (math.isfinite(loss) and math.isfinite(float(norm))):
            # Checked before the update: one NaN step would poison the weights and every later checkpoint.
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(f"step {self.step + 1}: the loss or the gradients are not finite (loss {loss:.4g}, "
                                   f"gradient norm {float(norm):.4g}); training stopped, {self._last_good()}; "
                                   "lower --lr or check the data")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {"step": self.step, "loss": loss, "lr": learning_rate(self.step - 1, cfg),
                "grad_norm": float(norm)}

    @torch.no_grad()
    def validate(self) -> dict:
        """Augmented vs frozen-base loss on the same ahead targets (and the same document-masked context) of
        the first ``eval_batches`` global batches of validation sequences, at fixed points."""
        cfg = self.config
        count = min(cfg.eval_batches * self._global_size(), len(self.val_data))
        if count == 0:
            return {}
        all_points = self._points(count, [cfg.seed, VALIDATION_STREAM])
        mine = self.dist.mine(np.arange(count))
        sums = [0.0, 0.0]  # per-sequence mean losses, augmented and baseline
        for start in range(0, len(mine), cfg.batch_size):
            rows = mine[start : start + cfg.batch_size]
            tokens = torch.from_numpy(stack_rows(self.val_data, rows)).to(self.device)
            points, docs = all_points[torch.from_numpy(rows)].to(self.device), self._documents(tokens)
            with self._autocast():  # the bare coprocessor: DDP's forward would sync ranks on every batch
                augmented = augmented_predictions(self.base, self.coprocessor, tokens, points, cfg.ahead, docs)
                baseline = baseline_logprobs(self.base, tokens, points, cfg.ahead, docs)
            sums[0] -= augmented.target_logprobs.float().mean(dim=(1, 2)).sum().item()
            sums[1] -= baseline.float().mean(dim=(1, 2)).sum().item()
        aug, base = (total / count for total in self.dist.sum(sums))
        return {"val_loss": aug, "val_base_loss": base, "val_delta": aug - base}

    def train(self) -> dict:
        from tqdm import tqdm

        cfg = self.config
        tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.seq_len * self.dist.world
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not self.dist.main, file=sys.stderr,
                   desc="train", dynamic_ncols=True)
        metrics: dict = {}
        if self.step >= cfg.max_steps:
            self._log(f"the checkpoint is at step {self.step}, max_steps is {cfg.max_steps}: nothing to train; "
                      "raise --max-steps to continue")
        started, steps_timed = time.perf_counter(), 0
        try:
            while self.step < cfg.max_steps:
                metrics = self.train_step()
                steps_timed += 1
                metrics["tokens_per_s"] = tokens_per_step * steps_timed / (time.perf_counter() - started)
                if self.step % cfg.eval_every == 0 or self.step == cfg.max_steps:
                    metrics.update(self.validate())
                if self.step % cfg.log_every == 0 or "val_loss" in metrics or self.step == cfg.max_steps:
                    self._write_metrics(metrics)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
                bar.update(1)
                if self.step % cfg.save_every == 0 or self.step == cfg.max_steps:
                    self.save(metrics)
                if self.on_step is not None:
                    self.on_step(self.step, metrics)
        except KeyboardInterrupt:
            if self.saved_step != self.step:
                self.save(metrics)  # never lose work: the finished steps are kept
            self._log(f"interrupted; checkpoint saved at step {self.step}, continue with --resume")
            raise
        finally:
            bar.close()
        return metrics

    # ---- output ------------------------------------------------------------------------------------------
    def save(self, metrics: dict) -> None:
        if not self.dist.main:
            return
        state = {"step": self.step, "train_config": self.config.to_dict(),
                 "coprocessor_config": asdict(self.coprocessor.config), "fingerprints": self.fingerprints,
                 "metrics": metrics, "base_model_config": self.base.config.to_dict()}
        ckpt.save_checkpoint(self.out / CHECKPOINT_DIR, dict(self.trainable), self.optimizer, state)
        self.saved_step = self.step

    def _last_good(self) -> str:
        where = self.out / CHECKPOINT_DIR
        if self.saved_step is None:
            return f"no checkpoint was written to {where}"
        return f"the last good checkpoint (step {self.saved_step}) in {where} is intact"

    def _write_metrics(self, metrics: dict) -> None:
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / METRICS_FILE, "a") as handle:
                handle.write(json.dumps(metrics) + "\n")

    def _truncate_metrics_after(self, step: int) -> None:
        """Keep the log lines up to ``step``; a line cut short by a kill (or otherwise unreadable) is dropped."""
        path = self.out / METRICS_FILE
        if self.dist.main and path.is_file():
            kept = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
                    if (logged := _logged_step(line)) is not None and logged <= step]
            write_atomically(path, "".join(line + "\n" for line in kept))  # resume must not lose the log

    def _log(self, message: str) -> None:
        if self.dist.main:
            print(message, file=sys.stderr)
