"""The training objective in one pass: many augmentation points per sequence, block-masked.

1. The frozen base runs once over the sequence (no autograd) and keeps its per-layer keys/values.
2. The coprocessor runs once over all N_P groups of N_L soft tokens, reading that cache as a prefix.
3. The frozen base runs once over all N_P groups of [N_L latents, ahead tokens], again reading its own cache
   as a prefix, *with* autograd so gradients reach the latents (and the latent gate, in the gated variant).
Original tokens never see latents, so splitting the paper's single extended-sequence pass into (1) and (3)
changes nothing but saves recomputing the originals. The loss is the mean cross-entropy of the N_A
predictions per group: in the ``paper`` variant the last latent predicts ``x[p+1]``; in ``refeed``/``gated`` a
copy of ``x[p]`` after the latents does; ahead input ``x[p+k]`` predicts ``x[p+k+1]`` (the N_A-th ahead token is
never an input: its prediction would not be a target).

Packed documents (``document_ids``): no token reads across an end-of-sequence boundary. Soft tokens and
latents belong to ``p``'s document; an ahead token past an EOS belongs to the next one, so it sees neither
``p``'s context nor the latents, only the earlier ahead tokens of its own document. Every target is then
predicted from exactly the context the frozen base gets in ``baseline_logprobs`` with the same ids, plus the
latents when the predicting slot is in ``p``'s document.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from latentcache.errors import LatentcacheError
from latentcache.model import Decoder, KVCache, ModelConfig
from latentcache.model.coprocessor import Coprocessor
from latentcache.model.decoder import LatentGate
from latentcache.model.layout import decoder_offsets, group_mask, refeeds
from latentcache.model.masks import causal_mask


@dataclass
class GroupPredictions:
    """Log-probabilities of the targets, ``[batch, n_points, ahead]`` (offset k-1 = k-th token after ``p``)."""

    target_logprobs: torch.Tensor
    points: torch.Tensor

    def loss(self) -> torch.Tensor:
        return -self.target_logprobs.mean()


def document_ids(tokens: torch.Tensor, eos_id: int | None) -> torch.Tensor | None:
    """Per-token document index in a packed sequence: an end-of-sequence token closes its document."""
    if eos_id is None:
        return None
    is_eos = (tokens == eos_id).long()
    return is_eos.cumsum(-1) - is_eos


def check_positions(config: ModelConfig, seq_len: int, num_latents: int, fix: str) -> None:
    """Refuse sequences whose groups would take positions the base has no rotary range for (``fix`` says how).

    The last group sits at ``p = seq_len - 1 - N_A`` and its members take ``p + 1 .. p + N_L + N_A - 1``, so the
    highest position is ``seq_len + N_L - 2`` whatever N_A is (ahead tokens are part of the sequence).
    """
    highest = seq_len + num_latents - 2
    if highest >= config.max_position_embeddings:
        raise LatentcacheError(
            f"sequences of {seq_len} tokens plus {num_latents} latents need positions up to {highest}, beyond the "
            f"base's {config.max_position_embeddings} (max_position_embeddings); {fix}"
        )


def causal_document_mask(tokens: torch.Tensor, document_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The base's own mask over ``tokens [batch, L]``: causal, and within each token's document when given."""
    length = tokens.shape[1]
    mask = causal_mask(torch.ones_like(tokens, dtype=torch.bool), torch.arange(length, device=tokens.device))
    if document_ids is not None:
        mask &= document_ids[:, :, None] == document_ids[:, None, :]
    return mask


def base_cache_for(base: Decoder, tokens: torch.Tensor, document_ids: torch.Tensor | None = None) -> KVCache:
    """Run the frozen base over ``tokens [batch, L]`` and return its filled cache (no autograd)."""
    batch, length = tokens.shape
    cache = KVCache(base.config, batch, length, base.embed_tokens.weight.dtype, tokens.device)
    positions = torch.arange(length, device=tokens.device).expand(batch, -1)
    with torch.no_grad():
        base(tokens, position_ids=positions, attention_mask=causal_document_mask(tokens, document_ids), cache=cache,
             write_index=0)
    return cache


def ahead_inputs(tokens: torch.Tensor, points: torch.Tensor, ahead: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ahead-token inputs ``x[p+1 .. p+ahead-1]`` and targets ``x[p+1 .. p+ahead]``, each ``[B, P, n]``."""
    offsets = torch.arange(1, ahead + 1, device=tokens.device)
    index = points[:, :, None] + offsets  # [B, P, ahead]
    targets = tokens.gather(1, index.flatten(1)).view_as(index)
    return targets[:, :, :-1], targets


def group_token_inputs(tokens: torch.Tensor, points: torch.Tensor, ahead: int, variant: str) -> torch.Tensor:
    """The token members of each decoder-side group ``[B, P, n]``: ``x[p] .. x[p+ahead-1]`` when the variant
    re-feeds ``x[p]``, else ``x[p+1] .. x[p+ahead-1]``."""
    inputs, _ = ahead_inputs(tokens, points, ahead)
    if not refeeds(variant):
        return inputs
    return torch.cat((tokens.gather(1, points)[:, :, None], inputs), dim=2)


def predict_groups(
    base: Decoder,
    latents: torch.Tensor,
    cache: KVCache,
    tokens: torch.Tensor,
    points: torch.Tensor,
    ahead: int,
    document_ids: torch.Tensor | None = None,
    variant: str = "paper",
    gate_bias: torch.Tensor | None = None,
) -> GroupPredictions:
    """Frozen-base pass over every group [latents, token inputs] (``latentcache.model.layout``'s variants);
    log-probs of the ``ahead`` targets. ``gate_bias [layers, heads]`` is the gated variant's latent gate."""
    batch, n_points = points.shape
    num_latents = latents.shape[1] // n_points
    inputs = group_token_inputs(tokens, points, ahead, variant)
    _, targets = ahead_inputs(tokens, points, ahead)
    group_len = num_latents + inputs.shape[2]
    embeds = torch.cat((latents.view(batch, n_points, num_latents, -1), base.embed(inputs)), dim=2).flatten(1, 2)
    # The cache may be a cropped context (the per-point loop); a re-fed x[p] hides slot p itself.
    mask = group_mask(points, cache.max_seq, group_len, document_ids, sees_point=not refeeds(variant))
    if document_ids is not None:
        members = _member_documents(document_ids, points, num_latents, ahead, variant)  # [B, Q]
        keys = torch.cat((document_ids, members), dim=1)
        mask &= members[:, :, None] == keys[:, None, :]
    offsets = decoder_offsets(num_latents, ahead, variant, points.device)
    positions = (points[:, :, None] + offsets).flatten(1)
    gate = None
    if gate_bias is not None:
        is_latent = torch.arange(group_len, device=points.device) < num_latents
        keys = torch.cat((torch.zeros(cache.max_seq, dtype=torch.bool, device=points.device),
                          is_latent.repeat(n_points)))
        gate = LatentGate(gate_bias, keys[None].expand(batch, -1))
    hidden = base(inputs_embeds=embeds, position_ids=positions, attention_mask=mask, prefix=cache, gate=gate)
    first = num_latents if refeeds(variant) else num_latents - 1  # the member predicting x[p+1]
    predicting = hidden.view(batch, n_points, group_len, -1)[:, :, first : first + ahead]  # [B, P, ahead, H]
    logprobs = F.log_softmax(base.logits(predicting).float(), dim=-1)
    return GroupPredictions(logprobs.gather(-1, targets[..., None]).squeeze(-1), points)


def _member_documents(document_ids: torch.Tensor, points: torch.Tensor, num_latents: int, ahead: int,
                      variant: str) -> torch.Tensor:
    """Document of every group member ``[B, n_points * group_len]``: the latents are ``p``'s, token input
    ``x[p+j]`` is its own."""
    first = 0 if refeeds(variant) else 1
    offsets = torch.cat((torch.zeros(num_latents, dtype=torch.long, device=points.device),
                         torch.arange(first, ahead, device=points.device)))
    return document_ids.gather(1, (points[:, :, None] + offsets).flatten(1))


def augmented_predictions(
    base: Decoder,
    coprocessor: Coprocessor,
    tokens: torch.Tensor,
    points: torch.Tensor,
    ahead: int,
    document_ids: torch.Tensor | None = None,
    latents_transform=None,
) -> GroupPredictions:
    """The whole one-pass computation for ``tokens [B, L]`` and augmentation ``points [B, N_P]``.

    ``latents_transform`` (e.g. a batch roll for the shuffled-latents control) edits latents before use.
    """
    cache = base_cache_for(base, tokens, document_ids)
    latents = coprocessor(cache, points, document_ids, context_len=tokens.shape[1])
    if latents_transform is not None:
        latents = latents_transform(latents)
    owner = getattr(coprocessor, "module", coprocessor)  # under DDP the wrapper runs forward, the module holds the gate
    return predict_groups(base, latents, cache, tokens, points, ahead, document_ids, owner.variant, owner.latent_gate)


def baseline_logprobs(base: Decoder, tokens: torch.Tensor, points: torch.Tensor, ahead: int,
                      document_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The frozen base's log-probs of the same targets without augmentation, ``[B, P, ahead]``.

    Pass the ``document_ids`` the augmented pass got: both then read the same context (within the document).
    """
    batch, length = tokens.shape
    positions = torch.arange(length, device=tokens.device).expand(batch, -1)
    mask = causal_document_mask(tokens, document_ids)
    with torch.no_grad():
        logprobs = F.log_softmax(base.logits(base(tokens, position_ids=positions, attention_mask=mask)).float(), -1)
    _, targets = ahead_inputs(tokens, points, ahead)
    predictor = points[:, :, None] + torch.arange(ahead, device=tokens.device)  # slot predicting x[p+k+1]
    rows = logprobs.gather(1, predictor.flatten(1)[..., None].expand(-1, -1, logprobs.shape[-1]))
    return rows.gather(-1, targets.flatten(1)[..., None]).view_as(targets)
