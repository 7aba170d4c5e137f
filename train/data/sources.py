"""Documents from plain files, directories, tar archives (read as streams) and JSONL corpora, with stable ids."""

from __future__ import annotations

import json
import lzma
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from latentcache.errors import DataError

if TYPE_CHECKING:
    pass

from latentcache.train.data.config import (
    JSONL_SUFFIX,
    MAX_DOCUMENT_BYTES,
    SPLITS,
    TAR_SUFFIXES,
    TEXT_SUFFIXES,
    ByteCounter,
    CorpusConfig,
    Document,
    PathLike,
    _require_exists,
    require_size,
)


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
            yield from _jsonl_documents(_bounded_lines(handle, str(path)), doc_id, str(path), jsonl_field, report)
        return
    require_size(path.stat().st_size, str(path))
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
        yield from _jsonl_documents(_bounded_lines(handle, where), doc_id, where, jsonl_field, lambda n: None)
    else:
        require_size(member.size, where)
        yield Document(doc_id, _decode(handle.read(), where))


def _bounded_lines(handle, where: str) -> Iterator[bytes]:
    """Lines of a binary handle, each at most ``MAX_DOCUMENT_BYTES`` (one JSONL record is one document)."""
    for number, line in enumerate(iter(lambda: handle.readline(MAX_DOCUMENT_BYTES + 1), b""), start=1):
        require_size(len(line), f"{where}:{number}")
        yield line


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
