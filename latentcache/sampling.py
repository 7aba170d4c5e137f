"""Sampling settings and a numpy sampler: shared by the PyTorch reference and the torch-free runtime."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from latentcache.errors import LatentcacheError


MAX_SEED = 2**63 - 1  # numpy's and torch's seeds are unsigned 64-bit; the server's bound is the same


@dataclass(frozen=True)
class Sampling:
    """Greedy when ``temperature == 0``; otherwise temperature, then top-k, then top-p, seeded."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("temperature", "top_p"):
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


def sample(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> np.ndarray:
    """Next token ids ``[batch]`` from logits ``[batch, vocab]`` (same rules as the torch reference)."""
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
