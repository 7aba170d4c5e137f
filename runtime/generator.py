"""The orchestrator: prefill -> (coprocess -> absorb) -> decode_step ..., on any backend.

State of one request batch (host side, a few integers per row; the cache itself lives in the backend):

- ``length``: the next cache slot to write, shared by all rows (prompts are left-padded so that every
  row's last prompt token sits in slot ``length - 1``);
- ``valid [batch, max_seq]``: 1 where a slot holds a real token or latent (the graphs' ``attention_mask``);
- ``positions [batch]``: the next rope position per row (real tokens are numbered from 0 whatever the
  padding in front of them).

Latents are absorbed exactly as in training (``latentcache.model.layout``): after a context ending at position ``p``,
latent ``i`` takes position ``p + 1 + i`` and the next cache slot; decoding then continues after them.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from latentcache.errors import LatentcacheError
from latentcache.contract import manifest as contract
from latentcache.runtime.backend import Backend
from latentcache.sampling import Sampling, sample


@dataclass
class RequestStats:
    """What happened in one ``generate`` call (times in seconds, from ``time.perf_counter``)."""

    prompt_tokens: int = 0
    prefill_s: float = 0.0
    augment_s: list[float] = field(default_factory=list)  # coprocess + absorb, per augmentation
    augmented_at: list[int] = field(default_factory=list)  # generated tokens before each absorption
    step_s: list[float] = field(default_factory=list)  # per decode step
    first_token_s: float = 0.0  # from the start of prefill to the first token being available


class Generator:
    def __init__(self, backend: Backend) -> None:
        self.backend, self.manifest = backend, backend.manifest
        kv = self.manifest.kv
        self.batch, self.capacity = kv.batch, kv.max_seq
        self.valid = np.zeros((self.batch, self.capacity), dtype=np.int64)
        self.positions = np.zeros(self.batch, dtype=np.int64)
        self.length = 0
        self.num_latents = self.manifest.num_latents

    # -- the graphs ------------------------------------------------------------------------------
    def prefill(self, prompts: list[list[int]]) -> np.ndarray:
        """Reset the cache and write the left-padded prompts; returns the logits ``[batch, vocab]``."""
        if len(prompts) != self.batch:
            raise LatentcacheError(f"these artifacts run batches of {self.batch} prompts, got {len(prompts)}: "
                                   "re-export with --batch or pass that many prompts")
        longest = max(len(p) for p in prompts)
        if min(len(p) for p in prompts) == 0:
            raise LatentcacheError("a prompt is empty: pass some text")
        self.length = 0  # a new request: the whole capacity is free again
        self._check_room(longest)
        self.backend.reset()
        self.valid[:] = 0
        ids = np.zeros((self.batch, longest), dtype=np.int64)
        for row, prompt in enumerate(prompts):
            ids[row, longest - len(prompt):] = prompt
            self.valid[row, longest - len(prompt):longest] = 1
        positions = np.clip(np.cumsum(self.valid[:, :longest], axis=1) - 1, 0, None)
        logits = self._write("prefill", ids, positions, {
            contract.INPUTS_EMBEDS: np.zeros((self.batch, longest, self.manifest.hidden_size), self._embed_dtype()),
            contract.EMBEDS_MASK: np.zeros((self.batch, longest), dtype=np.int64),
        })
        self.positions = self.valid[:, :longest].sum(axis=1)
        return logits

    def coprocess(self, feeds: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """The coprocessor over the cache so far: latents ``[batch, N_L, hidden]`` for the next positions."""
        return self.backend.run("coprocessor", feeds or self.coprocessor_feeds())[contract.LATENTS]

    def coprocessor_feeds(self) -> dict[str, np.ndarray]:
        """The coprocessor's inputs for the current state (a snapshot: copies, safe to use from a thread)."""
        if not self.num_latents:
            raise LatentcacheError("these artifacts were exported without a coprocessor: re-export with --coprocessor")
        return {
            contract.POSITION_IDS: self.positions[:, None] + np.arange(self.num_latents),
            contract.ATTENTION_MASK: self.valid[:, : self.length].copy(),
        }

    def absorb(self, latents: np.ndarray) -> np.ndarray:
        """Append the latents to the base cache (prefill graph, embeddings rows); returns the next logits."""
        count = latents.shape[1]
        self._check_room(count)
        return self._append("prefill", np.zeros((self.batch, count), dtype=np.int64), {
            contract.INPUTS_EMBEDS: latents.astype(self._embed_dtype(), copy=False),
            contract.EMBEDS_MASK: np.ones((self.batch, count), dtype=np.int64),
        })

    def decode_step(self, tokens: np.ndarray) -> np.ndarray:
        """Write one token per row; returns the logits ``[batch, vocab]`` for the next."""
        self._check_room(1)
        return self._append("decode", tokens.reshape(self.batch, 1).astype(np.int64), {})

    # -- generation ------------------------------------------------------------------------------
    def generate(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        sampling: Sampling = Sampling(),
        stop_ids: tuple[int, ...] = (),
        policy: "Policy | None" = None,
        stats: RequestStats | None = None,
    ) -> Iterator[np.ndarray]:
        """Yield ``[batch]`` token arrays; stops at ``max_new_tokens`` or once every row has hit a stop id."""
        policy = policy or NoAugmentation()
        stats = stats if stats is not None else RequestStats()
        rng = np.random.default_rng(sampling.seed)
        start = time.perf_counter()
        logits = self.prefill(prompts)
        stats.prompt_tokens, stats.prefill_s = int(self.length), time.perf_counter() - start
        policy.start(self)
        try:
            finished = np.zeros(self.batch, dtype=bool)
            for step in range(max_new_tokens):
                logits = policy.maybe_augment(self, logits, step, stats)
                tokens = sample(logits, sampling, rng)
                tokens = np.where(finished, tokens if not stop_ids else stop_ids[0], tokens)
                if step == 0:
                    stats.first_token_s = time.perf_counter() - start
                yield tokens
                finished |= np.isin(tokens, stop_ids)
                if finished.all() or step == max_new_tokens - 1:
                    break
                tick = time.perf_counter()
                logits = self.decode_step(tokens)
                stats.step_s.append(time.perf_counter() - tick)
        finally:
            # Also when the caller closes the stream early: an async coprocessor still reading the cache must
            # be done before the next request resets it.
            policy.finish(self)

    def augment(self, stats: RequestStats | None = None, generated: int = 0) -> np.ndarray:
        """coprocess + absorb now; returns the logits after the latents."""
        tick = time.perf_counter()
        logits = self.absorb(self.coprocess())
        if stats is not None:
            stats.augment_s.append(time.perf_counter() - tick)
            stats.augmented_at.append(generated)
        return logits

    # -- internals -------------------------------------------------------------------------------
    def _append(self, graph: str, ids: np.ndarray, extra: dict) -> np.ndarray:
        """Write ``count`` rows after everything so far, at the next positions of every row."""
        count = ids.shape[1]
        self.valid[:, self.length:self.length + count] = 1
        logits = self._write(graph, ids, self.positions[:, None] + np.arange(count), extra)
        self.positions = self.positions + count
        return logits

    def _write(self, graph: str, ids: np.ndarray, positions: np.ndarray, extra: dict) -> np.ndarray:
        start, count = self.length, ids.shape[1]
        feeds = {
            contract.INPUT_IDS: ids,
            contract.POSITION_IDS: positions.astype(np.int64),
            contract.WRITE_INDEX: np.full(self.batch, start, dtype=np.int64),
            contract.ATTENTION_MASK: self.valid[:, : start + count],
            **extra,
        }
        logits = self.backend.run(graph, feeds)[contract.LOGITS]
        self.length = start + count
        return logits

    def _check_room(self, count: int) -> None:
        if self.length + count > self.capacity:
            raise LatentcacheError(
                f"the kv-cache holds {self.capacity} slots and {self.length + count} are needed: "
                "shorten the prompt or --max-new-tokens, or re-export with a larger --max-seq"
            )

    def _embed_dtype(self):
        return np.float16 if self.manifest.dtype == "float16" else np.float32


class Policy:
    """When to call the coprocessor. Subclasses override ``maybe_augment`` (and ``start``/``finish``)."""

    def start(self, generator: Generator) -> None:
        pass

    def maybe_augment(self, generator: Generator, logits: np.ndarray, step: int, stats: RequestStats) -> np.ndarray:
        return logits

    def finish(self, generator: Generator) -> None:
        pass


class NoAugmentation(Policy):
    """The base model alone: exactly its tokens."""


class EndOfPrompt(Policy):
    """The paper: once, right after the prompt."""

    def maybe_augment(self, generator, logits, step, stats):
        return generator.augment(stats, step) if step == 0 else logits


class EveryN(Policy):
    """Once after the prompt and again after every ``n`` generated tokens (beyond the paper)."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise LatentcacheError(f"--every must be at least 1, got {n}")
        self.n = n

    def maybe_augment(self, generator, logits, step, stats):
        return generator.augment(stats, step) if step % self.n == 0 else logits


class Entropy(Policy):
    """Only when some row's next-token entropy (nats) exceeds ``threshold`` (beyond the paper)."""

    def __init__(self, threshold: float) -> None:
        if not math.isfinite(threshold):  # NaN fails every comparison: the coprocessor would silently never run
            raise LatentcacheError(f"the entropy threshold must be a finite number of nats, got {threshold!r}")
        self.threshold = threshold

    def maybe_augment(self, generator, logits, step, stats):
        shifted = logits - logits.max(axis=-1, keepdims=True)
        probs = np.exp(shifted)
        probs /= probs.sum(axis=-1, keepdims=True)
        entropy = -(probs * np.log(np.clip(probs, 1e-30, None))).sum(axis=-1)
        return generator.augment(stats, step) if (entropy > self.threshold).any() else logits


class Async(Policy):
    """The paper's appendix A.5: decoding starts at once; the coprocessor runs beside it on the prompt's
    cache, and its latents are absorbed (at the current end, next positions) when it has finished.

    The coprocessor reads slots ``0..prompt-1`` only, while decoding writes later slots of the same
    buffers, so the two never touch the same memory.
    """

    thread: threading.Thread | None = None  # the running coprocessor; None before start and after finish

    def start(self, generator):
        self.latents, self.error = None, None
        feeds = generator.coprocessor_feeds()
        self.thread = threading.Thread(target=self._run, args=(generator, feeds), daemon=True)
        self.thread.start()

    def _run(self, generator, feeds):
        try:
            self.latents = generator.coprocess(feeds)
        except Exception as exc:  # surfaced on the main thread at the next step
            self.error = exc

    def maybe_augment(self, generator, logits, step, stats):
        if self.thread is None or self.thread.is_alive():
            return logits
        self.thread.join()
        self.thread = None
        if self.error is not None:
            raise self.error
        tick = time.perf_counter()
        logits = generator.absorb(self.latents)
        stats.augment_s.append(time.perf_counter() - tick)
        stats.augmented_at.append(step)
        return logits

    def finish(self, generator):
        if self.thread is not None:
            self.thread.join()
            self.thread = None


POLICIES = ("none", "end-of-prompt", "every-n", "entropy", "async")


def make_policy(name: str, every: int = 32, entropy: float = 2.5) -> Policy:
    if name == "none":
        return NoAugmentation()
    if name == "end-of-prompt":
        return EndOfPrompt()
    if name == "every-n":
        return EveryN(every)
    if name == "entropy":
        return Entropy(entropy)
    if name == "async":
        return Async()
    raise LatentcacheError(f"unknown policy '{name}': choose one of {', '.join(POLICIES)}")
