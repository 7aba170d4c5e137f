"""The data layer: where the data root is, the one-line message for missing data, and the opt-in Hub loader.

The Hub loader is tested through its real code path (``datasets.load_dataset``, then the conversion to the
files of ../shared/data, then the readers) with the Hub repository swapped for the "json"/"parquet" builders
over files the test writes in the Hub's row formats; nothing here reaches the network.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from latentcache import catalog, paths, tasks
from latentcache.errors import DataError
from latentcache.train import data

ROOT = Path(__file__).resolve().parents[1]

# Rows as the Hub datasets hold them (allenai/ai2_arc, cais/mmlu, openai/gsm8k, Salesforce/wikitext).
ARC_ROWS = [
    {"id": "q1", "question": "Which is hot?", "choices": {"text": ["ice", "fire", "snow"], "label": ["A", "B", "C"]},
     "answerKey": "B"},
    {"id": "q2", "question": "What is wet?", "choices": {"text": ["water", "sand"], "label": ["1", "2"]},
     "answerKey": "1"},
]
MMLU_ROWS = [
    {"question": "2+2?", "subject": "abstract_algebra", "choices": ["1", "2", "3", "4"], "answer": 3},
    {"question": "Cells, in short?", "subject": "anatomy", "choices": ["a", "b, c", "d", "e"], "answer": 1},
    {"question": "3?", "subject": "abstract_algebra", "choices": ["3", "2", "1", "0"], "answer": 0},
]
GSM8K_ROWS = [{"question": "Tom has 2 apples and gets 3 more. How many?", "answer": "2 + 3 = <<2+3=5>>5\n#### 5"}]
WIKITEXT_ROWS = [{"text": ""}, {"text": " = Title = \n"}, {"text": ""}, {"text": " Some text .\n"}]


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A clean environment: no data-root variables, the cache (and the Hub copies) in tmp_path."""
    for name in (paths.DATA_ENV, paths.SHARED_ENV):
        # set first, so that monkeypatch restores the variable even when the test sets it (set_data_root does)
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv("LATENTCACHE_HOME", str(tmp_path / "home"))
    return monkeypatch


@pytest.fixture
def offline_datasets(monkeypatch, tmp_path):
    """The datasets library with the Hub switched off and its cache in tmp_path (the builders still load files)."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    return datasets


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def use_local_hub(monkeypatch, folder: str, builder: str, pattern: Path) -> None:
    """Point the catalog entry ``folder`` at ``builder`` over ``pattern`` (with {config}/{split}) instead of the Hub."""
    entry = catalog.DATASETS[folder]
    hub = dataclasses.replace(entry.hub, path=builder, data_files=str(pattern))
    monkeypatch.setitem(catalog.DATASETS, folder, dataclasses.replace(entry, hub=hub))


# ---- the data root --------------------------------------------------------------------------------------
def test_the_data_root_comes_from_the_argument_then_the_environment_then_beside_the_checkout(env, tmp_path):
    default = ROOT.parent / "shared" / "data"
    assert paths.data_root() == default and "default ../shared/data" in paths.data_root_origin()
    env.setenv(paths.SHARED_ENV, str(tmp_path / "shared"))
    assert paths.data_root() == tmp_path / "shared" / "data" and paths.data_root_origin() == "$LATENTCACHE_SHARED/data"
    env.setenv(paths.DATA_ENV, str(tmp_path / "data"))
    assert paths.data_root() == tmp_path / "data" and paths.data_root_origin() == "$LATENTCACHE_DATA"
    assert paths.data_root(tmp_path / "given") == tmp_path / "given"


def test_set_data_root_reaches_child_processes_and_refuses_a_missing_folder(env, tmp_path):
    (tmp_path / "mine").mkdir()
    assert paths.set_data_root(tmp_path / "mine") == (tmp_path / "mine").resolve()
    assert paths.data_root() == (tmp_path / "mine").resolve()
    child = subprocess.run([sys.executable, "-c", "from latentcache.paths import data_root; print(data_root())"],
                           capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert child.stdout.strip() == str((tmp_path / "mine").resolve())
    with pytest.raises(DataError, match=r"data root .*absent: no such folder; give a folder laid out like "):
        paths.set_data_root(tmp_path / "absent")
    assert paths.data_root() == (tmp_path / "mine").resolve()  # unchanged by the refusal


# ---- missing data -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("read, title, relative, hub_id", [
    (lambda: tasks.read_arc(split="Dev"), "ARC", "arc/ARC-Easy-Dev.jsonl", "allenai/ai2_arc"),
    (lambda: tasks.read_mmlu(split="test"), "MMLU", "mmlu/test", "cais/mmlu"),
    (lambda: tasks.read_gsm8k(split="train"), "GSM8K", "gsm8k/train.jsonl", "openai/gsm8k"),
    (data.wikitext_test_path, "WikiText-2", "wikitext-2/raw/wiki.test.raw", "Salesforce/wikitext"),
])
def test_missing_data_is_one_line_naming_it_where_it_was_looked_for_and_both_fixes(env, tmp_path, read, title,
                                                                                    relative, hub_id):
    env.setenv(paths.DATA_ENV, str(tmp_path / "empty"))
    with pytest.raises(DataError) as excinfo:
        read()
    message = str(excinfo.value)
    assert "\n" not in message and message.startswith(f"{title}")
    for fragment in (f"no {tmp_path / 'empty' / relative} (data root from $LATENTCACHE_DATA)",
                     "set LATENTCACHE_DATA (or --data-root) to a folder laid out like ../shared/data",
                     "pip install 'latentcache[data]'", "LATENTCACHE_DATA_HUB=1", hub_id):
        assert fragment in message, message


def test_gutenberg_has_no_hub_copy_so_the_loader_does_not_try(env, tmp_path, offline_datasets):
    env.setenv(paths.DATA_ENV, str(tmp_path / "empty"))
    env.setenv(catalog.HUB_ENV, "1")
    with pytest.raises(DataError) as excinfo:
        data.default_gutenberg_sources()
    assert "no Hugging Face Hub copy" in str(excinfo.value) and "--data" in str(excinfo.value)
    assert not catalog.hub_root().exists()


def test_the_hub_loader_without_the_datasets_library_says_what_to_install(env, tmp_path):
    env.setenv(paths.DATA_ENV, str(tmp_path / "empty"))
    env.setenv(catalog.HUB_ENV, "1")
    env.setitem(sys.modules, "datasets", None)  # `import datasets` now raises ImportError
    with pytest.raises(DataError, match=r"LATENTCACHE_DATA_HUB=1 needs the Hugging Face datasets library: "
                                        r"pip install 'latentcache\[data\]'"):
        tasks.read_gsm8k()


def test_a_failing_hub_load_is_one_line(env, tmp_path, offline_datasets):
    env.setenv(paths.DATA_ENV, str(tmp_path / "empty"))
    env.setenv(catalog.HUB_ENV, "1")
    use_local_hub(env, "gsm8k", "json", tmp_path / "nowhere" / "{split}.jsonl")
    with pytest.raises(DataError) as excinfo:
        tasks.read_gsm8k()
    message = str(excinfo.value)
    assert "\n" not in message and message.startswith("GSM8K: loading json from the Hugging Face Hub failed (")
    assert "set LATENTCACHE_DATA" in message
    assert not (catalog.hub_root() / "gsm8k" / "test.jsonl").exists()  # nothing half-written


def test_the_hub_loader_is_off_unless_asked(env, tmp_path, offline_datasets):
    env.setenv(paths.DATA_ENV, str(tmp_path / "empty"))
    write_jsonl(tmp_path / "hub" / "main" / "test.jsonl", GSM8K_ROWS)
    use_local_hub(env, "gsm8k", "json", tmp_path / "hub" / "{config}" / "{split}.jsonl")
    for value in ("", "0", "false"):
        env.setenv(catalog.HUB_ENV, value)
        with pytest.raises(DataError, match="GSM8K is missing"):
            tasks.read_gsm8k()
    assert not catalog.hub_root().exists()


# ---- the Hub loader, on local files in the Hub's formats --------------------------------------------------
def test_hub_rows_become_the_files_of_shared_data_and_the_readers_parse_them(env, tmp_path, offline_datasets,
                                                                           capsys):
    env.setenv(paths.DATA_ENV, str(tmp_path / "empty"))
    env.setenv(catalog.HUB_ENV, "1")
    hub = tmp_path / "hub"
    write_jsonl(hub / "arc" / "ARC-Easy" / "test.jsonl", ARC_ROWS)
    write_jsonl(hub / "gsm8k" / "main" / "test.jsonl", GSM8K_ROWS)
    (hub / "mmlu" / "all").mkdir(parents=True)
    offline_datasets.Dataset.from_list(MMLU_ROWS).to_parquet(str(hub / "mmlu" / "all" / "test.parquet"))
    use_local_hub(env, "arc", "json", hub / "arc" / "{config}" / "{split}.jsonl")
    use_local_hub(env, "gsm8k", "json", hub / "gsm8k" / "{config}" / "{split}.jsonl")
    use_local_hub(env, "mmlu", "parquet", hub / "mmlu" / "{config}" / "{split}.parquet")

    arc = tasks.read_arc(subset="Easy", split="Test")
    assert [(i.question, i.choices, i.answer) for i in arc] == [("Which is hot?", ("ice", "fire", "snow"), 1),
                                                                 ("What is wet?", ("water", "sand"), 0)]
    copy = catalog.hub_root() / "arc" / "ARC-Easy-Test.jsonl"
    assert json.loads(copy.read_text().splitlines()[0]) == {  # the original release's row format
        "id": "q1", "answerKey": "B", "question": {"stem": "Which is hot?", "choices": [
            {"text": "ice", "label": "A"}, {"text": "fire", "label": "B"}, {"text": "snow", "label": "C"}]}}
    mmlu = tasks.read_mmlu(split="test")
    assert [(i.subject, i.question, i.choices[i.answer]) for i in mmlu] == [
        ("abstract_algebra", "2+2?", "4"), ("abstract_algebra", "3?", "3"), ("anatomy", "Cells, in short?", "b, c")]
    assert sorted(p.name for p in (catalog.hub_root() / "mmlu" / "test").iterdir()) == [
        "abstract_algebra_test.csv", "anatomy_test.csv"]
    assert [(i.answer, i.solution) for i in tasks.read_gsm8k(split="test")] == [("5", GSM8K_ROWS[0]["answer"])]
    assert "from json with the datasets library" in capsys.readouterr().err  # never silent
    source = (catalog.hub_root() / "arc" / "SOURCE.md").read_text()
    assert "LATENTCACHE_DATA_HUB=1" in source and f"datasets {offline_datasets.__version__}" in source

    # A later run reuses the copies: with the files gone, the builder is never called again.
    for path in (hub / "arc" / "ARC-Easy" / "test.jsonl", hub / "gsm8k" / "main" / "test.jsonl"):
        path.unlink()
    assert tasks.read_arc(subset="Easy", split="Test") == arc and len(tasks.read_gsm8k(split="test")) == 1


def test_wikitext_from_the_hub_drops_blank_rows_like_the_shared_copy(env, tmp_path, offline_datasets):
    env.setenv(paths.DATA_ENV, str(tmp_path / "empty"))
    env.setenv(catalog.HUB_ENV, "1")
    write_jsonl(tmp_path / "hub" / "wikitext-2-raw-v1" / "test.jsonl", WIKITEXT_ROWS)
    use_local_hub(env, "wikitext-2", "json", tmp_path / "hub" / "{config}" / "{split}.jsonl")
    path = data.wikitext_test_path()
    assert path == catalog.hub_root() / "wikitext-2" / "raw" / "wiki.test.raw"
    assert path.read_text() == " = Title = \n Some text .\n"


def test_tinyshakespeare_from_the_hub_is_its_three_splits_in_order(env, tmp_path, offline_datasets):
    env.setenv(paths.DATA_ENV, str(tmp_path / "empty"))
    env.setenv(catalog.HUB_ENV, "yes")
    for split, text in (("train", "First Citizen:\n"), ("validation", "Before we proceed,\n"), ("test", "hear me.\n")):
        write_jsonl(tmp_path / "hub" / f"{split}.jsonl", [{"text": text}])
    use_local_hub(env, "tinyshakespeare", "json", tmp_path / "hub" / "{split}.jsonl")
    assert catalog.locate("tinyshakespeare/input.txt").read_text() == "First Citizen:\nBefore we proceed,\nhear me.\n"
    with pytest.raises(DataError, match="tinyshakespeare/train.txt: the Hub loader knows no such file"):
        catalog.locate("tinyshakespeare/train.txt")


def test_the_data_root_wins_over_the_hub(env, tmp_path, offline_datasets):
    root = tmp_path / "data"
    write_jsonl(root / "gsm8k" / "test.jsonl", [{"question": "1+1?", "answer": "#### 2"}])
    env.setenv(paths.DATA_ENV, str(root))
    env.setenv(catalog.HUB_ENV, "1")
    use_local_hub(env, "gsm8k", "json", tmp_path / "nowhere" / "{split}.jsonl")  # would fail if it were asked
    assert [i.answer for i in tasks.read_gsm8k()] == ["2"]


# ---- the examples that read benchmarks: one line, no traceback, before any artifacts are made ------------
@pytest.mark.parametrize("example", ["02_latents_vs_cot", "04_async"])
def test_examples_without_their_data_print_one_line(tmp_path, example):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LATENTCACHE_DATA": str(tmp_path / "empty"),
           "LATENTCACHE_HOME": str(tmp_path / "home")}
    env.pop("LATENTCACHE_DATA_HUB", None)
    result = subprocess.run([sys.executable, str(ROOT / "examples" / example / "run.py"), "--quick"],
                            check=False, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0, result.stderr
    assert result.stderr.startswith(f"error: ARC (AI2 Reasoning Challenge) is missing: no "
                                    f"{tmp_path / 'empty' / 'arc' / 'ARC-Easy-Test.jsonl'}")
    assert not (tmp_path / "home").exists()  # the default artifacts were not exported first
