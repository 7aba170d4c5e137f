"""The training recipe: setup, train, validate, checkpoint, resume. Runs as is under ``torchrun`` (DDP).

Determinism is by construction, not by saved RNG state: micro-batch ``c`` of rank ``r`` always takes the
same sequences (a seeded permutation per epoch) and the same augmentation points (a generator seeded by
``(seed, c, r)``), so a resumed run replays exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from latentcache.errors import CheckpointError, LatentcacheError
from latentcache.model import load_decoder
from latentcache.train import checkpoint as ckpt
from latentcache.train.config import TrainConfig
from latentcache.train.coprocessor import Coprocessor, CoprocessorConfig
from latentcache.train.data import leading_batches, shard_indices, stack_rows
from latentcache.train.layout import sample_points
from latentcache.train.objective import augmented_predictions, baseline_logprobs

CHECKPOINT_DIR, METRICS_FILE = "checkpoint", "metrics.jsonl"


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``lr * min_lr_ratio`` at ``max_steps``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps))
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def document_ids(tokens: torch.Tensor, eos_id: int | None) -> torch.Tensor | None:
    """Per-token document index in a packed sequence: an end-of-sequence token closes its document."""
    if eos_id is None:
        return None
    is_eos = (tokens == eos_id).long()
    return is_eos.cumsum(-1) - is_eos


class Distributed:
    """Rank/world from torchrun's environment; a single process otherwise."""

    def __init__(self, device: torch.device) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, value: float, device: torch.device) -> float:
        if self.world == 1:
            return value
        tensor = torch.tensor([value], device=device, dtype=torch.float64)
        torch.distributed.all_reduce(tensor)
        return tensor.item() / self.world


class Trainer:
    def __init__(self, config: TrainConfig, train_data: Sequence, val_data: Sequence, data_fingerprint: str,
                 on_step: Callable[[int, dict], None] | None = None) -> None:
        self.config, self.train_data, self.val_data = config, train_data, val_data
        self.data_fingerprint, self.on_step = data_fingerprint, on_step
        self.out = Path(config.out)
        self.step = 0

    # ---- setup -------------------------------------------------------------------------------------------
    def setup(self, resume: bool) -> None:
        cfg = self.config
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto"
                                   else cfg.device)
        self.dist = Distributed(self.device)
        if self.dist.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        self.bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda")
        base_dtype = torch.bfloat16 if self.bf16 else torch.float32
        self.base = load_decoder(cfg.base, dtype=base_dtype, device=self.device)
        self.eos_id = self.base.config.eos_token_ids[0] if self.base.config.eos_token_ids else None
        coprocessor_config = CoprocessorConfig(cfg.latents, cfg.init, cfg.lora_rank, pause=cfg.pause)
        self.coprocessor = Coprocessor(self.base, coprocessor_config, seed=cfg.seed).to(self.device).float()
        self.trainable = self.coprocessor.trainable_parameters()
        self.optimizer = torch.optim.AdamW(self.trainable.values(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                           betas=(0.9, 0.95))
        self.model = self.coprocessor
        if self.dist.world > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(self.coprocessor)
        if len(self.val_data) == 0:
            self._log("warning: the validation split is empty; no validation metrics (raise val_fraction)")
        self.fingerprints = {"base": ckpt.base_fingerprint(Path(cfg.base)),
                             "tokenizer": ckpt.tokenizer_fingerprint(Path(cfg.base)), "data": self.data_fingerprint}
        if resume:
            self._resume()
        elif (self.out / CHECKPOINT_DIR).exists():
            raise LatentcacheError(f"{self.out / CHECKPOINT_DIR}: a checkpoint exists; pass --resume to continue it "
                                   "or choose another --out")

    def _resume(self) -> None:
        directory = self.out / CHECKPOINT_DIR
        state = ckpt.load_state(directory)
        saved_config = TrainConfig(**{**state["train_config"], "data": tuple(state["train_config"]["data"])})
        changed = self.config.diff(saved_config)
        if changed:
            raise CheckpointError(f"{directory}: cannot resume with a changed config ({', '.join(changed)} differ); "
                                  "restore them or start a new --out")
        for kind, value in self.fingerprints.items():
            if state["fingerprints"].get(kind) != value:
                raise CheckpointError(f"{directory}: was trained on another {kind} (fingerprint mismatch); "
                                      f"resume with the same --base and --data")
        ckpt.restore_trainable(self.trainable, ckpt.load_tensors(directory), directory)
        ckpt.restore_optimizer(self.optimizer, self.trainable, ckpt.load_tensors(directory, ckpt.OPTIMIZER),
                               state["step"])
        self.step = state["step"]
        self._truncate_metrics_after(self.step)
        self._log(f"resumed from step {self.step}")

    # ---- data --------------------------------------------------------------------------------------------
    def _micro_batch(self, counter: int) -> torch.Tensor:
        """Sequences of micro-batch ``counter`` for this rank (a fixed function of the counter)."""
        cfg, dist = self.config, self.dist
        per_epoch = (len(self.train_data) // dist.world) // cfg.batch_size
        if per_epoch == 0:
            raise LatentcacheError(f"the training split has {len(self.train_data)} sequences, fewer than one batch "
                                   f"of {cfg.batch_size} per rank; lower --batch-size or add text")
        epoch, index = divmod(counter, per_epoch)
        shard = shard_indices(len(self.train_data), dist.rank, dist.world, cfg.seed, epoch)
        return torch.from_numpy(stack_rows(self.train_data, shard[index * cfg.batch_size : (index + 1) * cfg.batch_size]))

    def _points(self, tokens: torch.Tensor, seed_parts: list[int]) -> torch.Tensor:
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence(seed_parts).generate_state(1)[0]))
        return sample_points(tokens.shape[0], tokens.shape[1], self.config.points, self.config.ahead, generator)

    # ---- training ----------------------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def _loss(self, tokens: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        docs = document_ids(tokens, self.eos_id) if self.config.document_masking else None
        with self._autocast():
            return augmented_predictions(self.base, self.model, tokens, points, self.config.ahead, docs).loss()

    def train_step(self) -> dict:
        cfg = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.step, cfg)
        total = 0.0
        for micro in range(cfg.grad_accum):
            counter = self.step * cfg.grad_accum + micro
            tokens = self._micro_batch(counter).to(self.device)
            points = self._points(tokens, [cfg.seed, counter, self.dist.rank]).to(self.device)
            sync = nullcontext() if micro == cfg.grad_accum - 1 or self.dist.world == 1 else self.model.no_sync()
            with sync:
                loss = self._loss(tokens, points) / cfg.grad_accum
                loss.backward()
            total += loss.item()
        norm = torch.nn.utils.clip_grad_norm_(self.trainable.values(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {"step": self.step, "loss": self.dist.mean(total, self.device), "lr": learning_rate(self.step - 1, cfg),
                "grad_norm": float(norm)}

    @torch.no_grad()
    def validate(self) -> dict:
        """Augmented vs frozen-base loss on the same ahead targets of fixed validation sequences and points."""
        cfg = self.config
        if len(self.val_data) == 0:
            return {}
        augmented, baseline = [], []
        batches = leading_batches(self.val_data, cfg.eval_batches * cfg.batch_size, cfg.batch_size)
        for number, rows in enumerate(batches):
            tokens = torch.from_numpy(rows).to(self.device)
            points = self._points(tokens, [cfg.seed, 10**9 + number * cfg.batch_size]).to(self.device)
            augmented.append(self._loss(tokens, points).item())
            with self._autocast():
                baseline.append(-baseline_logprobs(self.base, tokens, points, cfg.ahead).mean().item())
        aug, base = float(np.mean(augmented)), float(np.mean(baseline))
        return {"val_loss": aug, "val_base_loss": base, "val_delta": aug - base}

    def train(self) -> dict:
        from tqdm import tqdm

        cfg = self.config
        tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.seq_len * self.dist.world
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not self.dist.main, file=sys.stderr,
                   desc="train", dynamic_ncols=True)
        metrics: dict = {}
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

    def _write_metrics(self, metrics: dict) -> None:
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / METRICS_FILE, "a") as handle:
                handle.write(json.dumps(metrics) + "\n")

    def _truncate_metrics_after(self, step: int) -> None:
        path = self.out / METRICS_FILE
        if self.dist.main and path.is_file():
            kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
            path.write_text("".join(line + "\n" for line in kept))

    def _log(self, message: str) -> None:
        if self.dist.main:
            print(message, file=sys.stderr)
