"""Training text → packed, memory-mapped token sequences, cached on disk.

Sources (plain files, directories, tar archives read as streams, JSONL corpora) yield documents with stable
ids. Each document goes to one split by a sha256 of its id, or by explicit ``holdout``/``exclude`` id
substrings, so a book is never on both sides. Documents are tokenized with a Hugging Face ``tokenizer.json``
(the ``tokenizers`` library, not transformers), each followed by EOS, concatenated per split and cut into
``seq_len`` sequences (the tail is dropped). A cache folder is named by a fingerprint of every input; it is
written under a temporary name and renamed into place, so an interrupted run never leaves a cache that looks
complete, and an unchanged rerun tokenizes nothing.

Layout of ``<cache_dir>/<fingerprint[:16]>/``::

    train.bin        flat [num_sequences * seq_len] uint16 (uint32 when the vocabulary has >= 65536 tokens)
    validation.bin   the same for the validation split
    meta.json        seq_len, dtype, eos_id, per split: token/sequence/document counts and document ids;
                     the settings and the fingerprint

Document ids: ``name.txt`` for a file, ``dir/sub/name.txt`` for a file found in a directory,
``archive.tar.xz::member/path`` for a tar member, and ``...:LINE`` (1-based) for one line of a JSONL file.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import operator
import os
import shutil
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Union

import numpy as np

from latentcache.errors import DataError
from latentcache.registry import sha256_of

if TYPE_CHECKING:
    from tokenizers import Tokenizer

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


# ---------------------------------------------------------------------------------------------------------
# Configuration and the split rule


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


def _require_exists(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")


def _tokenizer_file(path: Path) -> Path:
    _require_exists(path)
    if path.is_dir():
        if not (path / "tokenizer.json").is_file():
            raise DataError(f"{path}: no tokenizer.json in this directory; pass a Hugging Face tokenizer.json")
        return path / "tokenizer.json"
    return path


# ---------------------------------------------------------------------------------------------------------
# Documents


def iter_documents(
    paths: Iterable[PathLike], jsonl_field: str = "text", on_bytes: ByteCounter | None = None
) -> Iterator[Document]:
    """Every document of every source, in order. ``on_bytes`` hears how many bytes on disk each step consumed
    (compressed bytes for archives), which drives the progress bar without a separate sizing pass."""
    report = on_bytes or (lambda n: None)
    for path in map(Path, paths):
        _require_exists(path)
        if path.is_dir():
            for file, doc_id in listed_files(path):
                yield from _file_documents(file, doc_id, jsonl_field, report)
        elif _is_tar(path):
            yield from _tar_documents(path, jsonl_field, report)
        else:
            yield from _file_documents(path, path.name, jsonl_field, report)


def listed_files(root: Path) -> list[tuple[Path, str]]:
    """(path, doc id) of the text and JSONL files under ``root``, recursively, sorted; hidden entries skipped."""
    found = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if path.name.lower().endswith((*TEXT_SUFFIXES, JSONL_SUFFIX)):
            found.append((relative.as_posix(), path))
    prefix = root.resolve().name
    return [(path, f"{prefix}/{relative}") for relative, path in sorted(found)]


def _is_tar(path: Path) -> bool:
    return path.name.lower().endswith(TAR_SUFFIXES)


def _is_jsonl(name: str) -> bool:
    return name.lower().endswith(JSONL_SUFFIX)


def _file_documents(path: Path, doc_id: str, jsonl_field: str, report: ByteCounter) -> Iterator[Document]:
    if _is_jsonl(path.name):
        with open(path, "rb") as handle:
            yield from _jsonl_documents(handle, doc_id, str(path), jsonl_field, report)
        return
    data = path.read_bytes()
    report(len(data))
    yield Document(doc_id, _decode(data, str(path)))


def _tar_documents(path: Path, jsonl_field: str, report: ByteCounter) -> Iterator[Document]:
    """Regular members in archive order, read as a stream (``r|*``): random access into an .xz would
    decompress from the start again for every member."""
    try:
        with open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as archive:
            consumed = 0
            for member in archive:
                if member.isfile():
                    yield from _member_documents(archive, member, path, jsonl_field)
                report(raw.tell() - consumed)
                consumed = raw.tell()
    except (tarfile.TarError, lzma.LZMAError, zlib.error, EOFError, OSError) as exc:
        raise DataError(f"{path}: not a readable tar archive ({exc}); the file is truncated or corrupt") from exc


def _member_documents(
    archive: tarfile.TarFile, member: tarfile.TarInfo, path: Path, jsonl_field: str
) -> Iterator[Document]:
    doc_id, where = f"{path.name}::{member.name}", f"{path}::{member.name}"
    handle = archive.extractfile(member)
    if _is_jsonl(member.name):
        yield from _jsonl_documents(handle, doc_id, where, jsonl_field, lambda n: None)
    else:
        yield Document(doc_id, _decode(handle.read(), where))


def _jsonl_documents(
    lines: Iterable[bytes], doc_id: str, where: str, jsonl_field: str, report: ByteCounter
) -> Iterator[Document]:
    """One document per non-blank line, id ``<doc_id>:<line number>``."""
    for number, raw in enumerate(lines, start=1):
        report(len(raw))
        line = _decode(raw, f"{where}:{number}").strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{where}:{number}: not valid JSON ({exc.msg}, column {exc.colno}); each line must be one JSON object"
            ) from exc
        text = record.get(jsonl_field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise DataError(f"{where}:{number}: {_field_problem(record, jsonl_field)}")
        yield Document(f"{doc_id}:{number}", text)


def _field_problem(record, jsonl_field: str) -> str:
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object with a '{jsonl_field}' field"
    if jsonl_field not in record:
        found = ", ".join(sorted(map(str, record))[:8]) or "none"
        return f"no '{jsonl_field}' field (fields: {found}); pass jsonl_field= the field that holds the text"
    return f"field '{jsonl_field}' is a {type(record[jsonl_field]).__name__}, not a string"


def _decode(data: bytes, where: str) -> str:
    """Strict UTF-8 (a leading BOM dropped): mis-decoded bytes would silently become training text."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start}); convert it to UTF-8 or leave it out "
            "of the data"
        ) from exc


@dataclass
class _Tally:
    """What the document pass saw, for the empty-corpus errors and meta.json."""

    documents: int = 0
    blank: int = 0
    content_tokens: int = 0
    excluded: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)


def _split_documents(
    config: CorpusConfig, tally: _Tally, on_bytes: ByteCounter | None = None
) -> Iterator[tuple[str, Document]]:
    """(split, document) for every kept document; excluded ids are recorded, blank documents skipped."""
    for doc in iter_documents(config.sources, config.jsonl_field, on_bytes):
        if doc.doc_id in tally.seen:
            raise DataError(
                f"{doc.doc_id}: this document id comes from two sources; a path is given twice or two sources "
                "share a name"
            )
        tally.seen.add(doc.doc_id)
        tally.documents += 1
        split = config.split_of(doc.doc_id)
        if split is None:
            tally.excluded.append(doc.doc_id)
        elif not doc.text.strip():
            tally.blank += 1
        else:
            yield split, doc


def plan_split(config: CorpusConfig) -> dict[str, list[str]]:
    """Document ids per split (plus ``"excluded"``) without tokenizing: a cheap check of the split rules."""
    tally = _Tally()
    plan: dict[str, list[str]] = {split: [] for split in SPLITS}
    for split, doc in _split_documents(config, tally):
        plan[split].append(doc.doc_id)
    plan["excluded"] = tally.excluded
    return plan


# ---------------------------------------------------------------------------------------------------------
# Tokenizer


def load_tokenizer(path: Path) -> Tokenizer:
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for every parse failure
        reason = str(exc).splitlines()[0] if str(exc) else repr(exc)
        raise DataError(f"{path}: not a Hugging Face tokenizer.json ({reason})") from exc


def resolve_eos_id(tokenizer: Tokenizer, tokenizer_path: Path, eos_id: int | None) -> int:
    """The explicit ``eos_id``, else the ``eos_token`` of the ``tokenizer_config.json`` beside tokenizer.json."""
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    if eos_id is None:
        eos_id = _eos_from_tokenizer_config(tokenizer, tokenizer_path)
    if not 0 <= eos_id < vocab_size:
        raise DataError(f"eos_id={eos_id}: outside the vocabulary of {tokenizer_path} ({vocab_size} tokens)")
    return eos_id


def _eos_from_tokenizer_config(tokenizer: Tokenizer, tokenizer_path: Path) -> int:
    config_file = tokenizer_path.with_name("tokenizer_config.json")
    if not config_file.is_file():
        raise DataError(f"{config_file}: not found, so the EOS token is unknown; pass eos_id (ends each document)")
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{config_file}: not valid JSON ({exc})") from exc
    token = raw.get("eos_token") if isinstance(raw, dict) else None
    if isinstance(token, dict):  # older configs store an AddedToken
        token = token.get("content")
    if not isinstance(token, str):
        raise DataError(f"{config_file}: no eos_token; pass eos_id (the id that ends each document)")
    eos_id = tokenizer.token_to_id(token)
    if eos_id is None:
        raise DataError(f"{config_file}: eos_token {token!r} is not in {tokenizer_path}; pass eos_id")
    return eos_id


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 halves the files (and page-cache traffic) whenever every id fits in it."""
    return np.dtype(np.uint16 if vocab_size < 2**16 else np.uint32)


def _encode_batch(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens added. ``encode_batch_fast`` (tokenizers >= 0.20) is
    ``encode_batch`` without character offsets, about 1.5x faster; the ids are the same."""
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    return [encoding.ids for encoding in encode(texts, add_special_tokens=False)]


# ---------------------------------------------------------------------------------------------------------
# Fingerprint and cache


def corpus_fingerprint(config: CorpusConfig) -> str:
    """sha256 over everything that decides the tokens: tokenizer files, each source file's path, size and
    mtime, the packing and split settings, and ``DATA_FORMAT_VERSION``. Contents are not hashed (68 MB of
    xz would cost seconds); a file edited in place keeping its size and mtime would go unnoticed."""
    config_file = config.tokenizer_path.with_name("tokenizer_config.json")
    key = {
        "version": DATA_FORMAT_VERSION,
        "tokenizer": sha256_of(config.tokenizer_path),
        # eos_id=None is resolved from here, so its contents count too.
        "tokenizer_config": sha256_of(config_file) if config.eos_id is None and config_file.is_file() else None,
        "sources": [_source_stats(path) for path in config.sources],
        "seq_len": config.seq_len,
        "val_fraction": config.val_fraction,
        "holdout": list(config.holdout),
        "exclude": list(config.exclude),
        "eos_id": config.eos_id,
        "jsonl_field": config.jsonl_field,
        "eval_only": config.eval_only,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()


def _source_stats(path: Path) -> list[list]:
    """[path, size, mtime_ns] of the file, or of every file a directory contributes (so adding one counts)."""
    files = [file for file, _ in listed_files(path)] if path.is_dir() else [path]
    return [[str(file.resolve()), file.stat().st_size, file.stat().st_mtime_ns] for file in files]


def _disk_size(path: Path) -> int:
    files = [file for file, _ in listed_files(path)] if path.is_dir() else [path]
    return sum(file.stat().st_size for file in files)


def default_cache_dir() -> Path:
    from latentcache.registry import cache_root

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
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", suffix=".partial", dir=target.parent))
    writers: dict[str, _SplitWriter] = {}
    try:
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
        _write_json(staging / META_FILE, meta)
        _publish(staging, target)
    except BaseException:
        for writer in writers.values():
            writer.close()
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())


def _publish(staging: Path, target: Path) -> None:
    """Rename the finished folder into place: the cache exists complete or not at all."""
    if target.exists() and not (target / META_FILE).is_file():
        shutil.rmtree(target)  # never published by this module (only complete folders are renamed in)
    try:
        os.replace(staging, target)
    except OSError:
        if not (target / META_FILE).is_file():
            raise
        shutil.rmtree(staging, ignore_errors=True)  # a concurrent run published the same fingerprint first
    descriptor = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(descriptor)  # make the rename itself durable
    finally:
        os.close(descriptor)


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


# ---------------------------------------------------------------------------------------------------------
# The dataset


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


# ---------------------------------------------------------------------------------------------------------
# Entry points


def prepare_corpus(
    sources: PathLike | Sequence[PathLike],
    tokenizer_path: PathLike,
    seq_len: int,
    cache_dir: PathLike | None = None,
    *,
    val_fraction: float = 0.05,
    holdout: Sequence[str] = (),
    exclude: Sequence[str] = (),
    eos_id: int | None = None,
    jsonl_field: str = "text",
    progress: bool = True,
) -> dict[str, PackedDataset]:
    """``{"train": ..., "validation": ...}`` packed from ``sources``, tokenized once and cached.

    ``cache_dir`` defaults to ``$LATENTCACHE_HOME/data``. ``eos_id=None`` reads the EOS token from the
    ``tokenizer_config.json`` beside tokenizer.json. See ``CorpusConfig`` for the split rules.
    """
    config = CorpusConfig(
        sources, tokenizer_path, seq_len, val_fraction, holdout, exclude, eos_id, jsonl_field, eval_only=False
    )
    return prepare(config, cache_dir, progress)


def load_eval_text(
    path: PathLike,
    tokenizer_path: PathLike,
    seq_len: int,
    cache_dir: PathLike | None = None,
    *,
    eos_id: int | None = None,
    jsonl_field: str = "text",
    progress: bool = True,
) -> PackedDataset:
    """All of ``path`` as validation sequences, e.g. ``wikitext_test_path()`` for perplexity."""
    config = CorpusConfig((path,), tokenizer_path, seq_len, 0.0, (), (), eos_id, jsonl_field, eval_only=True)
    return prepare(config, cache_dir, progress)["validation"]


def prepare(
    config: CorpusConfig, cache_dir: PathLike | None = None, progress: bool = True
) -> dict[str, PackedDataset]:
    """Open the cache for ``config``, building it first when no complete one exists."""
    fingerprint = corpus_fingerprint(config)
    target = Path(cache_dir if cache_dir is not None else default_cache_dir()) / fingerprint[:16]
    if not (target / META_FILE).is_file():
        _build(config, fingerprint, target, progress)
    return open_cache(target, fingerprint)


# ---------------------------------------------------------------------------------------------------------
# The shared corpora

GUTENBERG_DIR = Path("data") / "gutenberg-fiction"
GUTENBERG_ARCHIVES = ("british-novels.tar.xz", "haggard.tar.xz", "gutenberg.tar.xz")
# Whole books held out for validation, from all three archives (~3.2 MB of ~68 MB raw, about 5%):
# NLTK's own test selection (Chesterton's Father Brown, Milton's Poetical Works, Macbeth), one Austen, one
# Dickens and one Haggard novel.
GUTENBERG_HOLDOUT = (
    "gutenberg.tar.xz::gutenberg/testing/",
    "british-novels.tar.xz::british-novels/Austen_Pride.txt",
    "british-novels.tar.xz::british-novels/Dickens_Hard.txt",
    "haggard.tar.xz::haggard/Cleopatra 2769.txt",
)
# Containment the file names cannot reveal: Milton's Poetical Works (held out above) includes Paradise Lost,
# which is gutenberg/training/milton-paradise.txt, so that copy goes. (Whitman's three selections overlap each
# other too, but all of them stay in train, so nothing leaks.)
GUTENBERG_CONTAINED = ("gutenberg.tar.xz::gutenberg/training/milton-paradise.txt",)


@dataclass(frozen=True)
class SourceSet:
    """Source paths with the split rules that belong to them: ``prepare_corpus(**s.as_kwargs(), ...)``."""

    paths: tuple[Path, ...]
    val_fraction: float = 0.0
    holdout: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def as_kwargs(self) -> dict:
        return dict(sources=self.paths, val_fraction=self.val_fraction, holdout=self.holdout, exclude=self.exclude)


def shared_dir() -> Path:
    """``$LATENTCACHE_SHARED``, else ``../shared`` beside the repository root (the project's data folder)."""
    override = os.environ.get("LATENTCACHE_SHARED")
    return Path(override) if override else Path(__file__).resolve().parents[1].parent / "shared"


def default_gutenberg_sources(shared: PathLike | None = None) -> SourceSet:
    """The three Gutenberg archives with a split that keeps every text on one side only.

    Duplicates: the Austen novels are in british-novels (``Austen_Emma.txt``) and in the NLTK selection
    (``austen-emma.txt``), different editions of the same text. ``gutenberg_duplicates`` finds them in
    MANIFEST.tsv by (author, title) and the NLTK copies are excluded, so each novel exists once, in british-novels;
    Pride and Prejudice is then held out, Emma and Sense and Sensibility train. Validation is the whole books of
    ``GUTENBERG_HOLDOUT`` and nothing else (``val_fraction=0``): a random hash split could put one of Whitman's
    overlapping selections on each side.
    """
    corpus = Path(shared if shared is not None else shared_dir()) / GUTENBERG_DIR
    paths = tuple(corpus / name for name in GUTENBERG_ARCHIVES)
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path}: missing; set LATENTCACHE_SHARED to the folder that holds {GUTENBERG_DIR}")
    exclude = gutenberg_duplicates(corpus / "MANIFEST.tsv") + GUTENBERG_CONTAINED
    return SourceSet(paths, 0.0, GUTENBERG_HOLDOUT, exclude)


def gutenberg_duplicates(manifest: Path) -> tuple[str, ...]:
    """Exclude patterns for the NLTK ``gutenberg/`` texts whose (author, title) is also in british-novels.

    Names are ``british-novels/Austen_Emma.txt`` and ``gutenberg/training/austen-emma.txt``: the key is the
    lower-cased stem split at its first ``_`` or ``-``. Haggard's files (``Title 1234.txt``) share no author.
    """
    try:
        rows = [line.split("\t") for line in manifest.read_text(encoding="utf-8").splitlines()[1:] if line]
    except OSError as exc:
        raise DataError(f"{manifest}: unreadable ({exc}); the Gutenberg corpus folder is incomplete") from exc
    british = {_author_title(path, "_") for archive, path, *_ in rows if archive == "british-novels.tar.xz"}
    return tuple(
        f"{archive}::{path}"
        for archive, path, *_ in rows
        if archive == "gutenberg.tar.xz" and _author_title(path, "-") in british
    )


def _author_title(member: str, separator: str) -> tuple[str, str]:
    author, _, title = Path(member).stem.lower().partition(separator)
    return author, title


def wikitext_test_path(shared: PathLike | None = None) -> Path:
    """WikiText-2-raw test (``wiki.test.raw``), a second validation set: pass it to ``load_eval_text``."""
    path = Path(shared if shared is not None else shared_dir()) / "data" / "wikitext-2" / "raw" / "wiki.test.raw"
    if not path.is_file():
        raise DataError(f"{path}: missing; set LATENTCACHE_SHARED to the folder that holds data/wikitext-2")
    return path
