"""Entry points the CLI calls: prepare the corpus, then train (one function per command)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from latentcache.contract.files import folder_lock, write_atomically
from latentcache.train.config import EvalConfig, TrainConfig


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
    """Train (or resume) a coprocessor; returns the checkpoint directory. Under torchrun, rank 0 tokenizes
    the corpus first and the other ranks then read its cache."""
    from latentcache.model.loading import read_model_config
    from latentcache.train.trainer import (
        CHECKPOINT_DIR,
        Distributed,
        Trainer,
        check_against_base,
        resolve_device,
    )

    model_config = read_model_config(config.base)
    check_against_base(config, model_config)  # before minutes of tokenizing
    eos_id = _eos_id(model_config)
    dist = Distributed(resolve_device(config.device))
    trainer = None
    # One writer per run folder: a second `train --out` on it fails at once instead of interleaving checkpoints.
    locks = contextlib.ExitStack()
    try:
        if dist.main:
            locks.enter_context(folder_lock(Path(config.out), what=" (another `latentcache train` on this --out)"))
        with dist.main_first():
            splits, fingerprint = prepare_training_data(config, eos_id)
        trainer = Trainer(config, splits["train"], splits["validation"], fingerprint)
        trainer.setup(resume)
        trainer.train()
    finally:
        # DDP's reducer holds the process group: freed only after destroy_process_group, it hung at exit under
        # gloo in about one torchrun run of three (tests/test_ddp.py). Drop it first.
        del trainer
        dist.close()
        locks.close()
    return Path(config.out) / CHECKPOINT_DIR


def _eos_id(model_config) -> int | None:
    """The token that ends each packed document: the base's first EOS (what training masks documents by)."""
    return model_config.eos_token_ids[0] if model_config.eos_token_ids else None


def _validation_sets(base: Path, data: tuple[str, ...], seq_len: int, eos_id: int | None) -> dict:
    """Named validation sets: the given files, or held-out Gutenberg books plus WikiText-2 test."""
    from latentcache.train import data as corpora

    if data:
        return {Path(p).name: corpora.load_eval_text(p, base, seq_len, eos_id=eos_id) for p in data}
    gutenberg = corpora.prepare_corpus(tokenizer_path=base, seq_len=seq_len, eos_id=eos_id,
                                       **corpora.default_gutenberg_sources().as_kwargs())
    return {"gutenberg-heldout": gutenberg["validation"],
            "wikitext2-test": corpora.load_eval_text(corpora.wikitext_test_path(), base, seq_len, eos_id=eos_id)}


def run_evaluation(config: EvalConfig) -> dict:
    """Table-1 perplexity (and benchmarks when ``config.tasks``) for each coprocessor against the frozen base.

    ``device``: ``auto`` takes CUDA when there is one (fp32 weights either way, so a GPU figure and a CPU
    figure on the same slice differ only by kernel rounding).

    Writes ``config.json_out``, a markdown table and a PNG plot beside it; returns the JSON document.
    """
    import json

    from latentcache.model import load_decoder
    from latentcache.train.trainer import resolve_device

    _require_eval_data(config)
    decoder = load_decoder(config.base, device=resolve_device(config.device))
    runs = _load_runs(config, decoder)
    report: dict = {"perplexity": {}, "benchmarks": {}}
    markdown = _perplexity_tables(config, decoder, runs, report)
    if config.tasks:
        markdown += _benchmark_tables(config, decoder, runs, report)
    write_atomically(config.json_out, json.dumps(report, indent=2))
    write_atomically(config.json_out.with_suffix(".md"), "\n\n".join(markdown) + "\n")
    return report


def _require_eval_data(config: EvalConfig) -> None:
    """Fail on missing evaluation data, in one line, before the base loads and the perplexity pass runs (the
    benchmarks come after it); with the Hub loader on, this is where their copies are fetched."""
    from latentcache.tasks import require_task_data
    from latentcache.train import data as corpora

    if not config.data:
        corpora.default_gutenberg_sources()
        corpora.wikitext_test_path()
    if config.tasks:
        require_task_data(_benchmark_config(config))


def _benchmark_config(config: EvalConfig):
    from latentcache.tasks import BenchmarkConfig

    return BenchmarkConfig(config.tasks, config.limit)


def _load_runs(config: EvalConfig, decoder) -> dict:
    """``{label: coprocessor}``, the frozen base alone first (label: the run folder's name)."""
    from latentcache.model.checkpoint import load_coprocessor

    runs = {"no-augmentation": None}
    for directory in config.coprocessors:
        name = Path(directory).parent.name
        runs[name if name and name not in runs else str(directory)] = load_coprocessor(directory, config.base,
                                                                                       decoder)[1]
    return runs


def _perplexity_tables(config: EvalConfig, decoder, runs: dict, report: dict) -> list[str]:
    """Table 1 per validation set and run (plus the shuffled-latents control); fills ``report``, returns markdown."""
    import torch

    from latentcache.train.data import leading_batches
    from latentcache.train.evaluate import (
        PerplexityConfig,
        evaluate_perplexity,
        markdown_table,
        plot_relative_change,
    )

    eos_id = _eos_id(decoder.config)
    markdown = []
    for set_name, dataset in _validation_sets(config.base, config.data, config.seq_len, eos_id).items():
        results = {}
        for name, coprocessor in runs.items():
            variants = [(name, False)] + ([(f"{name} (shuffled latents)", True)]
                                          if config.shuffled and coprocessor else [])
            for label, shuffle in variants:
                table = PerplexityConfig(points=config.points, shuffle_latents=shuffle, eos_id=eos_id)
                rows = leading_batches(dataset, config.sequences, config.batch_size)
                results[label] = evaluate_perplexity(decoder, coprocessor, map(torch.from_numpy, rows), table)
        report["perplexity"][set_name] = {label: r.to_dict() for label, r in results.items()}
        markdown.append(f"### {set_name}\n\n{markdown_table(results)}")
        plot_relative_change(results, config.json_out.with_name(f"{config.json_out.stem}-{set_name}.png"))
    return markdown


def _benchmark_tables(config: EvalConfig, decoder, runs: dict, report: dict) -> list[str]:
    """The benchmark tasks per coprocessor (each with its own baseline); fills ``report``, returns markdown."""
    from latentcache.reference import load_tokenizer
    from latentcache.tasks import benchmark_markdown
    from latentcache.train.benchmarks import run_benchmarks, tokenizer_functions

    encode, decode = tokenizer_functions(load_tokenizer(config.base))
    markdown = []
    for name, coprocessor in runs.items():
        if coprocessor is None:
            continue
        results = run_benchmarks(decoder, coprocessor, encode, decode, _benchmark_config(config))
        report["benchmarks"][name] = {task: r.to_dict() for task, r in results.items()}
        markdown.append(f"### benchmarks: {name}\n\n{benchmark_markdown(results)}")
    return markdown
