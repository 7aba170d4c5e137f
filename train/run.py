"""Entry points the CLI calls: prepare the corpus, then train (one function per command)."""

from __future__ import annotations

from pathlib import Path

from latentcache.train.config import TrainConfig


def prepare_training_data(config: TrainConfig, eos_id: int | None):
    """Train/validation splits of ``config.data`` (default: the Gutenberg corpus), tokenized with the base's
    tokenizer and cached; returns ``(splits, fingerprint)``."""
    from latentcache.train import data

    if config.data:
        sources = data.SourceSet(tuple(Path(p) for p in config.data), val_fraction=config.val_fraction)
    else:
        sources = data.default_gutenberg_sources()
    corpus = data.CorpusConfig(tokenizer_path=Path(config.base), seq_len=config.seq_len, eos_id=eos_id,
                               **sources.as_kwargs())
    return data.prepare(corpus), data.corpus_fingerprint(corpus)


def run_training(config: TrainConfig, resume: bool) -> Path:
    """Train (or resume) a coprocessor; returns the checkpoint directory."""
    from latentcache.model.loading import read_model_config
    from latentcache.train.trainer import CHECKPOINT_DIR, Trainer

    model_config = read_model_config(config.base)
    eos_id = model_config.eos_token_ids[0] if model_config.eos_token_ids else None
    splits, fingerprint = prepare_training_data(config, eos_id)
    trainer = Trainer(config, splits["train"], splits["validation"], fingerprint)
    trainer.setup(resume)
    trainer.train()
    return Path(config.out) / CHECKPOINT_DIR
