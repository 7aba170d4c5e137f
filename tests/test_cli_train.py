"""`latentcache train` and `latentcache eval` end to end on a tiny random base that has a tokenizer, and the bad
input they turn into one ``error:`` line (exit 1) without touching an existing run.

The base is ``llama-gqa-tied`` of ``tests/tiny.py`` saved with a WordLevel tokenizer of exactly its 97-token
vocabulary (``</s>`` is id 2, the config's ``eos_token_id``), so the real data pipeline, checkpointing and
evaluation run in about a second per command.
"""

import json
import random
import shutil

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file

from latentcache.cli import main
from tests.test_bad_input import assert_one_line_error
from tests.test_evaluate import write_fake_data
from tests.tiny import COMMON, build_tiny

SPECIALS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2: LlamaConfig's bos 1 and eos 2
WORDS = [f"w{i}" for i in range(COMMON["vocab_size"] - len(SPECIALS))]
# N_L=2, N_A=4, N_P=3 on 24-token sequences; warm-up longer than any run, so the learning rate of a step does
# not depend on --max-steps and a resumed run can be compared with a straight one.
TRAIN = ["--latents", 2, "--ahead", 4, "--points", 3, "--seq-len", 24, "--batch-size", 2, "--lr", 1e-3,
         "--warmup-steps", 10, "--seed", 3]


def save_tokenizer(directory):
    """A whitespace WordLevel tokenizer over SPECIALS + WORDS, as tokenizer.json + tokenizer_config.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({token: i for i, token in enumerate(SPECIALS + WORDS)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    ))


def make_base(directory, seed=0):
    """A tiny HF checkpoint directory with a tokenizer; ``seed`` picks other random weights (another base)."""
    build_tiny("llama-gqa-tied", directory, seed=seed)
    save_tokenizer(directory)
    return directory


def write_corpus(directory, documents=8, words=60, seed=0):
    """``documents`` text files of random words: ~480 tokens, 20 sequences of 24."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for number in range(documents):
        (directory / f"doc{number}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(words)) + "\n")
    return directory


def run_cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback is a bug: show it
    return result


def snapshot(directory):
    """Every file under ``directory`` (relative path -> bytes): proof that a refused command wrote nothing."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The base, another base (same tokenizer, other weights), a corpus with a validation split, a YAML config."""
    root = tmp_path_factory.mktemp("cli-train")
    make_base(root / "base")
    make_base(root / "other-base", seed=1)
    write_corpus(root / "corpus")
    (root / "train.yaml").write_text("val_fraction: 0.3\nlog_every: 1\neval_every: 2\nsave_every: 2\neval_batches: 1\n")
    return root


@pytest.fixture(autouse=True)
def data_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LATENTCACHE_HOME", str(tmp_path / "home"))  # the tokenized-corpus cache


def train(workspace, out, *extra, data=None):
    return run_cli("train", "--config", workspace / "train.yaml", "--base", workspace / "base",
                   "--data", data or workspace / "corpus", "--out", out, *TRAIN, *extra)


@pytest.fixture(scope="module")
def trained(workspace):
    """A finished 3-step run that the bad-input tests must leave byte-identical."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LATENTCACHE_HOME", str(workspace / "home"))
        result = train(workspace, workspace / "run", "--max-steps", 3)
    assert result.exit_code == 0, result.output
    return workspace / "run"


def metric_lines(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ---- train, resume, eval ---------------------------------------------------------------------------------
def test_train_writes_checkpoint_and_metrics_and_resume_continues_exactly(workspace, tmp_path):
    result = train(workspace, tmp_path / "a", "--max-steps", 3)
    assert result.exit_code == 0, result.output
    checkpoint = tmp_path / "a" / "checkpoint"
    assert result.stdout.strip().splitlines()[-1] == str(checkpoint)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["checkpoint", "metrics.jsonl"]
    assert sorted(p.name for p in checkpoint.iterdir()) == ["coprocessor.safetensors", "optimizer.safetensors",
                                                             "state.json"]
    state = json.loads((checkpoint / "state.json").read_text())
    assert state["step"] == 3 and state["train_config"]["num_latents"] == 2 and state["train_config"]["val_fraction"] == 0.3
    assert set(state["fingerprints"]) == {"base", "tokenizer", "data"} and all(state["fingerprints"].values())
    assert "soft_tokens" in load_file(checkpoint / "coprocessor.safetensors")
    metrics = metric_lines(tmp_path / "a")
    assert [m["step"] for m in metrics] == [1, 2, 3]  # log_every 1 from the YAML file
    assert all({"loss", "lr", "grad_norm", "tokens_per_s"} <= set(m) for m in metrics)
    assert "val_loss" in metrics[1] and "val_loss" not in metrics[0]  # eval_every 2, and at the last step
    assert {"val_loss", "val_base_loss", "val_delta"} <= set(metrics[2])

    resumed = train(workspace, tmp_path / "a", "--max-steps", 5, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "resumed from step 3" in resumed.output
    assert json.loads((checkpoint / "state.json").read_text())["step"] == 5
    straight = train(workspace, tmp_path / "b", "--max-steps", 5)
    assert straight.exit_code == 0, straight.output
    assert [m["step"] for m in metric_lines(tmp_path / "a")] == [1, 2, 3, 4, 5]
    for continued, uninterrupted in zip(metric_lines(tmp_path / "a"), metric_lines(tmp_path / "b")):
        assert continued["loss"] == pytest.approx(uninterrupted["loss"], abs=1e-5)
    weights = load_file(checkpoint / "coprocessor.safetensors")
    reference = load_file(tmp_path / "b" / "checkpoint" / "coprocessor.safetensors")
    assert max((weights[k] - reference[k]).abs().max().item() for k in reference) <= 1e-6


def test_eval_writes_the_table_json(workspace, trained, tmp_path, monkeypatch):
    # The benchmarks read a tiny data root in the real ARC/MMLU/GSM8K formats, not ../shared.
    monkeypatch.setenv("LATENTCACHE_DATA", str(write_fake_data(tmp_path / "data")))
    eval_text = write_corpus(tmp_path / "heldout", documents=1, words=100, seed=9) / "doc0.txt"
    out = tmp_path / "eval" / "table.json"
    result = run_cli("eval", "--base", workspace / "base", "--coprocessor", trained / "checkpoint", "--data", eval_text,
                     "--json", out, "--seq-len", 40, "--sequences", 2, "--points", 2, "--tasks", "arc-easy",
                     "--tasks", "mmlu", "--limit", 2)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert set(report) == {"perplexity", "benchmarks"}
    runs = report["perplexity"]["doc0.txt"]
    assert list(runs) == ["no-augmentation", "run", "run (shuffled latents)"]
    for name, run in runs.items():
        assert set(run) == {"rows", "config", "num_latents", "pause", "sequences"}
        assert run["sequences"] == 2 and run["num_latents"] == (0 if name == "no-augmentation" else 2)
        assert run["config"]["points"] == 2 and run["config"]["eos_id"] == 2  # packed documents are respected
        assert run["config"]["shuffle_latents"] == name.endswith("(shuffled latents)")
        assert [row["position"] for row in run["rows"]] == [1, 2, 4, 8, 16, 32]
        for row, baseline in zip(run["rows"], runs["no-augmentation"]["rows"]):
            assert set(row) == {"position", "baseline_ppl", "augmented_ppl", "relative_change_pct", "targets",
                                "ci95_low_pct", "ci95_high_pct"}
            # Within rounding: an untrained gated coprocessor changes perplexity by ~1e-5 %, and then every
            # resample gives the estimate itself, summed in another order.
            slack = 1e-9
            assert row["ci95_low_pct"] - slack <= row["relative_change_pct"] <= row["ci95_high_pct"] + slack
            assert row["targets"] == 2 * 2 and row["baseline_ppl"] == baseline["baseline_ppl"] > 1
    assert all(row["relative_change_pct"] == 0 for row in runs["no-augmentation"]["rows"])
    arc, mmlu = report["benchmarks"]["run"]["arc-easy"], report["benchmarks"]["run"]["mmlu"]
    assert arc["n"] == 2 and arc["num_latents"] == 2 and set(arc["baseline"]) == set(arc["augmented"])
    assert mmlu["n"] == 2 and mmlu["shots"] == 5 and set(mmlu["baseline"]) == set(mmlu["augmented"])
    markdown = out.with_suffix(".md").read_text()
    assert "### doc0.txt" in markdown and "| Position | Baseline ppl | no-augmentation | run |" in markdown
    assert markdown in result.stdout
    assert (out.parent / "table-doc0.txt.png").stat().st_size > 1000


# ---- missing data: one line naming it and how to get it, before the base is loaded ------------------------
def test_eval_without_its_benchmark_data_fails_before_loading_the_base(workspace, trained, tmp_path, monkeypatch):
    root = write_fake_data(tmp_path / "data")
    shutil.rmtree(root / "mmlu" / "dev")  # ARC is there, MMLU's few-shot split is not
    monkeypatch.setenv("LATENTCACHE_DATA", str(root))

    def load_decoder(*args, **kwargs):
        raise AssertionError("the base was loaded before the data was checked")

    monkeypatch.setattr("latentcache.model.load_decoder", load_decoder)
    eval_text = write_corpus(tmp_path / "heldout", documents=1, words=100) / "doc0.txt"
    result = run_cli("eval", "--base", workspace / "base", "--coprocessor", trained / "checkpoint", "--data", eval_text,
                     "--json", tmp_path / "eval.json", "--tasks", "arc-easy", "--tasks", "mmlu")
    assert_one_line_error(result.exit_code, result.output, "MMLU is missing",
                          str(root / "mmlu" / "dev"), "$LATENTCACHE_DATA", "--data-root",
                          "pip install 'latentcache[data]'", "LATENTCACHE_DATA_HUB=1", "cais/mmlu")
    assert not (tmp_path / "eval.json").exists()


def test_train_on_the_default_corpus_without_it_names_what_is_missing(workspace, tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTCACHE_DATA", str(tmp_path / "empty"))
    result = run_cli("train", "--config", workspace / "train.yaml", "--base", workspace / "base",
                     "--out", tmp_path / "run", *TRAIN, "--max-steps", 1)
    assert_one_line_error(result.exit_code, result.output, "Gutenberg fiction",
                          str(tmp_path / "empty" / "gutenberg-fiction" / "british-novels.tar.xz"),
                          "no Hugging Face Hub copy", "--data")
    assert not (tmp_path / "run").exists()


# ---- bad input: one line naming the problem and the fix, exit 1, the existing run untouched -------------
def bad_text(tmp_path, name, payload):
    (tmp_path / name).write_bytes(payload)
    return tmp_path / name


@pytest.mark.parametrize("case, fragments", [
    ("empty corpus", ["empty.txt", "none of the 1 documents", "1 are blank", "add text"]),
    ("non-UTF-8 corpus", ["latin1.txt", "not UTF-8 text", "convert it to UTF-8"]),
    ("text shorter than one sequence", ["tiny.txt", ("train split has 5 tokens (1 of 1 documents), fewer than one "
                                        "sequence of seq_len=24"), "add text"]),
    ("ahead fills the sequence", ["ahead 24 leaves no context in a sequence of 24",
                                  "lower --ahead or raise --seq-len"]),
    ("latents beyond the base's positions", ["200 tokens plus 60 latents need positions up to 258", "256",
                                             "lower --seq-len or --latents"]),
    ("more latents than tokens", ["--latents 120 exceeds the base's vocabulary of 97 tokens", "lower --latents"]),
    ("another base", ["was trained on another base than", "other-base (fingerprint mismatch)",
                      "resume with the same --base"]),
    ("changed config", ["cannot resume with a changed config (lr 0.0005 (was 0.001))", "start a new --out"]),
])
def test_bad_training_input_is_one_line_and_leaves_the_run_untouched(workspace, trained, tmp_path, case, fragments):
    before = snapshot(trained)
    data = {
        "empty corpus": ("empty.txt", b""),
        "non-UTF-8 corpus": ("latin1.txt", "w1 café w2".encode("latin-1")),
        "text shorter than one sequence": ("tiny.txt", b"w1 w2 w3 w4"),  # its name hashes into train
    }.get(case)
    overrides = {
        "ahead fills the sequence": ["--ahead", 24],
        "latents beyond the base's positions": ["--seq-len", 200, "--latents", 60],
        "more latents than tokens": ["--latents", 120],
        "another base": ["--base", workspace / "other-base"],
        "changed config": ["--lr", 5e-4],
    }.get(case, [])
    # The last of a repeated option wins (--data adds up, so a bad corpus replaces the good one instead).
    result = train(workspace, trained, "--max-steps", 4, "--resume", *overrides,
                   data=data and bad_text(tmp_path, *data))
    assert_one_line_error(result.exit_code, result.output, *fragments)
    assert snapshot(trained) == before


def test_an_existing_checkpoint_is_not_overwritten_and_resume_needs_one(workspace, trained, tmp_path):
    before = snapshot(trained)
    result = train(workspace, trained, "--max-steps", 4)
    assert_one_line_error(result.exit_code, result.output, str(trained / "checkpoint"), "a checkpoint exists",
                          "pass --resume")
    assert snapshot(trained) == before
    result = train(workspace, tmp_path / "fresh", "--max-steps", 4, "--resume")
    assert_one_line_error(result.exit_code, result.output, "no checkpoint to resume", "drop --resume")
    assert not (tmp_path / "fresh").exists()


def test_eval_refuses_a_checkpoint_of_another_base(workspace, trained, tmp_path):
    before = snapshot(trained)
    eval_text = write_corpus(tmp_path / "heldout", documents=1, words=100) / "doc0.txt"
    result = run_cli("eval", "--base", workspace / "other-base", "--coprocessor", trained / "checkpoint",
                     "--data", eval_text, "--json", tmp_path / "eval.json", "--seq-len", 40, "--sequences", 2)
    assert_one_line_error(result.exit_code, result.output, str(trained / "checkpoint"), "trained on another base",
                          "pass the --base it was trained on")
    assert not (tmp_path / "eval.json").exists() and snapshot(trained) == before
