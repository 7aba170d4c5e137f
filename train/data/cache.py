"""The packed-token cache on disk: its fingerprint, how a cache folder is built, published and opened."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from latentcache.contract.files import replace_directory, sha256_of, staging_directory
from latentcache.errors import DataError
from latentcache.paths import cache_root

if TYPE_CHECKING:
    from tokenizers import Tokenizer

from latentcache.train.data.config import (
    CHUNK_CHARS,
    CHUNK_DOCS,
    DATA_FORMAT_VERSION,
    META_FILE,
    SPLITS,
    TEXT_SUFFIXES,
    CorpusConfig,
    Document,
    PathLike,
)
from latentcache.train.data.dataset import PackedDataset
from latentcache.train.data.sources import _split_documents, _Tally, listed_files
from latentcache.train.data.tokenize import (
    _encode_batch,
    load_tokenizer,
    resolve_eos_id,
    token_dtype,
)


def corpus_fingerprint(config: CorpusConfig) -> str:
    """sha256 over everything that decides the tokens: tokenizer files, each source's *contents* (size and
    sha256 of every file it contributes, with the name its document ids derive from), the packing and split
    settings, and ``DATA_FORMAT_VERSION``. Not the absolute path: a moved or re-mounted corpus keeps its
    fingerprint (and its cache). Sources keep their order (it decides the packing), a directory's files are
    taken sorted (its listing order does not). Hashes are cached by path, size and mtime for the process."""
    config_file = config.tokenizer_path.with_name("tokenizer_config.json")
    key = {
        "version": DATA_FORMAT_VERSION,
        "tokenizer": sha256_of(config.tokenizer_path),
        # eos_id=None is resolved from here, so its contents count too.
        "tokenizer_config": sha256_of(config_file) if config.eos_id is None and config_file.is_file() else None,
        "sources": [_source_contents(path) for path in config.sources],
        "seq_len": config.seq_len,
        "val_fraction": config.val_fraction,
        "holdout": list(config.holdout),
        "exclude": list(config.exclude),
        "eos_id": config.eos_id,
        "jsonl_field": config.jsonl_field,
        "eval_only": config.eval_only,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()


def _source_contents(path: Path) -> list[list]:
    """[document-id name, size, sha256] of the file, or of every file a directory contributes (so adding one counts).

    The name is what document ids (and so the train/validation split) are made of: a file's name, a
    directory's own name plus each file's relative path."""
    if path.is_dir():
        return [[doc_id, file.stat().st_size, _content_sha256(file)] for file, doc_id in listed_files(path)]
    return [[path.name, path.stat().st_size, _content_sha256(path)]]


_HASHES: dict[tuple, str] = {}


def _content_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _HASHES:
        _HASHES[key] = sha256_of(path)
    return _HASHES[key]


def _disk_size(path: Path) -> int:
    files = [file for file, _ in listed_files(path)] if path.is_dir() else [path]
    return sum(file.stat().st_size for file in files)


def default_cache_dir() -> Path:
    return cache_root() / "data"


class _SplitWriter:
    """Appends one split's token arrays to its flat file and counts what went in."""

    def __init__(self, path: Path, dtype: np.dtype):
        self.path, self.dtype = path, dtype
        self.handle = open(path, "wb")
        self.num_tokens = 0
        self.doc_ids: list[str] = []

    def write(self, doc_id: str, ids: Sequence[int], eos_id: int) -> None:
        tokens = np.empty(len(ids) + 1, dtype=self.dtype)
        tokens[:-1] = ids
        tokens[-1] = eos_id
        tokens.tofile(self.handle)
        self.num_tokens += len(tokens)
        self.doc_ids.append(doc_id)

    def finish(self, seq_len: int) -> dict:
        """Drop the tail that does not fill a sequence, flush to disk, and describe the split for meta.json."""
        num_sequences = self.num_tokens // seq_len
        self.handle.flush()
        self.handle.truncate(num_sequences * seq_len * self.dtype.itemsize)
        os.fsync(self.handle.fileno())
        self.close()
        return {
            "file": self.path.name,
            "num_tokens": self.num_tokens,
            "num_sequences": num_sequences,
            "dropped_tokens": self.num_tokens - num_sequences * seq_len,
            "num_documents": len(self.doc_ids),
            "doc_ids": self.doc_ids,
        }

    def close(self) -> None:
        self.handle.close()


def _chunks(pairs: Iterable[tuple[str, Document]]) -> Iterator[list[tuple[str, Document]]]:
    chunk: list[tuple[str, Document]] = []
    chars = 0
    for pair in pairs:
        chunk.append(pair)
        chars += len(pair[1].text)
        if chars >= CHUNK_CHARS or len(chunk) >= CHUNK_DOCS:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def _tokenize_into(
    config: CorpusConfig, tokenizer: Tokenizer, eos_id: int, writers: dict[str, _SplitWriter], progress: bool
) -> _Tally:
    """Stream documents → chunks → encode_batch → append to the split files: only one chunk's tokens in memory."""
    from tqdm import tqdm

    tally = _Tally()
    total = sum(_disk_size(path) for path in config.sources)
    with tqdm(total=total, unit="B", unit_scale=True, desc="tokenize", file=sys.stderr, disable=not progress) as bar:
        for chunk in _chunks(_split_documents(config, tally, bar.update)):
            for (split, doc), ids in zip(chunk, _encode_batch(tokenizer, [doc.text for _, doc in chunk])):
                writers[split].write(doc.doc_id, ids, eos_id)
                tally.content_tokens += len(ids)
            bar.set_postfix(tokens=sum(w.num_tokens for w in writers.values()), refresh=False)
    return tally


def _check_counts(config: CorpusConfig, tally: _Tally, splits: dict[str, dict]) -> None:
    """The empty and too-short corpora, each as one line naming the sources."""
    names = _describe(config.sources)
    if tally.documents == 0:
        raise DataError(
            f"{names}: no documents found; a directory contributes its {'/'.join(TEXT_SUFFIXES)}/.jsonl files, "
            "a tar archive its regular members, a .jsonl file one document per line"
        )
    if sum(split["num_documents"] for split in splits.values()) == 0:
        reason = f"{len(tally.excluded)} match exclude patterns and {tally.blank} are blank"
        raise DataError(f"{names}: none of the {tally.documents} documents is left to tokenize ({reason}); "
                        "add text or pass other sources")
    if tally.content_tokens == 0:
        raise DataError(
            f"{names}: the documents tokenize to zero tokens with {config.tokenizer_path}; is it the right tokenizer?"
        )
    needed = "validation" if config.eval_only else "train"
    if splits[needed]["num_sequences"] == 0:
        hint = "lower seq_len" if config.eval_only else "add text, lower seq_len, or send less to validation"
        raise DataError(
            f"{names}: the {needed} split has {splits[needed]['num_tokens']} tokens ({splits[needed]['num_documents']} "
            f"of {tally.documents} documents), fewer than one sequence of seq_len={config.seq_len}; {hint}"
        )


def _describe(paths: Sequence[Path], limit: int = 3) -> str:
    shown = ", ".join(map(str, paths[:limit]))
    return shown if len(paths) <= limit else f"{shown} and {len(paths) - limit} more"


def _build(config: CorpusConfig, fingerprint: str, target: Path, progress: bool) -> None:
    """Tokenize into a temporary folder beside ``target``, then rename it into place."""
    tokenizer = load_tokenizer(config.tokenizer_path)
    eos_id = resolve_eos_id(tokenizer, config.tokenizer_path, config.eos_id)
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(vocab_size)
    writers: dict[str, _SplitWriter] = {}
    with staging_directory(target) as staging, _closing(writers):
        writers.update({split: _SplitWriter(staging / f"{split}.bin", dtype) for split in SPLITS})
        tally = _tokenize_into(config, tokenizer, eos_id, writers, progress)
        splits = {split: writer.finish(config.seq_len) for split, writer in writers.items()}
        _check_counts(config, tally, splits)
        meta = {
            "format_version": DATA_FORMAT_VERSION,
            "fingerprint": fingerprint,
            "seq_len": config.seq_len,
            "dtype": dtype.name,
            "eos_id": eos_id,
            "vocab_size": vocab_size,
            "tokenizer": str(config.tokenizer_path),
            "sources": [str(path) for path in config.sources],
            "val_fraction": config.val_fraction,
            "holdout": list(config.holdout),
            "exclude": list(config.exclude),
            "jsonl_field": config.jsonl_field,
            "eval_only": config.eval_only,
            "num_documents": tally.documents,
            "blank_documents": tally.blank,
            "excluded": tally.excluded,
            "splits": splits,
        }
        (staging / META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        _publish(staging, target)


@contextlib.contextmanager
def _closing(writers: dict[str, _SplitWriter]):
    """Close the split files when the build fails (a finished writer is closed already)."""
    try:
        yield
    except BaseException:
        for writer in writers.values():
            writer.close()
        raise


def _publish(staging: Path, target: Path) -> None:
    """Rename the finished folder into place: the cache exists complete or not at all."""
    if (target / META_FILE).is_file():
        shutil.rmtree(staging, ignore_errors=True)  # a concurrent run published the same fingerprint first
        return
    # A folder without meta.json was never published (only complete folders are renamed in): replace it.
    replace_directory(staging, target)


def open_cache(directory: PathLike, fingerprint: str | None = None) -> dict[str, PackedDataset]:
    """The splits of a finished cache folder (as returned by ``prepare_corpus``)."""
    directory = Path(directory)
    meta_file = directory / META_FILE
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{meta_file}: unreadable cache metadata ({exc}); delete {directory} and run again") from exc
    if fingerprint is not None and meta.get("fingerprint") != fingerprint:
        raise DataError(f"{meta_file}: written for other inputs (fingerprint mismatch); delete {directory}, run again")
    return {split: PackedDataset.from_meta(directory, split, meta) for split in SPLITS}
