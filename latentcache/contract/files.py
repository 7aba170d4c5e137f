"""File hashing, atomic writes, folder locks and stale-partial cleanup: the one implementation every writer uses.

Atomic means a reader (or a crash) sees the old content or the new, never a mix: files go to a temporary
sibling that is fsynced and renamed over the target, folders are assembled in a ``.NAME.partial-PID-*``
sibling and renamed into place, and the parent directory is fsynced so the rename itself survives a power cut.

Every temporary sibling carries the PID of the process that made it, so the next writer of the same target
can tell a crashed run's leftovers (PID dead: removed) from a live writer's (left alone). A PID reused by an
unrelated process only delays the cleanup; it never deletes a live writer's folder.

Locks (``folder_lock``) are ``fcntl.flock`` on a ``.NAME.lock`` file beside the target: the kernel drops them
when the holder dies (kill -9 included), so a stale lock cannot exist. They are advisory: they order
latentcache writers, not other programs (export also compares the folder before and after, see
``snapshot``). The lock file holds the holder's PID and is removed on release.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from latentcache.errors import LatentcacheError


class WriteError(LatentcacheError):
    """A target cannot be written (permissions, read-only file system, full disk) or is locked by another writer."""


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


def _cannot_write(path: Path, exc: OSError) -> WriteError:
    return WriteError(f"cannot write {path} ({exc.strerror or exc}); choose a writable location or free space")


@contextlib.contextmanager
def _writable(path: Path) -> Iterator[None]:
    """Turn the OS's refusals to create files (permissions, read-only or full disk) into one line."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR):
            raise _cannot_write(path, exc) from exc
        raise


# ---- leftovers of dead writers --------------------------------------------------------------------------

def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _leftover_pattern(target: Path) -> re.Pattern:
    """Siblings this module creates for ``target``: ``.NAME.partial-PID-*`` folders and ``.NAME.tmp-PID-*`` files."""
    return re.compile(rf"^\.{re.escape(target.name)}\.(?:partial|tmp)-(\d+)-")


def clean_stale_partials(target: Path) -> list[Path]:
    """Remove the temporary siblings of ``target`` whose creating process is dead; returns what was removed.

    Only names this module generates are touched, and only when their PID is not running (so never a live
    writer's folder, and never a file some other program put there)."""
    target = Path(target)
    pattern, removed = _leftover_pattern(target), []
    if not target.parent.is_dir():
        return removed
    for entry in target.parent.iterdir():
        match = pattern.match(entry.name)
        if match is None or int(match.group(1)) == os.getpid() or pid_alive(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


# ---- locks ------------------------------------------------------------------------------------------------

def lock_path(target: Path) -> Path:
    target = Path(target)
    return target.with_name(f".{target.name}.lock")


@contextlib.contextmanager
def folder_lock(target: Path, wait: bool = False, what: str = "") -> Iterator[None]:
    """Hold an exclusive lock on ``target`` (a file or folder, which need not exist yet) for the block.

    ``wait=False`` fails at once with one line naming the holder's PID; ``wait=True`` blocks until the other
    writer is done (the model cache: the second ``models fetch`` then finds the model built). The lock file
    is removed on release; a waiter that locked the removed file notices (its inode is gone) and retries.
    """
    target = Path(target).absolute()
    path = lock_path(target)
    descriptor = _acquire(path, target, wait, what)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(descriptor)  # closing releases the lock


def _acquire(path: Path, target: Path, wait: bool, what: str) -> int:
    while True:
        with _writable(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(descriptor)
            raise WriteError(f"{target} is being written by another latentcache process (pid {holder}); wait for "
                             f"it to finish{what} or choose another path") from None
        try:
            same = os.fstat(descriptor).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
            return descriptor
        os.close(descriptor)  # the holder removed this file as we waited on it: lock the new one


# ---- atomic files and folders ----------------------------------------------------------------------------

def current_umask() -> int:
    """This process's umask (reading it means setting it: set it straight back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def write_atomically(path: Path, data: bytes | bytearray | memoryview | str) -> None:
    """Write ``path`` through a temporary sibling and a rename (text is written as UTF-8)."""
    path = Path(path)
    with _writable(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_partials(path)
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-{os.getpid()}-")
    try:
        os.chmod(temp, 0o666 & ~current_umask())  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(handle, "wb") as file, _writable(path):
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
    """An empty ``.TARGET.partial-PID-*`` sibling of ``target`` to assemble a folder in; removed if the block fails.

    Leftovers of dead processes for the same target are removed first. Publish with ``replace_directory``
    inside the block.
    """
    target = Path(target)
    with _writable(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_partials(target)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-{os.getpid()}-"))
        # mkdtemp creates 0700, and the rename publishes the folder as it is: give it a new folder's usual mode,
        # so artifacts and checkpoints are as readable by the group as other model files.
        os.chmod(staging, 0o777 & ~current_umask())
    try:
        with _writable(target):
            yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def snapshot(folder: Path) -> dict[str, tuple]:
    """What ``folder`` holds now: relative path -> (type, size, mtime_ns, inode), for "did anything change?"."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return {}
    if folder.is_symlink() or not folder.is_dir():
        stat = folder.lstat()
        return {".": ("file", stat.st_size, stat.st_mtime_ns, stat.st_ino)}
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            stat = os.lstat(path)
            kind = "dir" if name in dirs else "file"
            found[os.path.relpath(path, folder)] = (kind, stat.st_size if kind == "file" else 0, stat.st_mtime_ns,
                                                    stat.st_ino)
    return found


def changes(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    """Paths added, removed or modified between two ``snapshot``s."""
    return sorted(path for path in set(before) | set(after) if before.get(path) != after.get(path))


def replace_directory(staging: Path, target: Path, aside: Path | None = None,
                      expected: dict[str, tuple] | None = None, keep_aside: bool = False) -> None:
    """Make the finished folder ``staging`` appear at ``target`` using renames only.

    Every file is fsynced first. An existing ``target`` is renamed to ``aside`` (default ``.TARGET.old``) and
    deleted once the new folder is in place (``keep_aside``: left for the caller, who deletes it after checking
    the new folder), so an interruption leaves the old folder or the new one. With ``expected`` (a
    ``snapshot`` of ``target`` taken when the run checked it), a target that changed since is not replaced:
    nothing the run did not see is ever deleted.
    """
    staging, target = Path(staging), Path(target)
    aside = Path(aside) if aside is not None else target.with_name(f".{target.name}.old")
    if expected is not None:
        changed = changes(expected, snapshot(target))
        if changed:
            raise WriteError(f"{target} changed while this run was writing ({len(changed)} entries, e.g. "
                             f"{changed[0]}): nothing was replaced; check what wrote there and run again")
    fsync_tree(staging)
    if target.exists() or target.is_symlink():
        if aside.exists():
            shutil.rmtree(aside)
        os.replace(target, aside)
        os.replace(staging, target)
        if not keep_aside:
            _remove(aside)
    else:
        os.replace(staging, target)
    fsync_directory(target.parent)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def check_apart(out: Path, option: str, inputs: dict[str, Path | None]) -> None:
    """Refuse an output that is, contains or lies inside one of the inputs (replacing it would delete the input)."""
    mine = Path(out).resolve()
    for name, path in inputs.items():
        if path is None:
            continue
        theirs = Path(path).resolve()
        if mine == theirs or mine in theirs.parents or theirs in mine.parents:
            relation = "is" if mine == theirs else ("contains" if mine in theirs.parents else "lies inside")
            raise WriteError(f"{option} {out} {relation} the input {name} {path}: writing it could delete the "
                             f"input; choose an {option} outside every input")
