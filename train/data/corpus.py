"""Entry points: text sources -> a cached, split, packed dataset (``prepare_corpus``, ``load_eval_text``, ``prepare``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

from latentcache.train.data.cache import (
    _build,
    corpus_fingerprint,
    default_cache_dir,
    open_cache,
)
from latentcache.train.data.config import META_FILE, CorpusConfig, PathLike
from latentcache.train.data.dataset import PackedDataset


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
