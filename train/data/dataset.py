"""The packed dataset (memory-mapped sequences) and the orders and batches training reads from it."""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from latentcache.errors import DataError

if TYPE_CHECKING:
    pass


def sequence_order(length: int, seed: int | None = None, epoch: int = 0) -> np.ndarray:
    """Indices ``0..length-1``: in order without a seed, else a permutation fixed by ``(seed, epoch)``."""
    if seed is None:
        return np.arange(length)
    return np.random.default_rng((seed, epoch)).permutation(length)


def shard_indices(length: int, rank: int, world_size: int, seed: int | None = None, epoch: int = 0) -> np.ndarray:
    """This rank's indices: every ``world_size``-th entry of ``sequence_order(length, seed, epoch)`` from ``rank``.

    Ranks are disjoint and equally long (the last ``length % world_size`` entries of the order are dropped so
    every DDP rank runs the same number of steps); when ``world_size`` divides ``length`` they cover every index.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    order = sequence_order(length, seed, epoch)
    usable = len(order) - len(order) % world_size
    return order[rank:usable:world_size]


def stack_rows(dataset: Sequence, indices: Iterable[int]) -> np.ndarray:
    """int64 ``[len(indices), seq_len]`` from any sequence of token rows (a ``PackedDataset`` or a list)."""
    return np.stack([np.asarray(dataset[int(i)], dtype=np.int64) for i in indices])


def leading_batches(dataset: Sequence, count: int, batch_size: int) -> Iterator[np.ndarray]:
    """The first ``count`` rows (at most all of them), in order, as batches: fixed evaluation sets."""
    count = min(count, len(dataset))
    for start in range(0, count, batch_size):
        yield stack_rows(dataset, range(start, min(count, start + batch_size)))


class PackedDataset:
    """``num_sequences`` rows of ``seq_len`` tokens from one split's flat file, read through a memmap.

    A row may start mid-document and run across an EOS into the next document (plain packing). The memmap
    opens lazily and is not pickled, so the dataset crosses into DataLoader workers cheaply.
    """

    def __init__(self, path: Path, seq_len: int, dtype: str, num_sequences: int, doc_ids: Sequence[str] = ()):
        self.path, self.seq_len, self.dtype = Path(path), seq_len, np.dtype(dtype)
        self.num_sequences, self.doc_ids = num_sequences, tuple(doc_ids)
        expected = num_sequences * seq_len * self.dtype.itemsize
        actual = self.path.stat().st_size if self.path.is_file() else None
        if actual != expected:
            raise DataError(
                f"{self.path}: {actual if actual is not None else 'no'} bytes where meta.json promises {expected}; "
                f"the cache is corrupt, delete {self.path.parent} and run again"
            )
        self._rows: np.ndarray | None = None

    @classmethod
    def from_meta(cls, directory: Path, split: str, meta: dict) -> PackedDataset:
        info = meta["splits"][split]
        return cls(directory / info["file"], meta["seq_len"], meta["dtype"], info["num_sequences"], info["doc_ids"])

    @property
    def rows(self) -> np.ndarray:
        """[num_sequences, seq_len] read-only view of the stored dtype."""
        if self._rows is None:
            shape = (self.num_sequences, self.seq_len)
            # np.memmap refuses an empty file
            empty = self.num_sequences == 0
            self._rows = np.zeros(shape, self.dtype) if empty else np.memmap(self.path, self.dtype, "r", shape=shape)
        return self._rows

    def __len__(self) -> int:
        return self.num_sequences

    def __getitem__(self, index: int) -> np.ndarray:
        i = operator.index(index)
        if not -self.num_sequences <= i < self.num_sequences:
            raise IndexError(f"sequence {index} out of range for {self.num_sequences} sequences")
        return np.asarray(self.rows[i], dtype=np.int64)  # a plain ndarray copy, not a memmap slice

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_rows": None}

    def order(self, seed: int | None = None, epoch: int = 0) -> np.ndarray:
        """All indices: in order without a seed, else a permutation fixed by ``(seed, epoch)``."""
        return sequence_order(self.num_sequences, seed, epoch)

    def shard_indices(self, rank: int, world_size: int, seed: int | None = None, epoch: int = 0) -> np.ndarray:
        """This rank's indices (see ``shard_indices``)."""
        return shard_indices(self.num_sequences, rank, world_size, seed, epoch)

    def batches(
        self, batch_size: int, seed: int, epoch: int = 0, rank: int = 0, world_size: int = 1, drop_last: bool = True
    ) -> Iterator[np.ndarray]:
        """int64 ``[batch_size, seq_len]`` batches of this rank's shard, shuffled by ``(seed, epoch)``."""
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be >= 1")
        indices = self.shard_indices(rank, world_size, seed, epoch)
        stop = len(indices) - len(indices) % batch_size if drop_last else len(indices)
        for start in range(0, stop, batch_size):
            yield np.asarray(self.rows[indices[start : start + batch_size]], dtype=np.int64)
