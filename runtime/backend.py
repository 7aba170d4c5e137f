"""One interface for every backend (after Polygraphy's runners): load the graphs once, own the cache, run.

A backend holds the artifacts' graphs and one kv-cache (allocated once, on its device), and runs a graph
by *role*: ``run("decode", {"input_ids": ..., "position_ids": ..., "write_index": ..., "attention_mask":
...})`` returns ``{"logits": ...}`` (or ``{"latents": ...}`` for the coprocessor) as host numpy arrays,
while the cache is read and updated where it lives (past and present bound to the same buffer wherever
the backend allows). ``attention_mask`` may be shorter than the cache capacity (the live span); a backend
that wants static shapes (CUDA graphs) pads it with zeros. Tensor names come from the manifest only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from latentcache.contract.manifest import Manifest
from latentcache.errors import BackendUnavailable

__all__ = ["Backend", "BackendUnavailable"]


class Backend(ABC):
    name: str = ""
    # Prompt widths this backend runs prefill at from fixed buffers (CUDA graphs): the generator left-pads a prompt
    # to the smallest that holds it, when the cache has the room, as it left-pads the shorter prompts of a batch.
    prefill_buckets: tuple[int, ...] = ()

    def __init__(self, artifacts: Path, manifest: Manifest) -> None:
        self.artifacts, self.manifest = Path(artifacts), manifest

    @abstractmethod
    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run ``graph`` with non-cache inputs by role; returns non-cache outputs by role (host arrays)."""

    @abstractmethod
    def reset(self) -> None:
        """Zero the cache (a new request); no reallocation."""

    @abstractmethod
    def read_cache(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """Host copies of layer ``layer``'s keys and values ``[batch, kv_heads, max_seq, head_dim]`` (tests)."""

    def close(self) -> None:
        """Release sessions/engines and device memory."""

    def describe(self) -> str:
        return self.name
