"""Corpus settings (``CorpusConfig``) and the split rule: which document goes to train or validation."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Union

from latentcache.errors import DataError

if TYPE_CHECKING:
    pass


PathLike = Union[str, os.PathLike]

# Bump when the cache layout or the way text becomes tokens changes: every old cache then misses.
DATA_FORMAT_VERSION = 1
SPLITS = ("train", "validation")
META_FILE = "meta.json"
# Files a directory contributes (an explicitly named file is read as text whatever its suffix).
TEXT_SUFFIXES = (".txt", ".md", ".text", ".raw")
JSONL_SUFFIX = ".jsonl"
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2")
# encode_batch parallelises across the documents of one call: a chunk must hold several documents to keep
# every core busy, yet its encodings (~75 bytes a token) must stay in the low hundreds of MB.
CHUNK_CHARS = 8_000_000
CHUNK_DOCS = 4096

ByteCounter = Callable[[int], object]


class Document(NamedTuple):
    doc_id: str
    text: str






@dataclass(frozen=True)
class CorpusConfig:
    """Everything that decides the cached sequences; all of it goes into the fingerprint.

    ``holdout`` and ``exclude`` are id substrings: an id containing an ``exclude`` pattern is dropped, one
    containing a ``holdout`` pattern goes to validation, the rest split by ``val_fraction`` on a hash of the id.
    ``eval_only`` sends every document that is not excluded to validation (a test set such as WikiText).
    ``tokenizer_path`` may name a checkpoint directory holding ``tokenizer.json``.
    """

    sources: tuple[Path, ...]
    tokenizer_path: Path
    seq_len: int
    val_fraction: float = 0.05
    holdout: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    eos_id: int | None = None
    jsonl_field: str = "text"
    eval_only: bool = False

    def __post_init__(self) -> None:
        assign = object.__setattr__  # frozen: normalise the fields once, here
        assign(self, "sources", tuple(Path(p) for p in _as_tuple(self.sources)))
        assign(self, "tokenizer_path", _tokenizer_file(Path(self.tokenizer_path)))
        assign(self, "holdout", _patterns(self.holdout, "holdout"))
        assign(self, "exclude", _patterns(self.exclude, "exclude"))
        if not self.sources:
            raise DataError("no sources given; pass at least one file, directory, tar archive or .jsonl file")
        for path in self.sources:
            _require_exists(path)
        if isinstance(self.seq_len, bool) or not isinstance(self.seq_len, int) or self.seq_len < 2:
            raise DataError(f"seq_len={self.seq_len!r}: must be an integer >= 2 (an input and a target token)")
        if not 0 <= self.val_fraction < 1:
            raise DataError(f"val_fraction={self.val_fraction!r}: must be in [0, 1); holdout picks whole sources")
        if self.eos_id is not None and (not isinstance(self.eos_id, int) or self.eos_id < 0):
            raise DataError(f"eos_id={self.eos_id!r}: must be a token id >= 0, or None (read tokenizer_config.json)")
        if not self.jsonl_field:
            raise DataError("jsonl_field is empty; name the JSONL field that holds the text (usually 'text')")

    def split_of(self, doc_id: str) -> str | None:
        """``"train"``, ``"validation"`` or None (excluded): a pure function of the id, the same on every run."""
        if any(pattern in doc_id for pattern in self.exclude):
            return None
        if self.eval_only or any(pattern in doc_id for pattern in self.holdout):
            return "validation"
        return "validation" if hash_fraction(doc_id) < self.val_fraction else "train"


def hash_fraction(doc_id: str) -> float:
    """A uniform number in [0, 1) from the id: sha256, because Python's ``hash`` of a str is salted per process."""
    return int.from_bytes(hashlib.sha256(doc_id.encode("utf-8")).digest()[:8], "big") / 2**64


def _as_tuple(value) -> tuple:
    """A single path or pattern is one item, not a sequence of characters."""
    return (value,) if isinstance(value, (str, os.PathLike)) else tuple(value)


def _patterns(value, name: str) -> tuple[str, ...]:
    patterns = _as_tuple(value)
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            raise DataError(f"{name} pattern {pattern!r}: must be a non-empty id substring, e.g. 'x.tar.xz::a/b.txt'")
    return patterns


# One document (a file, a tar member or a JSONL line) is read into memory whole; beyond this it is refused
# rather than exhausting memory (a 512 MiB text is far past any single book or article).
MAX_DOCUMENT_BYTES = 512 * 2**20


def _require_exists(path: Path) -> None:
    """A source must be a regular file or a directory: a device or FIFO (``/dev/zero``) would be read forever."""
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if not (path.is_file() or path.is_dir()):
        raise DataError(f"{path}: not a regular file or directory (a device, socket or FIFO); pass text files, "
                        "directories, tar archives or JSONL")


def require_size(size: int, where: str) -> None:
    if size > MAX_DOCUMENT_BYTES:
        raise DataError(f"{where}: one document of {size / 2**20:.0f} MiB, over the {MAX_DOCUMENT_BYTES // 2**20} MiB "
                        "limit; split it into smaller files")


def _tokenizer_file(path: Path) -> Path:
    _require_exists(path)
    if path.is_dir():
        if not (path / "tokenizer.json").is_file():
            raise DataError(f"{path}: no tokenizer.json in this directory; pass a Hugging Face tokenizer.json")
        return path / "tokenizer.json"
    return path
