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

from latentcache.contract import manifest as contract
from latentcache.errors import LatentcacheError
from latentcache.runtime.backend import Backend
from latentcache.sampling import GREEDY, Sampling, sample

# Why a request ended (``RequestStats.stop_reason``): every row emitted a stop id (end of sequence); a stop string
# matched (the server's ``stop``); ``max_new_tokens`` were generated; the kv-cache was full (``max_new_tokens``
# clamped before prefill, or a data-dependent schedule outgrew its reservation); the caller closed the stream.
STOP_REASONS = ("eos", "stop_string", "max_tokens", "capacity", "cancelled")


@dataclass
class RequestStats:
    """What happened in one ``generate`` call (times in seconds, from ``time.perf_counter``)."""

    prompt_tokens: int = 0
    prefill_s: float = 0.0
    augment_s: list[float] = field(default_factory=list)  # coprocess + absorb, per augmentation
    augmented_at: list[int] = field(default_factory=list)  # generated tokens before each absorption
    step_s: list[float] = field(default_factory=list)  # per decode step
    first_token_s: float = 0.0  # from the start of prefill to the first token being available
    token_budget: int = 0  # max_new_tokens, clamped before prefill to what the kv-cache holds
    new_tokens: int = 0  # tokens generated per row
    stop_reason: str = ""  # one of STOP_REASONS once the request has ended


class CapacityError(LatentcacheError):
    """The kv-cache has no room for what a request needs."""


@dataclass(frozen=True)
class Capacity:
    """The kv-cache slots one request needs: the one place that counts them (run, chat, bench and serve ask it
    before prefill).

    A request writes its prompt, ``per_augmentation`` slots for every augmentation its policy may make over
    ``new_tokens`` (``Policy.augmentations``), and every generated token but the last (yielded, never written).
    """

    slots: int
    num_latents: int
    refeeds: bool = True  # ``manifest.refeeds``: the last token is fed again after the latents

    @property
    def per_augmentation(self) -> int:
        """The latents, plus one slot for the re-fed last token where the augmentation re-feeds it."""
        return self.num_latents + int(self.refeeds and self.num_latents > 0)

    def latent_slots(self, new_tokens: int, policy: Policy) -> int:
        return policy.augmentations(new_tokens) * self.per_augmentation

    def needed(self, prompt: int, new_tokens: int, policy: Policy) -> int:
        return prompt + self.latent_slots(new_tokens, policy) + max(new_tokens - 1, 0)

    def most(self, prompt: int, policy: Policy, limit: int | None = None) -> int:
        """The largest number of new tokens (at most ``limit``) that fits after ``prompt``; 0 when none does."""
        low, high = 0, max(self.slots - prompt + 1, 0)
        if limit is not None:
            high = min(high, limit)
        while low < high:  # needed() grows with new_tokens: the largest n with needed(n) <= slots
            middle = (low + high + 1) // 2
            if self.needed(prompt, middle, policy) <= self.slots:
                low = middle
            else:
                high = middle - 1
        return low


class Generator:
    def __init__(self, backend: Backend) -> None:
        self.backend, self.manifest = backend, backend.manifest
        kv = self.manifest.kv
        self.batch, self.capacity = kv.batch, kv.max_seq
        self.valid = np.zeros((self.batch, self.capacity), dtype=np.int64)
        self.positions = np.zeros(self.batch, dtype=np.int64)
        self.last_tokens = np.zeros(self.batch, dtype=np.int64)  # the token in slot length - 1, per row
        self.length = 0
        self.num_latents = self.manifest.num_latents
        self.budget = Capacity(self.capacity, self.num_latents, self.manifest.refeeds)

    # -- the graphs ------------------------------------------------------------------------------
    def prefill(self, prompts: list[list[int]], spare: int = 0) -> np.ndarray:
        """Reset the cache and write the left-padded prompts; returns the logits ``[batch, vocab]``. With ``spare``
        slots the request will not need, the prompts are padded further to one of the backend's prefill buckets
        (pad slots are empty: nothing attends them)."""
        longest = self._check_prompts(prompts)
        longest = min((b for b in self.backend.prefill_buckets if longest <= b <= longest + spare), default=longest)
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
        self.last_tokens = ids[:, -1].copy()  # left-padded: every row's last prompt token is in the last column
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
        """Append the latents to the base cache (prefill graph, embeddings rows); returns the next logits.

        With a re-feeding augmentation (``manifest.refeeds``) the rows are [latents, last token]: the token again
        at its own position, its old slot emptied, latent slots marked ``LATENT_SLOT`` so the graphs gate them;
        the next position stays where it was (``latentcache.model.layout``)."""
        count = latents.shape[1]
        if not self.manifest.refeeds:
            self._check_room(count)
            return self._append("prefill", np.zeros((self.batch, count), dtype=np.int64), {
                contract.INPUTS_EMBEDS: latents.astype(self._embed_dtype(), copy=False),
                contract.EMBEDS_MASK: np.ones((self.batch, count), dtype=np.int64),
            })
        self._check_room(count + 1)
        start = self.length
        embeds = np.zeros((self.batch, count + 1, latents.shape[2]), dtype=self._embed_dtype())
        embeds[:, :count] = latents
        ids = np.zeros((self.batch, count + 1), dtype=np.int64)
        ids[:, count] = self.last_tokens
        flags = np.zeros((self.batch, count + 1), dtype=np.int64)
        flags[:, :count] = 1
        positions = np.concatenate((self.positions[:, None] + np.arange(count), self.positions[:, None] - 1), axis=1)
        self.valid[:, start - 1] = contract.EMPTY_SLOT
        self.valid[:, start:start + count] = self.manifest.latent_slot_value
        self.valid[:, start + count] = contract.TOKEN_SLOT
        return self._write("prefill", ids, positions, {contract.INPUTS_EMBEDS: embeds, contract.EMBEDS_MASK: flags})

    def decode_step(self, tokens: np.ndarray) -> np.ndarray:
        """Write one token per row; returns the logits ``[batch, vocab]`` for the next."""
        self._check_room(1)
        self.last_tokens = tokens.reshape(self.batch).astype(np.int64)
        return self._append("decode", tokens.reshape(self.batch, 1).astype(np.int64), {})

    # -- the kv-cache budget ----------------------------------------------------------------------
    def plan(self, prompt: int, max_new_tokens: int, policy: Policy) -> int:
        """``max_new_tokens`` clamped to what fits after a prompt of ``prompt`` tokens under ``policy``; raises
        ``CapacityError`` (before any work) when not even one token fits."""
        budget = self.budget.most(prompt, policy, max_new_tokens)
        if budget == 0:
            latents = self.budget.latent_slots(1, policy)
            plus = f" + {latents} slots for the coprocessor's latents" if latents else ""
            fixes = "shorten the prompt, pass --no-coprocessor," if latents else "shorten the prompt"
            raise CapacityError(f"the prompt is {prompt} tokens{plus} and the kv-cache holds {self.capacity} "
                                f"slots: no room for an answer; {fixes} or re-export with a larger --max-seq")
        return budget

    # -- generation ------------------------------------------------------------------------------
    def generate(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        sampling: Sampling = GREEDY,
        stop_ids: tuple[int, ...] = (),
        policy: Policy | None = None,
        stats: RequestStats | None = None,
    ) -> Iterator[np.ndarray]:
        """Yield ``[batch]`` token arrays until every row has hit a stop id, ``max_new_tokens`` are out or the
        kv-cache is full; ``stats.stop_reason`` says which (``STOP_REASONS``). The capacity is checked before
        prefill: ``max_new_tokens`` is clamped to what fits, and a prompt that leaves no room raises."""
        policy = policy or NoAugmentation()
        stats = stats if stats is not None else RequestStats()
        prompt = self._check_prompts(prompts)  # the longest
        budget = self.plan(prompt, max_new_tokens, policy)
        stats.token_budget, stats.new_tokens, stats.stop_reason = budget, 0, ""
        rng = np.random.default_rng(sampling.seed)
        history = [list(prompt) for prompt in prompts]  # per row, prompt included (the penalties read it)
        start = time.perf_counter()
        logits = self.prefill(prompts, spare=self.capacity - self.budget.needed(prompt, budget, policy))
        stats.prompt_tokens, stats.prefill_s = prompt, time.perf_counter() - start
        policy.start(self)
        try:
            finished = np.zeros(self.batch, dtype=bool)
            for step in range(budget):
                try:
                    logits = policy.maybe_augment(self, logits, step, stats)
                except CapacityError:  # only a data-dependent schedule (entropy) outgrows its reservation
                    stats.stop_reason = "capacity"
                    return
                tokens = sample(logits, sampling, rng, history)
                tokens = np.where(finished, tokens if not stop_ids else stop_ids[0], tokens)
                finished |= np.isin(tokens, stop_ids)
                stats.new_tokens = step + 1
                if step == 0:
                    stats.first_token_s = time.perf_counter() - start
                # Decided before the yield: a consumer that stops at a stop id never resumes this generator.
                last = finished.all() or step == budget - 1 or self.length + 1 > self.capacity
                if last:
                    stats.stop_reason = ("eos" if finished.all() else
                                         "max_tokens" if step == max_new_tokens - 1 else "capacity")
                yield tokens
                if last:
                    break
                for row, token in zip(history, tokens.tolist()):
                    row.append(token)
                tick = time.perf_counter()
                logits = self.decode_step(tokens)
                stats.step_s.append(time.perf_counter() - tick)
        finally:
            if not stats.stop_reason:  # the caller closed the stream (or an error ended it)
                stats.stop_reason = "cancelled"
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

    def _check_prompts(self, prompts: list[list[int]]) -> int:
        """The longest prompt's length, after checking the batch size and that no prompt is empty."""
        if len(prompts) != self.batch:
            raise LatentcacheError(f"these artifacts run batches of {self.batch} prompts, got {len(prompts)}: "
                                   "re-export with --batch or pass that many prompts")
        if min(len(p) for p in prompts) == 0:
            raise LatentcacheError("a prompt is empty: pass some text")
        return max(len(p) for p in prompts)

    def _check_room(self, count: int) -> None:
        if self.length + count > self.capacity:
            raise CapacityError(
                f"the kv-cache holds {self.capacity} slots and {self.length + count} are needed: "
                "shorten the prompt or --max-new-tokens, or re-export with a larger --max-seq"
            )

    def _embed_dtype(self):
        return np.float16 if self.manifest.dtype == "float16" else np.float32


class Policy:
    """When to call the coprocessor. Subclasses override ``maybe_augment`` (and ``start``/``finish``), and
    ``augmentations`` for the kv-cache slots to reserve."""

    def augmentations(self, new_tokens: int) -> int:
        """How many augmentations to reserve kv-cache slots for over ``new_tokens`` generated tokens."""
        return 0

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

    def augmentations(self, new_tokens):
        return min(new_tokens, 1)

    def maybe_augment(self, generator, logits, step, stats):
        return generator.augment(stats, step) if step == 0 else logits


class EveryN(Policy):
    """Once after the prompt and again after every ``n`` generated tokens (beyond the paper)."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise LatentcacheError(f"--every must be at least 1, got {n}")
        self.n = n

    def augmentations(self, new_tokens):
        return math.ceil(new_tokens / self.n)  # at steps 0, n, 2n, ... below new_tokens

    def maybe_augment(self, generator, logits, step, stats):
        return generator.augment(stats, step) if step % self.n == 0 else logits


class Entropy(Policy):
    """Only when some row's next-token entropy (nats) exceeds ``threshold`` (beyond the paper)."""

    def __init__(self, threshold: float) -> None:
        if not math.isfinite(threshold):  # NaN fails every comparison: the coprocessor would silently never run
            raise LatentcacheError(f"the entropy threshold must be a finite number of nats, got {threshold!r}")
        self.threshold = threshold

    def augmentations(self, new_tokens):
        # The count depends on the text: only the first is reserved; the answer ends with stop reason
        # "capacity" when a later one finds the cache full.
        return min(new_tokens, 1)

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

    def augmentations(self, new_tokens):
        return min(new_tokens, 1)  # absorbed at most once

    def start(self, generator):
        self.latents, self.error = None, None
        feeds = generator.coprocessor_feeds()
        self.thread = threading.Thread(target=self._run, args=(generator, feeds), daemon=True)
        self.thread.start()

    def _run(self, generator, feeds):
        try:
            self.latents = generator.coprocess(feeds)
        except Exception as exc:  # noqa: BLE001 - surfaced on the main thread at the next step
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
