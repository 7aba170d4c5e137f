"""Table-1 perplexity evaluation and benchmark mode, checked against independent plain-forward computations."""

import json
import math
import string

import pytest
import torch
import torch.nn.functional as F

from latentcache import paths, tasks
from latentcache.errors import LatentcacheError
from latentcache.model import generate as generate_steps
from latentcache.model import load_decoder
from latentcache.model.coprocessor import Coprocessor, CoprocessorConfig
from latentcache.model.generate import generate
from latentcache.model.layout import sample_points
from latentcache.model.masks import causal_mask
from latentcache.train import benchmarks as bm
from latentcache.train.evaluate import (
    PerplexityConfig,
    PerplexityResult,
    bootstrap_interval,
    evaluate_perplexity,
    markdown_table,
    plot_relative_change,
)
from latentcache.train.objective import base_cache_for

N_L = 3
CONFIG = PerplexityConfig(positions=(1, 2, 4, 8), points=3, seed=7)


@pytest.fixture(scope="module")
def base(tiny_model):
    _, path = tiny_model("llama-gqa-tied")
    return load_decoder(path)


@pytest.fixture(scope="module")
def coprocessor(base):
    return Coprocessor(base, CoprocessorConfig(num_latents=N_L, variant="gated", gate_init=-1.0), seed=0).eval()


def batches(seed=0, n=2, batch=2, length=24):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 97, (batch, length), generator=generator) for _ in range(n)]


def full_logprobs(base, tokens):
    length = tokens.shape[1]
    mask = causal_mask(torch.ones(tokens.shape, dtype=torch.bool), torch.arange(length))
    with torch.no_grad():
        hidden = base(tokens, position_ids=torch.arange(length).expand(tokens.shape[0], -1), attention_mask=mask)
        return F.log_softmax(base.logits(hidden).float(), -1)


# ---- Table 1 ---------------------------------------------------------------------------------------------
def test_baseline_perplexity_is_exp_mean_nll_of_a_plain_forward(base):
    data = batches()
    result = evaluate_perplexity(base, None, data, CONFIG)
    generator = torch.Generator().manual_seed(CONFIG.seed)
    nll = {k: [] for k in CONFIG.positions}
    for tokens in data:
        points = sample_points(2, 24, CONFIG.points, CONFIG.ahead, generator)
        logprobs = full_logprobs(base, tokens)
        for row in range(2):
            for p in points[row].tolist():
                for k in CONFIG.positions:  # x[p+k] is predicted at slot p+k-1
                    nll[k].append(-logprobs[row, p + k - 1, tokens[row, p + k]].item())
    for row in result.rows:
        assert row.targets == len(nll[row.position]) == 2 * 2 * CONFIG.points
        assert math.isclose(row.baseline_ppl, math.exp(sum(nll[row.position]) / row.targets), rel_tol=1e-6)
        assert row.augmented_ppl == row.baseline_ppl and row.relative_change_pct == 0.0  # control (a)
    assert result.num_latents == 0 and result.sequences == 4


def test_every_position_when_points_is_none(base):
    result = evaluate_perplexity(base, None, batches(n=1), PerplexityConfig(positions=(1, 2), points=None))
    assert result.rows[0].targets == 2 * (24 - 2)


def test_augmented_run_is_deterministic_and_json_round_trips(base, coprocessor):
    first = evaluate_perplexity(base, coprocessor, batches(), CONFIG)
    again = evaluate_perplexity(base, coprocessor, batches(), CONFIG)
    assert first == again and first.num_latents == N_L and not first.pause
    assert all(row.relative_change_pct != 0 for row in first.rows)
    assert PerplexityResult.from_dict(json.loads(json.dumps(first.to_dict()))) == first
    other_seed = evaluate_perplexity(base, coprocessor, batches(), PerplexityConfig(CONFIG.positions, 3, seed=8))
    assert other_seed.rows[0].baseline_ppl != first.rows[0].baseline_ppl


def test_bootstrap_interval_brackets_the_change_and_is_paired(base, coprocessor):
    result = evaluate_perplexity(base, coprocessor, batches(n=4), CONFIG)
    for row in result.rows:
        assert row.ci95_low_pct < row.relative_change_pct < row.ci95_high_pct
    # Every sequence shifted by the same amount: resampling cannot move the paired change.
    base_nll = torch.rand(6, 2, dtype=torch.float64) * 10
    low, high = bootstrap_interval(base_nll, base_nll + 0.3, points_per_sequence=3)
    assert torch.allclose(low, torch.full((2,), math.expm1(0.1) * 100, dtype=torch.float64)) and torch.allclose(low, high)


def test_shuffled_latents_change_the_augmented_perplexity_only(base, coprocessor):
    plain = evaluate_perplexity(base, coprocessor, batches(), CONFIG)
    shuffled = evaluate_perplexity(base, coprocessor, batches(), PerplexityConfig(CONFIG.positions, 3, 7, True))
    for a, b in zip(plain.rows, shuffled.rows):
        assert a.baseline_ppl == b.baseline_ppl and a.augmented_ppl != b.augmented_ppl
    with pytest.raises(LatentcacheError, match="at least 2 sequences"):
        evaluate_perplexity(base, coprocessor, batches(batch=1), PerplexityConfig(CONFIG.positions, 3, 7, True))


def test_pause_control_and_table_and_plot(base, coprocessor, tmp_path):
    pause = Coprocessor(base, CoprocessorConfig(num_latents=N_L, pause=True))
    runs = {
        "none": evaluate_perplexity(base, None, batches(), CONFIG),
        f"{N_L} latents": evaluate_perplexity(base, coprocessor, batches(), CONFIG),
        "pause": evaluate_perplexity(base, pause, batches(), CONFIG),
    }
    assert runs["pause"].pause and all(math.isfinite(r.augmented_ppl) for r in runs["pause"].rows)
    table = markdown_table(runs).splitlines()
    assert table[0] == "| Position | Baseline ppl | none | 3 latents | pause |"
    assert [line.split("|")[1].strip() for line in table[2:]] == ["1", "2", "4", "8"]
    assert "+0.00% [+0.00, +0.00] (" in table[2]
    png = plot_relative_change(runs, tmp_path / "plots" / "table1.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    elsewhere = evaluate_perplexity(base, None, batches(seed=1), CONFIG)
    with pytest.raises(LatentcacheError, match="other targets"):
        markdown_table({"a": runs["none"], "b": elsewhere})


def test_bad_inputs_are_one_line_errors(base):
    with pytest.raises(LatentcacheError, match="too short"):
        evaluate_perplexity(base, None, batches(length=10), CONFIG)
    with pytest.raises(LatentcacheError, match="empty"):
        evaluate_perplexity(base, None, [], CONFIG)
    with pytest.raises(LatentcacheError, match="increasing"):
        PerplexityConfig(positions=(4, 2))


# ---- benchmarks ------------------------------------------------------------------------------------------
ALPHABET = "".join(c for c in string.printable if c not in "\t\r\x0b\x0c")  # 96 characters, ids < 97


def encode(text):
    return [ALPHABET.index(c) if c in ALPHABET else ALPHABET.index("?") for c in text]


def decode(ids):
    return "".join(ALPHABET[i] for i in ids)


def write_fake_data(root):
    (root / "arc").mkdir(parents=True)
    (root / "mmlu" / "dev").mkdir(parents=True)
    (root / "mmlu" / "test").mkdir(parents=True)
    (root / "gsm8k").mkdir()
    arc = [{"id": f"q{i}", "question": {"stem": f"Sky {i}?", "choices": [
        {"text": "blue", "label": "A"}, {"text": "green", "label": "B"}, {"text": "red", "label": "C"}]},
        "answerKey": "A" if i % 2 else "C"} for i in range(3)]
    arc.append({"id": "n", "question": {"stem": "One?", "choices": [{"text": "1", "label": "1"},
                                                                    {"text": "2", "label": "2"}]}, "answerKey": "2"})
    for subset in ("Easy", "Challenge"):
        (root / "arc" / f"ARC-{subset}-Test.jsonl").write_text("\n".join(json.dumps(r) for r in arc) + "\n")
    header = "question,choice0,choice1,choice2,choice3,answer\n"
    for subject in ("algebra", "biology"):
        (root / "mmlu" / "dev" / f"{subject}_dev.csv").write_text(header + '"1+1, twice?",1,2,3,4,1\n')
        (root / "mmlu" / "test" / f"{subject}_test.csv").write_text(header + "2+2?,1,2,3,4,3\n3?,3,2,1,0,0\n")
    gsm = [{"question": f"{i}+1?", "answer": f"{i}+1=<<{i}+1={i + 1}>>{i + 1}\n#### {i + 1:,}"} for i in (9, 999)]
    for split in ("train", "test"):
        (root / "gsm8k" / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in gsm) + "\n")
    return root


def test_readers_parse_the_fake_formats(tmp_path):
    root = write_fake_data(tmp_path / "data")
    arc = tasks.read_arc(root, "Easy")
    assert len(arc) == 4 and arc[0].choices == ("blue", "green", "red") and arc[0].answer == 2 and arc[3].answer == 1
    mmlu = tasks.read_mmlu(root, "test")
    assert [i.subject for i in mmlu] == ["algebra", "algebra", "biology", "biology"] and mmlu[0].answer == 3
    assert tasks.read_mmlu(root, "dev")[0].question == "1+1, twice?"
    gsm = tasks.read_gsm8k(root, "test")
    assert [i.answer for i in gsm] == ["10", "1000"]
    assert "<<" not in tasks.gsm8k_prompt(gsm[1], gsm[:1]) and tasks.gsm8k_prompt(gsm[1], []).endswith("999+1?\nAnswer:")
    assert [i.subject for i in tasks.spread(mmlu, 3)] == ["algebra", "biology", "algebra"]


@pytest.mark.needs_data("arc", "mmlu", "gsm8k")
def test_readers_parse_the_shared_eval_sets():
    root = tasks.data_root()
    easy, challenge = tasks.read_arc(root, "Easy"), tasks.read_arc(root, "Challenge")
    assert (len(easy), len(challenge)) == (2376, 1172)
    assert easy[0].question.startswith("Which statement best explains why photosynthesis") and easy[0].answer == 0
    assert all(2 <= len(i.choices) <= 5 for i in easy + challenge)
    test, dev = tasks.read_mmlu(root, "test"), tasks.read_mmlu(root, "dev")
    assert (len(test), len(dev), len({i.subject for i in test})) == (14042, 285, 57)
    assert test[0].subject == "abstract_algebra" and test[0].choices[test[0].answer] == "4"
    gsm_test, gsm_train = tasks.read_gsm8k(root, "test"), tasks.read_gsm8k(root, "train")
    assert (len(gsm_test), len(gsm_train)) == (1319, 7473)
    assert gsm_test[0].question.startswith("Janet") and gsm_test[0].answer == "18"


def test_data_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("LATENTCACHE_DATA", raising=False)
    monkeypatch.setenv("LATENTCACHE_SHARED", str(tmp_path))  # the older variable names the folder above data/
    assert tasks.data_root() == tmp_path / "data"
    with pytest.raises(LatentcacheError, match="GSM8K is missing: no .*gsm8k/test.jsonl"):
        tasks.read_gsm8k()
    monkeypatch.setenv("LATENTCACHE_DATA", str(tmp_path / "elsewhere"))  # the data root itself, and it wins
    assert tasks.data_root() == tmp_path / "elsewhere"
    assert tasks.data_root(tmp_path / "given") == tmp_path / "given"
    monkeypatch.delenv("LATENTCACHE_DATA")
    monkeypatch.delenv("LATENTCACHE_SHARED")
    assert tasks.data_root() == paths.shared_dir() / "data" and paths.shared_dir().name == "shared"


def test_a_missing_task_file_fails_before_any_task_runs(tmp_path):
    root = write_fake_data(tmp_path / "data")
    (root / "gsm8k" / "train.jsonl").unlink()  # the last file the last task reads
    config = tasks.BenchmarkConfig(("arc-easy", "mmlu", "gsm8k"), limit=1)
    assert tasks.task_files(config) == ("arc/ARC-Easy-Test.jsonl", "mmlu/dev", "mmlu/test", "gsm8k/test.jsonl",
                                        "gsm8k/train.jsonl")
    scored = []

    def encode(text):
        scored.append(text)  # any call means a task ran before the check
        return [1]

    with pytest.raises(LatentcacheError, match="GSM8K is missing: no .*gsm8k/train.jsonl") as excinfo:
        bm.run_benchmarks(None, None, encode, lambda ids: "", config, root)
    assert "\n" not in str(excinfo.value) and scored == []


def test_answer_extraction():
    assert tasks.extract_answer(" 3 apples, 4 pears = 7\n#### 1,200.0\n\nQuestion: 5?") == "1200"
    assert tasks.extract_answer(" she pays $12.50 then 3") == "3"
    assert tasks.extract_answer(" no numbers") is None
    assert tasks.normalize_number("-0.50") == "-0.5"


def independent_choice_logprob(base, prompt_ids, choice_ids, latents=None, coprocessor=None):
    """Summed log-prob of ``choice_ids`` from one plain causal pass over [prompt[:-1], latents, prompt[-1], choice]
    (the gated variant: the last prompt token re-fed at its own position, the gate on the latents' slots)."""
    p, n = len(prompt_ids) - 1, 0 if latents is None else latents.shape[1]
    pieces = [base.embed(torch.tensor([prompt_ids[:-1]]))]
    if latents is not None:
        pieces.append(latents)
    pieces.append(base.embed(torch.tensor([prompt_ids[-1:] + choice_ids])))
    embeds = torch.cat(pieces, dim=1)
    length = embeds.shape[1]
    positions = torch.cat((torch.arange(p), torch.arange(p + 1, p + 1 + n), torch.arange(p, p + 1 + len(choice_ids))))
    is_latent = (torch.arange(length) >= p) & (torch.arange(length) < p + n)
    gate = coprocessor.gate(is_latent[None]) if latents is not None else None
    with torch.no_grad():
        hidden = base(inputs_embeds=embeds, position_ids=positions[None], gate=gate,
                      attention_mask=causal_mask(torch.ones(1, length, dtype=torch.bool), torch.arange(length)))
        logprobs = F.log_softmax(base.logits(hidden).float(), -1)[0]
    first = length - len(choice_ids) - 1  # the slot predicting the first choice token
    return sum(logprobs[first + i, t].item() for i, t in enumerate(choice_ids))


def test_scores_equal_an_independent_forward_and_the_best_choice_wins(base, coprocessor):
    prompt = tasks.arc_prompt(tasks.ChoiceItem("Why is the sky blue?", ("scattering", "paint", "the sea"), 0))
    scores = bm.score_choices(base, coprocessor, prompt, encode)
    prompt_ids = encode(prompt.prompt)
    with torch.no_grad():
        latents = coprocessor(base_cache_for(base, torch.tensor([prompt_ids])), torch.tensor([[len(prompt_ids) - 1]]),
                              context_len=len(prompt_ids))
    for run, run_latents in (("baseline", None), ("augmented", latents)):
        expected = [independent_choice_logprob(base, prompt_ids, encode(c), run_latents, coprocessor)
                    for c in prompt.continuations]
        assert scores[run].logprobs == pytest.approx(expected, abs=1e-4)
        assert scores[run].predicted == max(range(3), key=expected.__getitem__)
        normalized = [e / len(c) for e, c in zip(expected, prompt.continuations)]
        assert scores[run].predicted_norm == max(range(3), key=normalized.__getitem__)
    assert scores["baseline"].logprobs != scores["augmented"].logprobs


def test_greedy_decoding_matches_generate(base):
    ids = encode("Question: 2+2?\nAnswer:")
    state = generate_steps.prefill(base, ids, len(ids) + 6)
    with torch.no_grad():
        ours = generate_steps.greedy_tokens(base, state, 6)
    assert ours == generate(base, torch.tensor([ids]), max_new_tokens=6)[0].tolist()


def test_run_benchmarks_baseline_and_augmented(base, coprocessor, tmp_path):
    root = write_fake_data(tmp_path / "data")
    config = tasks.BenchmarkConfig(limit=2, mmlu_shots=1, gsm8k_shots=1, max_new_tokens=4)
    results = bm.run_benchmarks(base, coprocessor, encode, decode, config, root)
    assert list(results) == list(tasks.TASKS)
    for task, result in results.items():
        assert result.n == 2 and result.num_latents == N_L and result.augmented is not None
        assert set(result.baseline) == set(result.augmented)
        assert all(0.0 <= v <= 1.0 for v in [*result.baseline.values(), *result.augmented.values()])
    assert set(results["mmlu"].baseline) == {"accuracy", "accuracy_norm"} and results["mmlu"].shots == 1
    assert set(results["gsm8k"].baseline) == {"exact_match"}
    for task in ("arc-easy", "mmlu"):  # paired flips explain the difference of the two accuracies exactly
        result = results[task]
        for metric, (gained, lost) in result.flips.items():
            assert gained + lost <= result.n
            assert (gained - lost) / result.n == pytest.approx(result.augmented[metric] - result.baseline[metric])
    json.dumps({t: r.to_dict() for t, r in results.items()})
    assert tasks.benchmark_markdown(results).count("\n") == 2 + 2 * 3 + 1
    alone = bm.run_benchmarks(base, None, encode, decode, tasks.BenchmarkConfig(tasks=("arc-easy",), limit=2), root)
    assert alone["arc-easy"].augmented is None and alone["arc-easy"].baseline == results["arc-easy"].baseline


def test_long_prompts_are_cut_from_the_left(base, coprocessor):
    long_prompt = tasks.ChoicePrompt("x" * 400 + "\nAnswer:", (" yes", " no"), 0)
    result = bm.evaluate_choices(base, coprocessor, [long_prompt], encode, "long")
    assert result.truncated == 1 and result.n == 1


def test_bad_benchmark_config_is_one_line_error():
    with pytest.raises(LatentcacheError, match="unknown task 'hellaswag'.*mmlu_shots"):
        tasks.BenchmarkConfig(tasks=("hellaswag",), mmlu_shots=9)
