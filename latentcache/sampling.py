"""Sampling settings and a numpy sampler: shared by the PyTorch reference and the torch-free runtime.

Order of operations on the logits of each row: the penalties (repetition, then presence and frequency), then
greedy argmax when ``temperature == 0``, else temperature, top-k, top-p and a seeded draw.

Penalties read ``history``, the row's previous token ids with the prompt included:

- repetition penalty (CTRL, Keskar et al. 2019, as transformers' ``RepetitionPenaltyLogitsProcessor``): the logit
  of every token id in the history is divided by the penalty when positive and multiplied by it when negative;
  1 is off, above 1 discourages repeats;
- presence and frequency penalties (OpenAI's formula): ``logit - frequency * count - presence * (count > 0)``
  with ``count`` the token's occurrences in the history; 0 is off, positive discourages repeats. Counting the
  prompt too is what llama.cpp and text-generation-inference do (OpenAI counts only sampled tokens).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from latentcache.errors import LatentcacheError

MAX_SEED = 2**63 - 1  # numpy's and torch's seeds are unsigned 64-bit; the server's bound is the same
MAX_PENALTY = 2.0  # OpenAI's bound on presence and frequency penalties (either sign)


@dataclass(frozen=True)
class Sampling:
    """Greedy when ``temperature == 0``; otherwise temperature, then top-k, then top-p, seeded. Penalties apply
    first, in both modes."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    repetition_penalty: float = 1.0  # > 0; 1 is off
    presence_penalty: float = 0.0  # in [-2, 2]; 0 is off
    frequency_penalty: float = 0.0  # in [-2, 2]; 0 is off

    def __post_init__(self) -> None:
        for name in ("temperature", "top_p", "repetition_penalty", "presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise LatentcacheError(f"--{name.replace('_', '-')} must be a finite number, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise LatentcacheError(f"--seed must be an integer in [0, 2**63 - 1], got {self.seed!r}")
        if self.temperature < 0:
            raise LatentcacheError(f"--temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise LatentcacheError(f"--top-k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise LatentcacheError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise LatentcacheError(f"--repetition-penalty must be > 0 (1 is off), got {self.repetition_penalty}")
        for name in ("presence_penalty", "frequency_penalty"):
            if abs(getattr(self, name)) > MAX_PENALTY:
                raise LatentcacheError(f"--{name.replace('_', '-')} must be in [-2, 2] (0 is off), "
                                       f"got {getattr(self, name)}")

    @property
    def penalized(self) -> bool:
        """Whether any penalty is on (then ``sample`` needs the history)."""
        return self.repetition_penalty != 1 or self.presence_penalty != 0 or self.frequency_penalty != 0


GREEDY = Sampling()  # the default everywhere: argmax, no penalties


def sample(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator,
           history: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """Next token ids ``[batch]`` from logits ``[batch, vocab]`` (same rules as the torch reference).

    ``history``: per row, the token ids so far (prompt included); needed only when a penalty is on."""
    if sampling.penalized:
        if history is None or len(history) != logits.shape[0]:
            raise LatentcacheError("penalties need the previous token ids of every row: pass history to sample()")
        logits = penalize(logits, sampling, history)
    if sampling.temperature == 0:
        return logits.argmax(-1)
    # Shift before dividing: a tiny temperature (1e-320) then sends every non-maximal logit to -inf and the
    # maximum to 0 (exp 1), instead of inf - inf = NaN probabilities.
    logits = logits.astype(np.float64)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        logits = (logits - logits.max(-1, keepdims=True)) / sampling.temperature
    logits = np.where(np.isnan(logits), 0.0, logits)  # 0/tiny of the maximum itself (never NaN otherwise)
    if sampling.top_k:
        kth = np.sort(logits, axis=-1)[:, -min(sampling.top_k, logits.shape[-1])][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    if sampling.top_p < 1:
        order = np.argsort(-probs, axis=-1)
        sorted_probs = np.take_along_axis(probs, order, -1)
        drop_sorted = np.cumsum(sorted_probs, -1) - sorted_probs >= sampling.top_p  # keep the token crossing top_p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, -1)
        probs = np.where(drop, 0.0, probs)
        probs /= probs.sum(-1, keepdims=True)
    return np.array([rng.choice(probs.shape[-1], p=row) for row in probs])


def penalize(logits: np.ndarray, sampling: Sampling, history: Sequence[Sequence[int]]) -> np.ndarray:
    """A copy of ``logits [batch, vocab]`` with the repetition, presence and frequency penalties applied per row."""
    logits = np.array(logits, copy=True)
    vocab = logits.shape[-1]
    for row, seen in enumerate(history):
        ids = np.asarray(seen, dtype=np.int64).reshape(-1)
        ids, counts = np.unique(ids[(ids >= 0) & (ids < vocab)], return_counts=True)
        if not len(ids):
            continue
        values = logits[row, ids]
        if sampling.repetition_penalty != 1:
            values = np.where(values < 0, values * sampling.repetition_penalty, values / sampling.repetition_penalty)
        values = values - sampling.frequency_penalty * counts - sampling.presence_penalty
        logits[row, ids] = values
    return logits
