"""Torch inference on the owned decoder, in one loop: ``prefill`` -> optional ``augment`` (coprocess + absorb)
-> ``decode_tokens`` over a static cache.

``latentcache generate`` (``latentcache.reference``), the benchmarks of ``latentcache eval`` and the parity
tests all run these functions; the runtime runs the same steps as exported graphs (its torch backend
through ``latentcache.model.graph_steps``). Tokens are chosen by the one sampler, ``latentcache.sampling``.

A ``PromptState`` is a prompt in ``cache`` slots ``0..next_slot-1`` plus the hidden state that predicts what
follows. Batches are left-padded (``latentcache.model.masks``): every row's last token shares a slot, so one
``next_slot`` serves all rows, while ``positions`` counts real tokens per row. Without padding a slot is a
position, which is what augmentation (``latentcache.model.layout``) assumes of the prompt; a variant that
re-feeds the last token afterwards leaves slots and positions apart (``valid`` then marks the emptied slot).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from latentcache.errors import LatentcacheError
from latentcache.model.decoder import Decoder, KVCache, LatentGate
from latentcache.model.layout import group_mask, group_positions, refeeds
from latentcache.model.masks import causal_mask, positions_from_padding
from latentcache.sampling import Sampling, sample


@dataclass(frozen=True)
class PromptState:
    """A prompt in ``cache`` slots ``0..next_slot-1`` and the hidden state ``[batch, hidden]`` predicting the next token."""

    cache: KVCache
    next_slot: int
    hidden: torch.Tensor
    valid: torch.Tensor | None = None  # [batch, next_slot] bool; None: every slot holds a real token
    positions: torch.Tensor | None = None  # [batch] position of the next row; None: next_slot (no padding)
    last_tokens: torch.Tensor | None = None  # [batch] the token in the last written slot (None after latents)
    gate: LatentGate | None = None  # the latent gate over slots 0..next_slot-1 (gated augmentation)
    padded: bool = False  # some prompt rows are left-padded

    def valid_slots(self) -> torch.Tensor:
        if self.valid is not None:
            return self.valid
        return torch.ones(self.hidden.shape[0], self.next_slot, dtype=torch.bool, device=self.hidden.device)

    def next_positions(self) -> torch.Tensor:
        if self.positions is not None:
            return self.positions
        return torch.full((self.hidden.shape[0],), self.next_slot, dtype=torch.long, device=self.hidden.device)

    def gate_over(self, new_slots: int) -> LatentGate | None:
        """The gate over the slots so far plus ``new_slots`` token slots."""
        if self.gate is None:
            return None
        tokens = torch.zeros(self.gate.keys.shape[0], new_slots, dtype=torch.bool, device=self.gate.keys.device)
        return LatentGate(self.gate.bias, torch.cat((self.gate.keys, tokens), dim=1))


def augmentation_slots(coprocessor) -> int:
    """Cache slots one augmentation takes: the latents, plus the re-fed token in the variants that have one."""
    if coprocessor is None:
        return 0
    return coprocessor.config.num_latents + (1 if refeeds(coprocessor.variant) else 0)


def _as_ids(ids: Sequence[int] | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Token ids as ``[batch, n]`` on ``device`` (a plain list is one row)."""
    return ids.to(device) if torch.is_tensor(ids) else torch.tensor([list(ids)], device=device)


def prefill(base: Decoder, ids: Sequence[int] | torch.Tensor, capacity: int,
            valid: torch.Tensor | None = None) -> PromptState:
    """The base over ``ids`` (a list, or left-padded ``[batch, seq]`` with ``valid``) into a fresh cache."""
    device = base.embed_tokens.weight.device
    ids = _as_ids(ids, device)
    batch, length = ids.shape
    valid = torch.ones_like(ids, dtype=torch.bool) if valid is None else valid.to(device).bool()
    cache = KVCache(base.config, batch, capacity, base.embed_tokens.weight.dtype, device)
    positions = positions_from_padding(valid)
    mask = causal_mask(valid, torch.arange(length, device=device))
    hidden = base(ids, position_ids=positions, attention_mask=mask, cache=cache)
    padded = not bool(valid.all())
    return PromptState(cache, length, hidden[:, -1], valid if padded else None,
                       positions[:, -1] + 1 if padded else None, ids[:, -1], padded=padded)


def augment(base: Decoder, coprocessor, state: PromptState) -> PromptState:
    """Latents for the point at the prompt's last token, absorbed into the slots after it; ``None`` leaves
    ``state`` as it is. Prompts must be unpadded and not augmented yet (the latent layout counts positions in
    slots). The ``refeed``/``gated`` variants then feed the last token again (``latentcache.model.layout``)."""
    if coprocessor is None:
        return state
    if state.padded or state.valid is not None:
        raise LatentcacheError("augmentation in the torch reference needs unpadded prompts (one row, or equal lengths) "
                               "augmented once")
    length, batch = state.next_slot, state.hidden.shape[0]
    points = torch.full((batch, 1), length - 1, device=state.hidden.device)
    latents = coprocessor(state.cache, points, context_len=length).to(state.hidden.dtype)
    n_latents = latents.shape[1]
    if not refeeds(coprocessor.variant):
        hidden = base(inputs_embeds=latents, position_ids=group_positions(points, n_latents),
                      attention_mask=group_mask(points, length, n_latents), cache=state.cache, write_index=length)
        return PromptState(state.cache, length + n_latents, hidden[:, -1])
    return _absorb_and_refeed(base, coprocessor, state, latents)


def _absorb_and_refeed(base: Decoder, coprocessor, state: PromptState, latents: torch.Tensor) -> PromptState:
    """Rows [latents, last token] at slots ``length ..``: latents at positions ``p+1 ..``, the token again at ``p``
    and its old slot emptied, so what follows keeps the base's positions and predictions (gate closed)."""
    length, batch, device = state.next_slot, latents.shape[0], latents.device
    n_latents = latents.shape[1]
    p = length - 1
    rows = torch.cat((latents, base.embed(state.last_tokens[:, None]).to(latents.dtype)), dim=1)
    positions = torch.cat((torch.arange(p + 1, p + 1 + n_latents, device=device), torch.tensor([p], device=device)))
    slots = torch.arange(length + n_latents + 1, device=device)
    valid = (slots != p)[None].expand(batch, -1)
    is_latent = ((slots >= length) & (slots < length + n_latents))[None].expand(batch, -1)
    gate = coprocessor.gate(is_latent)
    hidden = base(inputs_embeds=rows, position_ids=positions[None].expand(batch, -1),
                  attention_mask=causal_mask(valid, slots[length:]), cache=state.cache, write_index=length, gate=gate)
    return PromptState(state.cache, length + n_latents + 1, hidden[:, -1], valid.clone(),
                       torch.full((batch,), length, dtype=torch.long, device=device), state.last_tokens, gate)


def extend(base: Decoder, state: PromptState, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Hidden states ``[batch, n, hidden]`` of ``ids`` written at the slots after ``state`` (which is unchanged)."""
    device = state.hidden.device
    ids = _as_ids(ids, device)
    count = ids.shape[1]
    start = state.next_slot
    slots = torch.arange(start, start + count, device=device)
    valid = torch.cat((state.valid_slots(), torch.ones_like(ids, dtype=torch.bool)), dim=1)
    positions = state.next_positions()[:, None] + torch.arange(count, device=device)
    return base(ids, position_ids=positions, attention_mask=causal_mask(valid, slots), cache=state.cache,
                write_index=start, gate=state.gate_over(count))


def advance(base: Decoder, state: PromptState, tokens: torch.Tensor) -> PromptState:
    """``state`` after one more token per row (``tokens [batch]``)."""
    hidden = extend(base, state, tokens[:, None])[:, -1]
    valid = None if state.valid is None else torch.cat((state.valid, torch.ones_like(tokens[:, None], dtype=torch.bool)), 1)
    positions = None if state.positions is None else state.positions + 1
    return PromptState(state.cache, state.next_slot + 1, hidden, valid, positions, tokens, state.gate_over(1),
                       state.padded)


def decode_tokens(base: Decoder, state: PromptState, max_new_tokens: int, sampling: Sampling = Sampling(),
                  stop_ids: Sequence[int] = (),
                  history: Sequence[Sequence[int]] | None = None) -> Iterator[torch.Tensor]:
    """Yield the next token ``[batch]`` per step after ``state``.

    Rows that emitted a stop id keep yielding it; the stream ends when every row has stopped or
    ``max_new_tokens`` are out (the last token is not written to the cache).
    """
    rng = np.random.default_rng(sampling.seed)
    history = [list(row) for row in history] if history is not None else [[] for _ in range(state.hidden.shape[0])]
    device = state.hidden.device
    stops = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
    done = torch.zeros(state.hidden.shape[0], dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        logits = base.logits(state.hidden).float().cpu().numpy()
        token = torch.from_numpy(np.asarray(sample(logits, sampling, rng, history), dtype=np.int64)).to(device)
        token = torch.where(done, stops[0] if len(stops) else token, token)
        done |= torch.isin(token, stops)
        yield token
        if bool(done.all()) or step == max_new_tokens - 1:
            return
        for row, seen in zip(history, token.tolist()):
            row.append(seen)
        state = advance(base, state, token)


@torch.no_grad()
def stream_tokens(decoder: Decoder, input_ids: torch.Tensor, valid: torch.Tensor | None = None,
                  max_new_tokens: int = 32, sampling: Sampling = Sampling(),
                  stop_ids: Sequence[int] = ()) -> Iterator[torch.Tensor]:
    """Yield the next token ``[batch]`` per step for left-padded prompts ``input_ids [batch, seq]``
    (``valid [batch, seq]`` marks real tokens; default all); see ``decode_tokens``."""
    state = prefill(decoder, input_ids, input_ids.shape[1] + max_new_tokens, valid)
    rows = input_ids.tolist() if valid is None else [ids[mask].tolist() for ids, mask in zip(input_ids, valid.bool())]
    yield from decode_tokens(decoder, state, max_new_tokens, sampling, stop_ids, rows)


def generate(decoder: Decoder, input_ids: torch.Tensor, valid: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    """All new tokens ``[batch, n]`` (see ``stream_tokens`` for the arguments)."""
    return torch.stack(list(stream_tokens(decoder, input_ids, valid, **kwargs)), dim=1)


@torch.no_grad()
def greedy_tokens(base: Decoder, state: PromptState, max_new_tokens: int, stop_ids: Iterable[int] = (),
                  stop: Callable[[list[int]], bool] | None = None) -> list[int]:
    """Greedy continuation of one row: ends before a stop id, after ``stop(tokens)`` is true, or at the limit."""
    stop_ids = tuple(stop_ids)
    tokens: list[int] = []
    for token in decode_tokens(base, state, max_new_tokens, Sampling(), stop_ids):
        if int(token[0]) in stop_ids:
            break
        tokens.append(int(token[0]))
        if stop is not None and stop(tokens):
            break
    return tokens
