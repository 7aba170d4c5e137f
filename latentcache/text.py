"""Streaming detokenization shared by the torch reference (``latentcache generate``) and the runtime."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from latentcache.errors import LatentcacheError


def check_text(text: str, what: str = "the prompt") -> str:
    """``text`` if it is valid Unicode; invalid UTF-8 bytes (argv and stdin keep them as lone surrogates) are
    refused in one line instead of failing inside the tokenizer."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start].encode("utf-8", "surrogateescape") if "\udc80" <= text[exc.start] <= "\udcff" else b""
        detail = f"byte 0x{bad.hex()}" if bad else f"code point U+{ord(text[exc.start]):04X}"
        raise LatentcacheError(f"{what} is not valid UTF-8 ({detail} at character {exc.start}); pass UTF-8 text") \
            from None
    return text


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
