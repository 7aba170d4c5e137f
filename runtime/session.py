"""One request configuration for `latentcache run` and `chat`: the artifacts, backend, policy and sampling
settings, validated at construction; the ``Session`` that answers prompts with them; the ``Conversation``
that keeps a chat's turns; and the one-line reports of how an answer went."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from latentcache.errors import LatentcacheError
from latentcache.runtime.generator import RequestStats
from latentcache.runtime.pipeline import Pipeline
from latentcache.sampling import Sampling
from latentcache.text import check_text


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
    threads: int | None = None  # ONNX Runtime's CPU threads (None: the cores this process may use, at most 8)
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

    def answer(self, prompt: str, stats: RequestStats | None = None) -> Iterator[str]:
        """Text pieces of the reply to ``prompt``; ``stats`` (when given) records timings and the stop reason."""
        config = self.config
        return self.pipeline.stream(prompt, config.max_new_tokens, config.sampling, self.policy, config.chat, stats)

    def answer_ids(self, ids: list[int], stats: RequestStats | None = None) -> Iterator[str]:
        config = self.config
        return self.pipeline.stream_ids(ids, config.max_new_tokens, config.sampling, self.policy, stats)

    def stop_notice(self, stats: RequestStats) -> str | None:
        """One line for stderr when the answer was cut short (by the token limit or the kv-cache), else None."""
        if stats.stop_reason == "max_tokens":
            return (f"note: the answer was cut at --max-new-tokens {self.config.max_new_tokens} "
                    "(stop reason max_tokens); raise it for a longer answer")
        if stats.stop_reason == "capacity":
            return (f"note: the answer was cut after {stats.new_tokens} tokens: the kv-cache's "
                    f"{self.pipeline.generator.capacity} slots are full (stop reason capacity); shorten the prompt "
                    "or re-export with a larger --max-seq")
        return None

    def close(self) -> None:
        self.pipeline.close()


class Conversation:
    """A chat over one ``Session``: each turn is encoded with every earlier turn (the chat template over all
    messages; without a template or with ``chat=False``, the texts one per line). When the kv-cache cannot hold
    the conversation plus ``max_new_tokens``, the oldest turns are dropped (``dropped`` counts them, for the
    notice); the newest message alone may still leave less room, then the answer is clamped."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.messages: list[dict] = []
        self.dropped = 0  # turns (a user message and its answer) the last ``ask`` dropped

    def reset(self) -> None:
        self.messages, self.dropped = [], 0

    def ask(self, text: str, stats: RequestStats | None = None) -> Iterator[str]:
        """Fit the conversation plus ``text`` into the kv-cache now (raising, before any output, when even
        ``text`` alone leaves no room), then return the stream of the answer. The exchange joins the
        conversation when the stream ends, also when it is interrupted after some text (that text is kept)."""
        check_text(text)
        if not text.strip():
            raise LatentcacheError("the prompt is empty; pass some text")
        messages = [*self.messages, {"role": "user", "content": text}]
        ids, self.dropped = self._fit(messages)
        messages = messages[2 * self.dropped:]
        return self._reply(messages, ids, stats if stats is not None else RequestStats())

    def _fit(self, messages: list[dict]) -> tuple[list[int], int]:
        """The ids of the longest suffix of whole turns that leaves room for ``max_new_tokens``, and how many
        turns were dropped; the newest message alone if none does (``plan`` refuses it if it leaves no room)."""
        session, tokenizer = self.session, self.session.pipeline.tokenizer
        generator, wanted = session.pipeline.generator, session.config.max_new_tokens
        dropped = 0
        while True:
            ids = tokenizer.encode_messages(messages[2 * dropped:], template=session.config.chat)
            if len(messages) - 2 * dropped == 1 or generator.budget.most(len(ids), session.policy, wanted) == wanted:
                generator.plan(len(ids), wanted, session.policy)  # the newest message alone: room for an answer?
                return ids, dropped
            dropped += 1

    def _reply(self, messages: list[dict], ids: list[int], stats: RequestStats) -> Iterator[str]:
        pieces: list[str] = []
        stream = self.session.answer_ids(ids, stats)
        try:
            for piece in stream:
                pieces.append(piece)
                yield piece
        finally:
            stream.close()  # the generator's own cleanup first, so that its stop reason is final
            if pieces or stats.stop_reason != "cancelled":  # nothing said before an interruption: as if never asked
                self.messages = [*messages, {"role": "assistant", "content": "".join(pieces)}]


def format_stats(stats: RequestStats) -> str:
    """``run --stats``: tokens, the stop reason and where the time went, on two lines."""
    steps = stats.step_s
    decode = (f"decode {1000 * sum(steps) / len(steps):.2f} ms/token ({len(steps) / sum(steps):.1f} tokens/s)"
              if steps and sum(steps) > 0 else "decode -")
    augment = (f"coprocessor + absorb {1000 * sum(stats.augment_s):.1f} ms ({len(stats.augment_s)}x, after "
               f"{', '.join(map(str, stats.augmented_at))} tokens)" if stats.augment_s else "coprocessor off")
    tokens = (f"stats: prompt {stats.prompt_tokens} tokens, generated {stats.new_tokens} of {stats.token_budget}, "
              f"stop reason {stats.stop_reason}")
    times = (f"stats: prefill {1000 * stats.prefill_s:.1f} ms, time to first token {1000 * stats.first_token_s:.1f} "
             f"ms, {augment}, {decode}")
    return f"{tokens}\n{times}"
