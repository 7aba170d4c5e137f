"""One request configuration for `latentcache run` and `chat`: the artifacts, backend, policy and sampling
settings, validated at construction, and the ``Session`` that answers prompts with them."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from latentcache.errors import LatentcacheError
from latentcache.runtime.pipeline import Pipeline
from latentcache.sampling import Sampling


@dataclass(frozen=True)
class RunConfig:
    artifacts: Path
    backend: str = "auto"
    coprocessor: bool = True  # False: the base model alone (also when the artifacts have no coprocessor)
    policy: str = "end-of-prompt"
    every: int = 32  # tokens between augmentations (every-n)
    entropy: float = 2.5  # nats (entropy)
    max_new_tokens: int = 256
    sampling: Sampling = field(default_factory=Sampling)
    threads: int | None = None  # ONNX Runtime's CPU threads
    chat: bool = True  # wrap prompts in the chat template

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise LatentcacheError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.every < 1:
            raise LatentcacheError(f"--every must be >= 1, got {self.every}")
        if isinstance(self.entropy, bool) or not isinstance(self.entropy, (int, float)) or \
                not math.isfinite(self.entropy):
            # NaN compares false with every entropy: the coprocessor would silently never run.
            raise LatentcacheError(f"--entropy must be a finite number of nats, got {self.entropy!r}")


class Session:
    """A loaded pipeline plus the policy and sampling of ``config``; ``answer`` streams one reply."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.pipeline = Pipeline(config.artifacts, config.backend, config.threads)
        augment = config.coprocessor and self.pipeline.has_coprocessor
        self.policy = self.pipeline.policy(augment, config.policy, every=config.every, entropy=config.entropy)

    def answer(self, prompt: str) -> Iterator[str]:
        config = self.config
        return self.pipeline.stream(prompt, config.max_new_tokens, config.sampling, self.policy, config.chat)

    def close(self) -> None:
        self.pipeline.close()
