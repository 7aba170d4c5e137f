"""Where augmentation groups sit, which positions they take, and what they may attend to.

A *group* belongs to one augmentation point ``p`` (the slot of the last context token it may read) and
holds ``G`` queries: the N_L soft tokens on the coprocessor side, or the N_L latents followed by N_A - 1
ahead tokens on the decoder side. Decisions (identical in training, export and the reference runtime):

- positions: member ``i`` of the group at point ``p`` has position ``p + 1 + i``, exactly what it gets at
  inference when the latents follow the prompt;
- context: the group sees context slots ``0..p`` (within ``p``'s document when document ids are given) and
  never a later context token;
- inside a group, member ``i`` sees members ``0..i`` (causal); groups never see each other.

One group at the end of the prompt (``points = [[prompt_len - 1]]``) is the inference case.

Variants of the decoder-side group (``VARIANTS``; the coprocessor side is the same in all of them):

- ``paper``: the literal method. The group is ``[N_L latents, x[p+1] .. x[p+N_A-1]]``; the last latent predicts
  ``x[p+1]`` and the ahead tokens take positions ``p + N_L + 1 ..`` (shifted by N_L).
- ``refeed``: the group is ``[N_L latents, x[p], x[p+1] .. x[p+N_A-1]]``. The last context token is fed again
  after the latents, at its own position ``p``, and predicts ``x[p+1]``; the ahead tokens keep their positions
  ``p + k`` (the context's relative distances are the base's own). The group then sees context ``0..p-1``: slot
  ``p`` is the token it re-feeds (at inference the runtime marks that slot empty).
- ``gated``: ``refeed`` plus a learned attention-logit bias per layer and head on the latent keys
  (``latentcache.model.decoder.LatentGate``), initialised closed: an untrained coprocessor leaves the base's
  predictions as they were, and training can only open the gate where latents help.
"""

from __future__ import annotations

import torch

from latentcache.contract.manifest import AUGMENTATIONS, REFEEDING

VARIANTS = AUGMENTATIONS  # the manifest's ``augmentation`` names the variant the artifacts were exported with


def refeeds(variant: str) -> bool:
    """Whether ``variant`` feeds the last context token again after the latents."""
    return variant in REFEEDING


def group_positions(points: torch.Tensor, group_len: int) -> torch.Tensor:
    """Position ids ``[batch, n_points * group_len]`` for groups at ``points [batch, n_points]``."""
    offsets = torch.arange(1, group_len + 1, device=points.device)
    return (points[:, :, None] + offsets).flatten(1)


def decoder_offsets(num_latents: int, ahead: int, variant: str, device=None) -> torch.Tensor:
    """Position offsets from ``p`` of the decoder-side group's members ``[group_len]`` (see the variants)."""
    latents = torch.arange(1, num_latents + 1, device=device)
    first_token = 0 if refeeds(variant) else num_latents + 1
    tokens = torch.arange(first_token, first_token + ahead - (0 if refeeds(variant) else 1), device=device)
    return torch.cat((latents, tokens))


def group_mask(
    points: torch.Tensor, context_len: int, group_len: int, document_ids: torch.Tensor | None = None,
    sees_point: bool = True,
) -> torch.Tensor:
    """Bool mask ``[batch, n_points * group_len, context_len + n_points * group_len]`` (True = attend).

    Columns ``0..context_len-1`` are context slots (a read-only prefix), the rest are the groups themselves.
    ``sees_point=False`` hides slot ``p`` itself (a group that re-feeds ``x[p]``).
    """
    batch, n_points = points.shape
    device = points.device
    slots = torch.arange(context_len, device=device)
    last_seen = points if sees_point else points - 1
    sees_context = slots[None, None, :] <= last_seen[:, :, None]  # [B, P, L]
    if document_ids is not None:
        point_docs = document_ids.gather(1, points)  # [B, P]
        sees_context &= document_ids[:, None, :] == point_docs[:, :, None]
    sees_context = sees_context.repeat_interleave(group_len, dim=1)  # [B, Q, L]
    member = torch.arange(group_len, device=device)
    causal = member[:, None] >= member[None, :]  # [G, G]
    within = torch.block_diag(*[causal] * n_points)  # [Q, Q]
    return torch.cat((sees_context, within[None].expand(batch, -1, -1)), dim=-1)


def sample_points(
    batch: int, seq_len: int, n_points: int, ahead: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``n_points`` distinct sorted insertion points per row, each followed by at least ``ahead`` tokens."""
    candidates = seq_len - ahead
    if n_points > candidates:
        raise ValueError(f"{n_points} augmentation points need at least {n_points + ahead} tokens, have {seq_len}")
    scores = torch.rand(batch, candidates, generator=generator)
    return scores.argsort(dim=-1)[:, :n_points].sort(dim=-1).values
