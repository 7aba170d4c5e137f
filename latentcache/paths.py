"""Where the project keeps things on disk: its cache (models, tokenized data) and the data root.

The data root holds every corpus and benchmark the project reads, one folder each, laid out like
``../shared/data`` (``arc/``, ``mmlu/``, ``gsm8k/``, ``wikitext-2/``, ``tinyshakespeare/``,
``gutenberg-fiction/``; ``latentcache.catalog`` lists them). It is, first match wins:

1. the ``root`` a caller passes (e.g. an example's ``--data``);
2. ``$LATENTCACHE_DATA`` (``set_data_root`` sets it: the CLI's ``--data-root``);
3. ``$LATENTCACHE_SHARED/data``: the older variable, which names the folder *above* ``data/``;
4. ``../shared/data`` beside the repository root (a development checkout).
"""

from __future__ import annotations

import os
from pathlib import Path

from latentcache.errors import DataError

DATA_ENV = "LATENTCACHE_DATA"
SHARED_ENV = "LATENTCACHE_SHARED"


def cache_root() -> Path:
    """``$LATENTCACHE_HOME`` or ``~/.cache/latentcache``: fetched models and tokenized corpora."""
    return Path(os.environ.get("LATENTCACHE_HOME") or Path.home() / ".cache" / "latentcache")


def shared_dir() -> Path:
    """``$LATENTCACHE_SHARED``, else ``../shared`` beside the repository root: the folder that holds ``data/``.

    Kept for callers written before the data root existed; new code asks ``data_root()``, which also honours
    ``$LATENTCACHE_DATA`` and ``--data-root``.
    """
    override = os.environ.get(SHARED_ENV)
    return Path(override).expanduser() if override else Path(__file__).resolve().parents[1].parent / "shared"


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The folder laid out like ``../shared/data``: ``root`` if given, else from the environment (module doc)."""
    return _resolve(root)[0]


def data_root_origin(root: str | os.PathLike | None = None) -> str:
    """Where ``data_root(root)`` came from, in words, for error messages ("$LATENTCACHE_DATA", ...)."""
    return _resolve(root)[1]


def set_data_root(path: str | os.PathLike) -> Path:
    """Make ``path`` the data root of this process and of the processes it starts; returns it, resolved.

    It is stored in ``$LATENTCACHE_DATA`` rather than in a module variable so that torchrun workers and
    subprocesses see the same data. A folder that does not exist is refused here, before any work starts.
    """
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_dir():
        raise DataError(f"data root {resolved}: no such folder; give a folder laid out like ../shared/data "
                        "(arc/, mmlu/, gsm8k/, wikitext-2/, gutenberg-fiction/, ...)")
    os.environ[DATA_ENV] = str(resolved)
    return resolved


def _resolve(root: str | os.PathLike | None) -> tuple[Path, str]:
    if root is not None:
        return Path(root).expanduser(), "the data folder given"
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser(), f"${DATA_ENV}"
    if os.environ.get(SHARED_ENV):
        return Path(os.environ[SHARED_ENV]).expanduser() / "data", f"${SHARED_ENV}/data"
    return shared_dir() / "data", "the default ../shared/data beside the checkout"
