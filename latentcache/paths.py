"""Where the project keeps things on disk: its cache (models, tokenized data) and the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$LATENTCACHE_HOME`` or ``~/.cache/latentcache``: fetched models and tokenized corpora."""
    return Path(os.environ.get("LATENTCACHE_HOME") or Path.home() / ".cache" / "latentcache")


def shared_dir() -> Path:
    """``$LATENTCACHE_SHARED``, else ``../shared`` beside the repository root (the project's data folder)."""
    override = os.environ.get("LATENTCACHE_SHARED")
    return Path(override) if override else Path(__file__).resolve().parents[1].parent / "shared"
