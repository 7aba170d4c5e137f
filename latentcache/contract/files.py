"""File hashing and atomic writes: the one implementation every writer uses.

Atomic means a reader (or a crash) sees the old content or the new, never a mix: files go to a temporary
sibling that is fsynced and renamed over the target, folders are assembled in a ``.NAME.partial-*`` sibling
and renamed into place, and the parent directory is fsynced so the rename itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def sha256_of(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    """Hex sha256 of a file's contents, read in 1 MiB blocks; ``on_bytes(n)`` after each block (progress bars)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
            if on_bytes is not None:
                on_bytes(len(block))
    return digest.hexdigest()


def fsync_directory(path: Path) -> None:
    """Make renames and creations inside ``path`` durable."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(root: Path) -> None:
    """fsync every file below ``root`` and every folder, ``root`` included."""
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                os.fsync(handle.fileno())
        fsync_directory(Path(folder))


def write_atomically(path: Path, data: bytes | bytearray | memoryview | str) -> None:
    """Write ``path`` through a temporary sibling and a rename (text is written as UTF-8)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(handle, "wb") as file:
            file.write(data.encode() if isinstance(data, str) else data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
        fsync_directory(path.parent)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def staging_directory(target: Path) -> Iterator[Path]:
    """An empty ``.TARGET.partial-*`` sibling of ``target`` to assemble a folder in; removed if the block fails.

    Publish it with ``replace_directory`` inside the block.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-"))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def replace_directory(staging: Path, target: Path, aside: Path | None = None) -> None:
    """Make the finished folder ``staging`` appear at ``target`` using renames only.

    Every file is fsynced first. An existing ``target`` is renamed to ``aside`` (default ``.TARGET.old``) and
    deleted once the new folder is in place, so an interruption leaves the old folder or the new one (a
    reader that knows ``aside`` can recover the old one from there).
    """
    staging, target = Path(staging), Path(target)
    aside = Path(aside) if aside is not None else target.with_name(f".{target.name}.old")
    fsync_tree(staging)
    if target.exists():
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(target, aside)
        os.replace(staging, target)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(staging, target)
    fsync_directory(target.parent)
