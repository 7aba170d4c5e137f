"""Streaming detokenization shared by the torch reference (``latentcache generate``) and the runtime."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence


def stream_text(tokens: Iterable[int], decode: Callable[[list[int]], str], stop_ids: Sequence[int]) -> Iterator[str]:
    """Text pieces of ``decode(ids so far)`` as tokens arrive, ending before a stop id. Whole-prefix decoding
    keeps multi-byte characters that span tokens intact (a piece is held back while it ends in U+FFFD)."""
    ids: list[int] = []
    emitted = ""
    for token in tokens:
        if token in stop_ids:
            return
        ids.append(int(token))
        text = decode(ids)
        if not text.endswith("\ufffd"):
            yield text[len(emitted):]
            emitted = text
