"""Text in, text out on the PyTorch reference decoder (what `latentcache generate` runs)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from latentcache.errors import CheckpointError, LatentcacheError
from latentcache.sampling import Sampling


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: no usable tokenizer ({exc})") from exc


def encode_prompt(tokenizer, prompt: str, chat: bool) -> list[int]:
    """Token ids of ``prompt``, inside the chat template (with the assistant turn opened) when asked."""
    if not prompt.strip():
        raise LatentcacheError("the prompt is empty; pass some text")
    if chat and tokenizer.chat_template:
        return list(tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=False
        ))
    return tokenizer.encode(prompt)


def generate_text(base: Path, prompt: str, max_new_tokens: int, sampling: Sampling, chat: bool) -> Iterator[str]:
    """Stream the decoded continuation of ``prompt`` piece by piece (stops at an end-of-sequence token)."""
    import torch

    from latentcache.model import load_decoder
    from latentcache.model.generate import stream_tokens
    from latentcache.text import stream_text

    decoder = load_decoder(base)
    tokenizer = load_tokenizer(base)
    ids = encode_prompt(tokenizer, prompt, chat)
    limit = decoder.config.max_position_embeddings
    if len(ids) + max_new_tokens > limit:
        raise LatentcacheError(
            f"prompt ({len(ids)} tokens) plus --max-new-tokens {max_new_tokens} exceeds the model's {limit} positions"
        )
    stops = set(decoder.config.eos_token_ids) | ({tokenizer.eos_token_id} - {None})
    tokens = stream_tokens(decoder, torch.tensor([ids]), max_new_tokens=max_new_tokens, sampling=sampling,
                           stop_ids=sorted(stops))
    yield from stream_text((int(token[0]) for token in tokens),
                           lambda seen: tokenizer.decode(seen, skip_special_tokens=True), stops)
