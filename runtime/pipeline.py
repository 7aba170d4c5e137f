"""Text in, text out: an artifacts directory, a backend, the tokenizer and the generator in one object."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from latentcache.contract.manifest import load_manifest
from latentcache.errors import LatentcacheError
from latentcache.runtime.backends import open_backend
from latentcache.runtime.generator import Generator, Policy, RequestStats, make_policy
from latentcache.runtime.tokenizer import Tokenizer
from latentcache.sampling import GREEDY, Sampling


class Pipeline:
    def __init__(self, artifacts: str | Path, backend: str = "auto", threads: int | None = None) -> None:
        self.artifacts = Path(artifacts)
        self.manifest = load_manifest(self.artifacts)
        self.backend = open_backend(backend, self.artifacts, self.manifest, threads)
        self.tokenizer = Tokenizer(self.artifacts, self.manifest)
        self.generator = Generator(self.backend)

    @property
    def has_coprocessor(self) -> bool:
        return self.manifest.num_latents > 0

    def policy(self, coprocessor: bool, name: str = "end-of-prompt", **options) -> Policy:
        """The augmentation policy for a request; ``coprocessor=False`` is the base model alone."""
        if coprocessor and not self.has_coprocessor:
            raise LatentcacheError(
                f"{self.artifacts} has no coprocessor graph: pass --no-coprocessor or re-export with --coprocessor"
            )
        return make_policy(name if coprocessor else "none", **options)

    def token_stream(self, prompts: list[str], max_new_tokens: int, sampling: Sampling = GREEDY,
                     policy: Policy | None = None, chat: bool = True,
                     stats: RequestStats | None = None) -> Iterator[np.ndarray]:
        ids = [self.tokenizer.encode(prompt, chat) for prompt in prompts]
        return self.generator.generate(ids, max_new_tokens, sampling, self.tokenizer.stop_ids, policy, stats)

    def stream(self, prompt: str, max_new_tokens: int, sampling: Sampling = GREEDY,
               policy: Policy | None = None, chat: bool = True, stats: RequestStats | None = None) -> Iterator[str]:
        """Text pieces of the answer to one prompt (artifacts exported with --batch 1). The kv-cache is checked
        before prefill: ``max_new_tokens`` is clamped to what fits and ``stats.stop_reason`` says why the
        answer ended (``latentcache.runtime.generator.STOP_REASONS``)."""
        return self.stream_ids(self.tokenizer.encode(prompt, chat), max_new_tokens, sampling, policy, stats)

    def stream_ids(self, ids: list[int], max_new_tokens: int, sampling: Sampling = GREEDY,
                   policy: Policy | None = None, stats: RequestStats | None = None) -> Iterator[str]:
        """As ``stream``, from the prompt's token ids (a conversation already encoded, for instance)."""
        tokens = self.generator.generate([ids], max_new_tokens, sampling, self.tokenizer.stop_ids, policy, stats)
        return self.tokenizer.stream(int(step[0]) for step in tokens)

    def close(self) -> None:
        self.backend.close()
