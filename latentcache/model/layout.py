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
"""

from __future__ import annotations

import torch


def group_positions(points: torch.Tensor, group_len: int) -> torch.Tensor:
    """Position ids ``[batch, n_points * group_len]`` for groups at ``points [batch, n_points]``."""
    offsets = torch.arange(1, group_len + 1, device=points.device)
    return (points[:, :, None] + offsets).flatten(1)


def group_mask(
    points: torch.Tensor, context_len: int, group_len: int, document_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Bool mask ``[batch, n_points * group_len, context_len + n_points * group_len]`` (True = attend).

    Columns ``0..context_len-1`` are context slots (a read-only prefix), the rest are the groups themselves.
    """
    batch, n_points = points.shape
    device = points.device
    slots = torch.arange(context_len, device=device)
    sees_context = slots[None, None, :] <= points[:, :, None]  # [B, P, L]
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
