"""Reference generation on the owned decoder: one prefill, then single-token decode steps on a static cache."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from latentcache.model.decoder import Decoder, KVCache
from latentcache.model.masks import causal_mask, positions_from_padding
from latentcache.sampling import Sampling


def sample_next(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> torch.Tensor:
    """Next token ids ``[batch]`` from last-position logits ``[batch, vocab]``."""
    if sampling.temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / sampling.temperature
    if sampling.top_k:
        kth = torch.topk(logits, min(sampling.top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1:
        sorted_logits, order = logits.sort(-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= sampling.top_p  # keep the token crossing top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def stream_tokens(
    decoder: Decoder,
    input_ids: torch.Tensor,
    valid: torch.Tensor | None = None,
    max_new_tokens: int = 32,
    sampling: Sampling = Sampling(),
    stop_ids: Sequence[int] = (),
) -> Iterator[torch.Tensor]:
    """Yield the next token ``[batch]`` per step for left-padded prompts ``input_ids [batch, seq]``.

    ``valid [batch, seq]`` marks real tokens (default: all). Rows that emitted a stop id keep yielding it;
    the stream ends when every row has stopped or ``max_new_tokens`` are out.
    """
    batch, prompt_len = input_ids.shape
    device = input_ids.device
    valid = torch.ones_like(input_ids, dtype=torch.bool) if valid is None else valid.bool()
    capacity = prompt_len + max_new_tokens
    cache = KVCache(decoder.config, batch, capacity, decoder.embed_tokens.weight.dtype, device)
    valid_slots = torch.zeros(batch, capacity, dtype=torch.bool, device=device)
    valid_slots[:, :prompt_len] = valid
    positions = positions_from_padding(valid)
    generator = torch.Generator(device=device).manual_seed(sampling.seed) if sampling.temperature else None
    stops = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)

    mask = causal_mask(valid_slots[:, :prompt_len], torch.arange(prompt_len, device=device))
    hidden = decoder(input_ids, position_ids=positions, attention_mask=mask, cache=cache, write_index=0)
    position = positions[:, -1:]
    for step in range(max_new_tokens):
        token = sample_next(decoder.logits(hidden[:, -1]), sampling, generator)
        token = torch.where(done, stops[0] if len(stops) else token, token)
        done |= torch.isin(token, stops)
        yield token
        if bool(done.all()) or step == max_new_tokens - 1:
            return
        slot = prompt_len + step
        valid_slots[:, slot] = True
        position = position + 1
        mask = causal_mask(valid_slots[:, : slot + 1], torch.tensor([slot], device=device))
        hidden = decoder(token[:, None], position_ids=position, attention_mask=mask, cache=cache, write_index=slot)


def generate(decoder: Decoder, input_ids: torch.Tensor, valid: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    """All new tokens ``[batch, n]`` (see ``stream_tokens`` for the arguments)."""
    return torch.stack(list(stream_tokens(decoder, input_ids, valid, **kwargs)), dim=1)
