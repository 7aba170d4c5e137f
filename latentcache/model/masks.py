"""Boolean attention masks and position ids for padded batches (True = may attend).

Padded batches are left-padded: every row's last prompt token sits in the same slot, so one write index
serves the whole batch during decoding. Padding slots are never attended to, and their own (discarded)
query rows attend only to themselves so that no row is fully masked (SDPA returns NaN for those).
Real tokens get positions 0, 1, 2, ... regardless of the padding in front of them, as in transformers.
"""

from __future__ import annotations

import torch


def positions_from_padding(valid: torch.Tensor) -> torch.Tensor:
    """Position ids ``[batch, seq]`` from a validity mask ``[batch, seq]`` (1/True = real token)."""
    return (valid.long().cumsum(-1) - 1).clamp(min=0)


def causal_mask(valid_keys: torch.Tensor, query_slots: torch.Tensor) -> torch.Tensor:
    """Mask ``[batch, q, k]``: query at slot ``s`` sees valid keys at slots ``<= s``, and always itself.

    ``valid_keys [batch, k]`` marks which of the first ``k`` cache slots hold real tokens;
    ``query_slots [q]`` are the slots the queries are written to.
    """
    key_slots = torch.arange(valid_keys.shape[-1], device=valid_keys.device)
    earlier = key_slots[None, :] <= query_slots[:, None]
    itself = key_slots[None, :] == query_slots[:, None]
    return (valid_keys.bool()[:, None, :] & earlier[None]) | itself[None]
