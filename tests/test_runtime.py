"""The runtime on exported tiny artifacts: torch-free operation, policies, backends, sampling, errors."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from latentcache.cli import main
from latentcache.contract.manifest import ManifestError, load_manifest
from latentcache.errors import LatentcacheError
from latentcache.runtime import Pipeline
from latentcache.runtime.backend import BackendUnavailable
from latentcache.runtime.backends import open_backend
from latentcache.runtime.backends.onnxruntime import SLIDING, OnnxRuntimeBackend
from latentcache.runtime.generator import (
    Async,
    Capacity,
    CapacityError,
    EndOfPrompt,
    Entropy,
    EveryN,
    Generator,
    NoAugmentation,
    RequestStats,
)
from latentcache.sampling import GREEDY, Sampling
from tests.exported import NUM_LATENTS, PROMPTS, export_tiny
from tests.test_packaging import run_blocked


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export_tiny("qwen2-bias", tmp_path_factory.mktemp("runtime"), batch=2, max_seq=96)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """Batch-1 artifacts of an architecture whose greedy output varies (for text-level tests)."""
    return export_tiny("mistral-sliding", tmp_path_factory.mktemp("single"), batch=1, max_seq=96)


def generator_for(exported) -> Generator:
    return Generator(OnnxRuntimeBackend(exported.artifacts, load_manifest(exported.artifacts)))


def tokens_of(generator, policy=None, count=24, sampling=GREEDY, stats=None) -> np.ndarray:
    return np.stack(list(generator.generate(PROMPTS, count, sampling, policy=policy, stats=stats)), axis=1)


def test_runtime_generates_without_torch_or_transformers(exported):
    expected = tokens_of(generator_for(exported))
    code = (
        "import numpy as np, json\n"
        "from latentcache.runtime import Generator, load_manifest\n"
        "from latentcache.runtime.backends import open_backend\n"
        f"art = {str(exported.artifacts)!r}\n"
        "g = Generator(open_backend('onnxruntime-cpu', art, load_manifest(art)))\n"
        f"t = np.stack(list(g.generate({PROMPTS!r}, 24)), 1)\n"
        "assert not any(m.split('.')[0] in ('torch', 'transformers') for m in sys.modules)\n"
        "print(json.dumps(t.tolist()))\n"
    )
    result = run_blocked(code)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == expected.tolist()


def test_text_pipeline_runs_without_torch(single):
    code = (
        "from latentcache.runtime import Pipeline\n"
        f"p = Pipeline({str(single.artifacts)!r}, 'onnxruntime-cpu')\n"
        "print(''.join(p.stream('Hello there', 12, chat=False)))\n"
    )
    result = run_blocked(code)
    assert result.returncode == 0, result.stderr
    pipeline = Pipeline(single.artifacts, "onnxruntime-cpu")
    assert result.stdout.rstrip("\n") == "".join(pipeline.stream("Hello there", 12, chat=False))


def test_coprocessor_changes_the_answer_and_off_is_the_base(exported):
    generator = generator_for(exported)
    base_tokens = tokens_of(generator)
    augmented = tokens_of(generator, EndOfPrompt())
    assert (augmented != base_tokens).any(), "a perturbed coprocessor should change some greedy tokens"
    assert (tokens_of(generator) == base_tokens).all(), "state leaked between requests"


def test_every_n_policy_augments_on_schedule_and_uses_cache_slots(exported):
    generator = generator_for(exported)
    stats = RequestStats()
    tokens_of(generator, EveryN(8), count=24, stats=stats)
    assert stats.augmented_at == [0, 8, 16]
    longest = max(map(len, PROMPTS))
    assert generator.length == longest + 3 * (NUM_LATENTS + 1) + 23  # each absorb: the latents, the re-fed token


def test_entropy_policy_threshold_bounds(exported):
    generator = generator_for(exported)
    never, always = RequestStats(), RequestStats()
    assert (tokens_of(generator, Entropy(1e9), stats=never) == tokens_of(generator)).all()
    tokens_of(generator, Entropy(-1.0), count=4, stats=always)
    assert never.augmented_at == [] and always.augmented_at == [0, 1, 2, 3]


class PacedAsync(Async):
    """``Async`` whose decoding waits for the coprocessor at step 12 if it is still running then: on a loaded
    machine the tiny model can decode all 24 tokens before the thread finishes, and the latents are (rightly)
    never absorbed. The wait only bounds when the absorption happens; what is absorbed, and how, is Async's."""

    def maybe_augment(self, generator, logits, step, stats):
        if step == 12 and self.thread is not None:
            self.thread.join(timeout=60)
        return super().maybe_augment(generator, logits, step, stats)


def test_async_policy_absorbs_latents_once_and_reports_when(exported):
    generator = generator_for(exported)
    stats = RequestStats()
    tokens = tokens_of(generator, PacedAsync(), count=24, stats=stats)
    assert len(stats.augmented_at) == 1 and 0 <= stats.augmented_at[0] < 24
    assert tokens.shape == (2, 24)
    if stats.augmented_at[0] == 0:  # finished before the first token: identical to the synchronous policy
        assert (tokens == tokens_of(generator, EndOfPrompt())).all()


def test_sampling_is_seeded_and_differs_from_greedy(exported):
    generator = generator_for(exported)
    sampling = Sampling(temperature=1.0, top_k=20, top_p=0.9, seed=7)
    first, second = tokens_of(generator, sampling=sampling), tokens_of(generator, sampling=sampling)
    assert (first == second).all()
    assert (first != tokens_of(generator)).any()


def test_torch_backend_matches_onnxruntime(exported):
    manifest = load_manifest(exported.artifacts)
    onnx_tokens = tokens_of(generator_for(exported), EndOfPrompt())
    torch_tokens = tokens_of(Generator(open_backend("torch", exported.artifacts, manifest)), EndOfPrompt())
    assert (onnx_tokens == torch_tokens).all()


def test_capacity_wrong_batch_and_missing_coprocessor_are_clear_errors(exported, tmp_path):
    generator = generator_for(exported)
    with pytest.raises(LatentcacheError, match="batches of 2"):
        generator.prefill(PROMPTS[:1])
    from latentcache.export.onnx_export import ExportConfig, export_artifacts

    plain = export_artifacts(ExportConfig(base=exported.base_dir, out=tmp_path / "plain", max_seq=32),
                             progress=lambda m: None)
    pipeline = Pipeline(plain, "onnxruntime-cpu")
    with pytest.raises(LatentcacheError, match="no coprocessor graph"):
        pipeline.policy(True)


class CountingBackend:
    """A backend proxy counting the graph runs, to prove that a refusal comes before any work."""

    def __init__(self, inner) -> None:
        self.inner, self.runs = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def run(self, graph, feeds):
        self.runs += 1
        return self.inner.run(graph, feeds)


def test_a_prompt_that_leaves_no_room_is_refused_before_prefill(exported):
    backend = CountingBackend(OnnxRuntimeBackend(exported.artifacts, load_manifest(exported.artifacts)))
    generator = Generator(backend)
    long_prompts = [[5] * 92, [6] * 40]  # 92 + (4 latents + 1) slots > 96
    with pytest.raises(CapacityError, match=r"^the prompt is 92 tokens \+ 5 slots for the coprocessor's latents and "
                       r"the kv-cache holds 96 slots: no room for an answer; shorten the prompt, pass "
                       r"--no-coprocessor, or re-export with a larger --max-seq$"):
        next(generator.generate(long_prompts, 8, policy=EndOfPrompt()))
    with pytest.raises(CapacityError, match="the prompt is 97 tokens and the kv-cache holds 96 slots"):
        next(generator.generate([[5] * 97, [6]], 8))
    assert backend.runs == 0
    # The same prompt without the coprocessor: its slots are free for the answer (92 + 5 tokens, the last unwritten).
    assert len(list(generator.generate(long_prompts, 8))) == 5
    assert backend.runs == 1 + 4


def test_capacity_reserves_latents_plus_one_per_augmentation(exported):
    """``Capacity`` against a brute-force count: prompt + (N_L + 1) per possible augmentation + every token but
    the last; and the generator stops exactly there with stop reason "capacity"."""
    capacity = Capacity(96, NUM_LATENTS)
    assert capacity.per_augmentation == NUM_LATENTS + 1
    for policy, count in ((NoAugmentation(), lambda n: 0), (EndOfPrompt(), lambda n: min(n, 1)),
                          (Async(), lambda n: min(n, 1)), (Entropy(1.0), lambda n: min(n, 1)),
                          (EveryN(8), lambda n: -(-n // 8))):
        for prompt in (1, 9, 60, 90, 96, 97):
            fits = [n for n in range(200) if prompt + count(n) * (NUM_LATENTS + 1) + max(n - 1, 0) <= 96]
            assert capacity.most(prompt, policy) == max(fits, default=0), (policy, prompt)
            assert capacity.most(prompt, policy, limit=3) == min(max(fits, default=0), 3)
    generator, stats = generator_for(exported), RequestStats()
    longest = max(map(len, PROMPTS))
    tokens = tokens_of(generator, EveryN(8), count=500, stats=stats)
    assert tokens.shape[1] == stats.new_tokens == stats.token_budget == capacity.most(longest, EveryN(8))
    assert stats.stop_reason == "capacity" and stats.augmented_at == list(range(0, stats.new_tokens, 8))
    assert generator.length <= 96


def test_every_stop_reason_is_reported(exported, single):
    generator = generator_for(exported)
    stats = RequestStats()
    tokens_of(generator, count=5, stats=stats)
    assert (stats.stop_reason, stats.new_tokens, stats.token_budget) == ("max_tokens", 5, 5)
    tokens_of(generator, count=500, stats=stats)
    assert stats.stop_reason == "capacity" and stats.token_budget == 96 - max(map(len, PROMPTS)) + 1
    first = tokens_of(generator, count=1)[:, 0]
    list(generator.generate(PROMPTS, 10, stop_ids=tuple(int(t) for t in first), stats=stats))
    assert (stats.stop_reason, stats.new_tokens) == ("eos", 1)
    stream = generator.generate(PROMPTS, 10, stats=stats)
    next(stream)
    stream.close()
    assert (stats.stop_reason, stats.new_tokens) == ("cancelled", 1)
    # Through the text pipeline, which stops reading at the stop id: the reason is already set.
    pipeline = Pipeline(single.artifacts, "onnxruntime-cpu")
    text_stats = RequestStats()
    ids = pipeline.tokenizer.encode("Hello there", chat=False)
    stop = int(next(pipeline.generator.generate([ids], 1))[0])
    pipeline.tokenizer.stop_ids = (stop,)
    assert "".join(pipeline.stream("Hello there", 10, chat=False, stats=text_stats)) == ""
    assert text_stats.stop_reason == "eos"


def test_repetition_penalty_matches_transformers_generate(single):
    """Greedy with --repetition-penalty on the runtime equals transformers' generate (the prompt counts as seen)."""
    import torch
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(single.base_dir).eval()
    generator = Generator(OnnxRuntimeBackend(single.artifacts, load_manifest(single.artifacts)))
    prompt = PROMPTS[0]
    eos = hf.generation_config.eos_token_id
    stop_ids = tuple(eos if isinstance(eos, list) else [eos])
    plain = np.concatenate(list(generator.generate([prompt], 24, stop_ids=stop_ids)))
    for penalty in (1.6, 0.7):
        ours = np.concatenate(list(generator.generate([prompt], 24, Sampling(repetition_penalty=penalty), stop_ids)))
        with torch.no_grad():
            theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False,
                                 repetition_penalty=penalty, pad_token_id=0)[0, len(prompt):].numpy()
        assert ours.tolist() == theirs.tolist(), penalty
        assert ours.tolist() != plain.tolist(), "the penalty should change this random model's greedy tokens"


def test_cuda_backend_unavailable_names_the_package(exported):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    with pytest.raises(BackendUnavailable, match="pip install onnxruntime-gpu"):
        open_backend("onnxruntime-cuda", exported.artifacts, load_manifest(exported.artifacts))


def test_tampered_or_foreign_artifacts_are_refused(exported, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(exported.artifacts, copy)
    with open(copy / "weights.bin", "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00\x01\x02\x03")
    with pytest.raises(ManifestError, match="sha256"):
        load_manifest(copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="version 99"):
        load_manifest(copy)
    with pytest.raises(ManifestError, match="not an artifacts directory"):
        load_manifest(tmp_path)


def test_cli_run_streams_only_the_answer_and_bench_writes_json(single, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["run", str(single.artifacts), "Hello there", "--raw", "--max-new-tokens", "12",
                                  "--backend", "onnxruntime-cpu"])
    assert result.exit_code == 0, result.output
    pipeline = Pipeline(single.artifacts, "onnxruntime-cpu")
    expected = "".join(pipeline.stream("Hello there", 12, policy=pipeline.policy(True), chat=False))
    assert result.stdout == expected + "\n"
    out = tmp_path / "bench.json"
    result = runner.invoke(main, ["bench", str(single.artifacts), "--backend", "onnxruntime-cpu", "--json", str(out),
                                  "--prompt-tokens", "16", "--new-tokens", "8", "--repetitions", "2"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    for key in ("ttft_ms", "coprocessor_absorb_ms", "decode_ms_median", "decode_ms_p90", "decode_tokens_per_s",
                "peak_rss_mib", "environment"):
        assert report[key] is not None, key
    assert report["decode_ms_p90"] >= report["decode_ms_median"] > 0
    said = [line.split(": ")[0].removesuffix(" ...") for line in result.stderr.splitlines()]
    assert said == [step for step in ("warm-up request 1 of 1", "request 1 of 2", "request 2 of 2") for _ in "ab"]


def test_cli_export_refuses_non_empty_out_and_leaves_it(exported, tmp_path):
    target = tmp_path / "occupied"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    result = CliRunner().invoke(main, ["export", "--base", str(exported.base_dir), "--out", str(target)])
    assert result.exit_code == 1 and "--force" in result.output
    assert (target / "keep.txt").read_text() == "mine"


def test_interrupted_export_leaves_no_valid_looking_directory(exported, tmp_path, monkeypatch):
    from latentcache.export import onnx_export

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_export, "copy_tokenizer", fail)
    with pytest.raises(KeyboardInterrupt):
        onnx_export.export_artifacts(onnx_export.ExportConfig(base=exported.base_dir, out=tmp_path / "out", max_seq=32),
                                     progress=lambda m: None)
    assert list(tmp_path.iterdir()) == []


def test_subprocess_cli_run_without_torch(single):
    code = f"from latentcache.cli import main\nmain(['run', {str(single.artifacts)!r}, 'Hi', '--raw', '--max-new-tokens', '4', '--backend', 'onnxruntime-cpu'])"
    result = run_blocked(code)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout.strip()


def test_each_request_has_the_whole_capacity(exported):
    generator = generator_for(exported)
    longest = max(map(len, PROMPTS))
    count = 96 - longest  # fills the cache: a second request only fits if the first one's slots are free again
    assert len(list(generator.generate(PROMPTS, count))) == count
    assert len(list(generator.generate(PROMPTS, count))) == count


def chat_reference(pipeline, turns: list[str], max_new_tokens: int) -> list[str]:
    """The answers of a --raw conversation: each turn sees the earlier ones, their texts one per line."""
    messages, answers = [], []
    for turn in turns:
        messages.append({"role": "user", "content": turn})
        ids = pipeline.tokenizer.encode_messages(messages, template=False)
        answers.append("".join(pipeline.stream_ids(ids, max_new_tokens, policy=pipeline.policy(True))))
        messages.append({"role": "assistant", "content": answers[-1]})
    return answers


def chat(artifacts, lines, *options):
    return CliRunner().invoke(main, ["chat", str(artifacts), "--raw", "--backend", "onnxruntime-cpu", *options],
                              input=lines)


def spy_on_prompts(monkeypatch) -> list[list[int]]:
    """The token ids of every prompt a chat session sends to the generator."""
    from latentcache.runtime.session import Session

    real, calls = Session.answer_ids, []

    def recorded(self, ids, stats=None):
        calls.append(ids)
        return real(self, ids, stats)

    monkeypatch.setattr(Session, "answer_ids", recorded)
    return calls


def test_cli_chat_keeps_the_conversation_until_an_empty_line(single, monkeypatch):
    prompts = spy_on_prompts(monkeypatch)
    result = chat(single.artifacts, "Hello there\nHow are you\n\n", "--max-new-tokens", "6")
    assert result.exit_code == 0, result.output
    pipeline = Pipeline(single.artifacts, "onnxruntime-cpu")
    first, second = chat_reference(pipeline, ["Hello there", "How are you"], 6)
    assert result.stdout == f"you> {first}\nyou> {second}\nyou> "
    conversation = [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": first},
                    {"role": "user", "content": "How are you"}]
    assert prompts[1] == pipeline.tokenizer.encode_messages(conversation, template=False)
    assert "note: the answer was cut at --max-new-tokens 6 (stop reason max_tokens)" in result.stderr


def test_cli_chat_reset_starts_a_new_conversation(single, monkeypatch):
    prompts = spy_on_prompts(monkeypatch)
    result = chat(single.artifacts, "Hello there\n/reset\nHow are you\n", "--max-new-tokens", "6")
    assert result.exit_code == 0, result.output
    pipeline = Pipeline(single.artifacts, "onnxruntime-cpu")
    first, alone = chat_reference(pipeline, ["Hello there"], 6)[0], chat_reference(pipeline, ["How are you"], 6)[0]
    assert result.stdout == f"you> {first}\nyou> you> {alone}\nyou> "
    assert prompts[1] == pipeline.tokenizer.encode("How are you", chat=False)
    assert "(a new conversation)" in result.stderr


def test_cli_chat_drops_the_oldest_turns_to_fit_the_cache(single, monkeypatch):
    # 96 slots: 40 + 1 + up to 20 + 1 + 40 characters leave no room for 20 more tokens and 5 latent slots.
    prompts = spy_on_prompts(monkeypatch)
    first, second = "a" * 40, "b" * 40
    result = chat(single.artifacts, f"{first}\n{second}\n", "--max-new-tokens", "20")
    assert result.exit_code == 0, result.output
    assert "note: dropped the 1 oldest turn(s) to fit the kv-cache" in result.stderr
    pipeline = Pipeline(single.artifacts, "onnxruntime-cpu")
    assert prompts[1] == pipeline.tokenizer.encode(second, chat=False)
    assert result.stdout.split("you> ")[2] == chat_reference(pipeline, [second], 20)[0] + "\n"


class InterruptingInput(io.BytesIO):
    """stdin whose ``readline`` raises KeyboardInterrupt (Ctrl-C at the prompt) once its lines are read."""

    def readline(self, *args):
        line = super().readline(*args)
        if not line:
            raise KeyboardInterrupt
        return line


def test_cli_chat_ctrl_c_stops_the_answer_not_the_session(single, monkeypatch):
    from latentcache.runtime.session import Session

    real, calls = Session.answer_ids, []

    def interrupted_once(self, ids, stats=None):
        calls.append(ids)
        for number, piece in enumerate(real(self, ids, stats)):
            if len(calls) == 1 and number == 2:
                raise KeyboardInterrupt  # Ctrl-C in the middle of the first answer
            yield piece

    monkeypatch.setattr(Session, "answer_ids", interrupted_once)
    result = chat(single.artifacts, InterruptingInput(b"Hello there\nHow are you\n"), "--max-new-tokens", "8")
    assert result.exit_code == 0, result.output  # the Ctrl-C at the prompt, after the second answer, quits
    assert "(answer stopped; Ctrl-C at the prompt or Ctrl-D quits)" in result.stderr
    pipeline = Pipeline(single.artifacts, "onnxruntime-cpu")
    full = chat_reference(pipeline, ["Hello there"], 8)[0]
    partial = result.stdout.split("you> ")[1].rstrip("\n")
    assert full.startswith(partial) and len(partial) < len(full)
    # The second answer saw the first turn as far as it went.
    messages = [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": partial},
                {"role": "user", "content": "How are you"}]
    assert calls[1] == pipeline.tokenizer.encode_messages(messages, template=False)
    assert len(calls) == 2 and result.stdout.count("you> ") == 3


def test_cli_run_refuses_a_prompt_without_room_and_notes_a_cut_answer(single):
    runner = CliRunner()
    result = runner.invoke(main, ["run", str(single.artifacts), "x" * 95, "--raw", "--backend", "onnxruntime-cpu"])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.splitlines()[-1] == (
        "error: the prompt is 95 tokens + 5 slots for the coprocessor's latents and the kv-cache holds 96 slots: no "
        "room for an answer; shorten the prompt, pass --no-coprocessor, or re-export with a larger --max-seq")
    result = runner.invoke(main, ["run", str(single.artifacts), "x" * 80, "--raw", "--backend", "onnxruntime-cpu",
                                  "--stats"])  # --max-new-tokens 256 clamped to 96 - 80 - 5 + 1 = 12
    assert result.exit_code == 0, result.output
    assert "note: the answer was cut after 12 tokens: the kv-cache's 96 slots are full (stop reason capacity)" \
        in result.stderr
    assert "stats: prompt 80 tokens, generated 12 of 12, stop reason capacity" in result.stderr
    result = runner.invoke(main, ["run", str(single.artifacts), "Hello", "--raw", "--backend", "onnxruntime-cpu",
                                  "--stats", "--max-new-tokens", "3", "--no-coprocessor"])
    assert "stats: prompt 5 tokens, generated 3 of 3, stop reason max_tokens" in result.stderr
    assert "coprocessor off" in result.stderr and "note: the answer was cut at --max-new-tokens 3" in result.stderr


def test_cli_run_penalties_reach_the_sampler(single):
    pipeline = Pipeline(single.artifacts, "onnxruntime-cpu")
    sampling = Sampling(repetition_penalty=1.6, presence_penalty=0.5, frequency_penalty=0.3)
    expected = "".join(pipeline.stream("Hello there", 16, sampling, pipeline.policy(True), chat=False))
    result = CliRunner().invoke(main, ["run", str(single.artifacts), "Hello there", "--raw", "--backend",
                                       "onnxruntime-cpu", "--max-new-tokens", "16", "--repetition-penalty", "1.6",
                                       "--presence-penalty", "0.5", "--frequency-penalty", "0.3"])
    assert result.exit_code == 0, result.output
    assert result.stdout == expected + "\n"
    assert expected != "".join(pipeline.stream("Hello there", 16, policy=pipeline.policy(True), chat=False))
    bad = CliRunner().invoke(main, ["run", str(single.artifacts), "Hi", "--presence-penalty", "3"])
    assert bad.exit_code == 2 and "--presence-penalty" in bad.output


def test_bench_capacity_message_names_bench_flags(single):
    result = CliRunner().invoke(main, ["bench", str(single.artifacts), "--backend", "onnxruntime-cpu",
                                       "--prompt-tokens", "80", "--new-tokens", "64", "--repetitions", "1"])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: --prompt-tokens 80 + 5 latent slots leave room for 12 tokens in the kv-cache's 96 slots, not "
        "--new-tokens 64: lower --new-tokens or --prompt-tokens, pass --no-coprocessor, or re-export with a larger "
        "--max-seq")


def test_decode_on_the_prefill_session_equals_the_decode_graph(exported):
    manifest = load_manifest(exported.artifacts)
    shared = OnnxRuntimeBackend(exported.artifacts, manifest)
    separate = OnnxRuntimeBackend(exported.artifacts, manifest, separate_decode=True)
    assert "decode" not in shared.sessions and "decode" in separate.sessions
    for policy in (None, EndOfPrompt()):
        assert (tokens_of(Generator(shared), policy) == tokens_of(Generator(separate), policy)).all()


def test_cli_choices_are_the_runtime_names():
    """The CLI spells backend, policy and task names once, without importing the runtime (instant --help)."""
    from latentcache import cli
    from latentcache.runtime.backends import BACKENDS
    from latentcache.runtime.generator import POLICIES
    from latentcache.tasks import TASKS

    assert cli.BACKENDS == ("auto", *BACKENDS)
    assert set(cli.POLICIES) == set(POLICIES) - {"none"}
    assert cli.TASKS == TASKS


def test_fixed_shape_runs_give_the_same_tokens_and_logits(exported, single):
    """The CUDA-graph path (inputs in buffers bound once, masks padded to the capacity) run on the CPU."""
    for artifacts in (exported, single):
        manifest = load_manifest(artifacts.artifacts)
        plain = OnnxRuntimeBackend(artifacts.artifacts, manifest)
        fixed = OnnxRuntimeBackend(artifacts.artifacts, manifest, fixed_shapes=True)
        graphs = {graph for graph, _ in fixed.fixed}
        # decode (on the prefill session), absorb, and the coprocessor unless the model has sliding windows
        sliding = SLIDING in manifest.model["layer_types"]
        assert graphs == {"prefill"} | ({"coprocessor"} if manifest.num_latents and not sliding else set())
        prompts = PROMPTS[: manifest.kv.batch]
        for policy in (None, EveryN(5), EndOfPrompt()):  # a shorter mask after longer ones: stale padding would show
            runs = []
            for backend in (plain, fixed):
                generator, stats = Generator(backend), RequestStats()
                steps = list(generator.generate(prompts, 12, policy=policy, stats=stats))
                runs.append((np.stack(steps, axis=1), generator.decode_step(steps[-1]), stats))
            (tokens, logits, _), (fixed_tokens, fixed_logits, stats) = runs
            assert (tokens == fixed_tokens).all()
            np.testing.assert_allclose(fixed_logits, logits, atol=1e-4)
            if isinstance(policy, EveryN):
                assert len(stats.augment_s) == 3  # over 12 tokens: the fixed absorb ran three times
    with pytest.raises(LatentcacheError, match="fixed-shape run takes"):
        fixed.run("decode", {"input_ids": np.zeros((1, 1), np.int64), "position_ids": np.zeros((1, 1), np.int64),
                             "write_index": np.zeros(1, np.int64), "attention_mask": np.zeros((1, 200), np.int64)})


def test_prompts_padded_to_a_prefill_bucket_give_the_same_tokens(exported, single):
    """Captured prefill (CUDA's PREFILL_BUCKETS), run on the CPU: a prompt is left-padded to the smallest bucket that
    holds it (empty slots, as a batch pads its shorter prompts) when the request leaves the room, and the tokens and
    logits are the unpadded ones; a request that needs every slot is not padded."""
    for artifacts in (exported, single):
        manifest = load_manifest(artifacts.artifacts)
        plain = OnnxRuntimeBackend(artifacts.artifacts, manifest)
        bucketed = OnnxRuntimeBackend(artifacts.artifacts, manifest, fixed_shapes=True, prefill_buckets=(4, 16, 500))
        assert bucketed.prefill_buckets == (4, 16) and {("prefill", 4), ("prefill", 16)} <= set(bucketed.fixed)
        prompts = PROMPTS[: manifest.kv.batch]
        longest = max(map(len, prompts))
        for policy in (None, EndOfPrompt()):
            runs = []
            for backend in (plain, bucketed):
                generator, stats = Generator(backend), RequestStats()
                steps = generator.generate(prompts, 12, policy=policy, stats=stats)
                first = next(steps)
                padded = generator.length - (manifest.num_latents + manifest.refeeds if policy else 0)
                tokens = np.stack([first, *steps], axis=1)
                runs.append((tokens, generator.decode_step(tokens[:, -1]), padded, stats.prompt_tokens))
            (tokens, logits, width, _), (bucket_tokens, bucket_logits, bucket_width, prompt_tokens) = runs
            assert (width, bucket_width, prompt_tokens) == (longest, 16, longest)
            assert (tokens == bucket_tokens).all()
            np.testing.assert_allclose(bucket_logits, logits, atol=1e-4)
        generator = Generator(bucketed)
        steps = generator.generate(prompts, manifest.kv.max_seq - longest + 1)  # every slot: no room to pad
        next(steps)
        assert generator.length == longest
        steps.close()


def test_cuda_graph_ids_are_distinct_per_shape_and_buffer_set(tmp_path):
    """The capture bookkeeping, run on the CPU (its provider ignores the ids): each fixed shape, and each cache
    buffer set of the ping-pong lowering (a capture bakes in addresses), replays its own ``gpu_graph_id`` >= 1;
    variable-shape runs skip capture (-1); the warm-up captures leave a zeroed cache and the same tokens."""
    from latentcache.runtime.backends.onnxruntime import OnnxRuntimeCudaBackend, attention_kernels_for, sdpa_mask

    portable = export_tiny("qwen2-bias", tmp_path, kv_update="portable", batch=2, max_seq=48)
    manifest = load_manifest(portable.artifacts)
    captured = OnnxRuntimeBackend(portable.artifacts, manifest, cuda_graphs=True)
    ids = [int(o.get_run_config_entry("gpu_graph_id")) for run in captured.fixed.values() for o in run.options]
    assert len(ids) == 2 * len(captured.fixed) == 6 and len(set(ids)) == 6 and min(ids) >= 1  # decode, absorb, coprocessor
    assert captured.run_options.get_run_config_entry("gpu_graph_id") == "-1"
    assert all(not value.numpy().any() for buffers in captured.caches for value in buffers)
    plain = OnnxRuntimeBackend(portable.artifacts, manifest)
    for policy in (None, EveryN(4)):
        assert (tokens_of(Generator(captured), policy, 10) == tokens_of(Generator(plain), policy, 10)).all()
    captured.sdpa_kernel = {"decode": sdpa_mask("math")}  # what attention_kernels={"decode": "math"} sets
    assert OnnxRuntimeCudaBackend.provider_options(captured, "prefill") == {"enable_cuda_graph": "1"}
    assert OnnxRuntimeCudaBackend.provider_options(captured, "coprocessor") == {"enable_cuda_graph": "1"}
    assert OnnxRuntimeCudaBackend.provider_options(captured, "decode") == {"enable_cuda_graph": "1", "sdpa_kernel": "16"}
    assert sdpa_mask("flash+efficient+math") == 19
    assert attention_kernels_for("onnx-llm", None) == {"prefill": "math", "decode": "math", "coprocessor": "math"}
    assert attention_kernels_for("onnx-llm", {}) == {} and attention_kernels_for("standard", None) == {}
    assert attention_kernels_for("onnx-llm", {"prefill": "flash+math"}) == {"prefill": "flash+math"}
    with pytest.raises(LatentcacheError, match="unknown attention kernel.*cudnn.*use flash, efficient, math"):
        sdpa_mask("math+cudnn")
    assert "CUDA graphs" in captured.describe() and "CUDA graphs" not in plain.describe()


def test_reset_zeroes_the_cache_where_it_lies(exported):
    """reset() memsets each cache tensor in place (CPU: ctypes.memset; CUDA: the loaded CUDA runtime's
    cudaMemsetAsync, here a fake that zeroes host memory), and copies host zeros, saying so, where none is had."""
    import ctypes
    from types import SimpleNamespace

    from latentcache.runtime.backends.memset import CudaMemset, device_memset, loaded_library

    backend = OnnxRuntimeBackend(exported.artifacts, load_manifest(exported.artifacts))
    generator = Generator(backend)
    kv = backend.manifest.kv

    calls = []

    def written_then_reset() -> bool:
        list(generator.generate(PROMPTS, 4))  # its prefill resets as well
        assert any(value.numpy().any() for value in backend.caches[0])
        calls.clear()
        backend.reset()
        return not any(value.numpy().any() for buffers in backend.caches for value in buffers)

    assert backend.memset.where == "host memset" and written_then_reset()

    def fake_memset(pointer, value, nbytes, stream):
        calls.append(nbytes)
        ctypes.memset(pointer, value, nbytes)
        return 0

    backend.memset = CudaMemset(SimpleNamespace(cudaMemsetAsync=fake_memset,
                                                cudaStreamSynchronize=lambda stream: calls.append("sync") or 0))
    assert written_then_reset()
    nbytes = kv.batch * kv.num_kv_heads * kv.max_seq * kv.head_dim * 4
    assert calls == [nbytes] * (2 * kv.num_layers) + ["sync"]
    backend.memset = CudaMemset(SimpleNamespace(cudaMemsetAsync=lambda *args: 2, cudaStreamSynchronize=lambda s: 0))
    with pytest.raises(LatentcacheError, match="cudaMemsetAsync failed with error 2 while resetting the kv-cache"):
        backend.reset()
    assert device_memset("cuda", maps="") is None  # no CUDA runtime mapped into the process
    assert loaded_library("libc", open("/proc/self/maps").read()).startswith("/")
    backend.memset = None
    assert written_then_reset() and "cache reset by a host copy" in backend.describe()


def test_a_shared_weight_is_a_borrowed_view_that_add_initializer_takes():
    """A copy ONNX Runtime allocated (as every copy onto the GPU is) owns its buffer, and add_initializer refuses it
    (the first GPU run of share_weights failed so); the view share_weights hands over reads the same memory, is
    taken, and keeps that memory alive after the copy's OrtValue is gone."""
    import gc

    import onnxruntime as ort

    from latentcache.runtime.backends.shared_weights import borrowed_view

    values = np.arange(6, dtype=np.float16).reshape(2, 3)
    owned = ort.OrtValue.ortvalue_from_shape_and_type([2, 3], np.float16, "cpu", 0)
    owned.update_inplace(values)
    with pytest.raises(Exception, match="must be owned by the user"):
        ort.SessionOptions().add_initializer("w", owned)
    view = borrowed_view(ort, owned)
    ort.SessionOptions().add_initializer("w", view)
    assert view.data_ptr() == owned.data_ptr()
    del owned
    gc.collect()
    assert (view.numpy() == values).all() and view.shape() == [2, 3]


def test_sessions_given_one_copy_of_the_base_weights_give_the_same_tokens(exported):
    """share_weights (meant for CUDA): each tensor weights.json marks shared and both loaded sessions read is one
    OrtValue added to both (here on the CPU, where the mechanics are the same), and the tokens do not change."""
    import json

    manifest = load_manifest(exported.artifacts)
    index = json.loads((exported.artifacts / manifest.weight_index).read_text())
    both = {e["offset"] for e in index["graphs"]["prefill"] if e["shared"]} & \
           {e["offset"] for e in index["graphs"]["coprocessor"] if e["shared"]}
    shared = OnnxRuntimeBackend(exported.artifacts, manifest, share_weights=True)
    assert len(shared.shared.values) == len(both) > 0
    assert f"{len(both)} weight tensors" in shared.describe() and "held once for 2 sessions" in shared.describe()
    plain = Generator(OnnxRuntimeBackend(exported.artifacts, manifest))
    for policy in (None, EndOfPrompt(), EveryN(4)):
        assert (tokens_of(Generator(shared), policy, 12) == tokens_of(plain, policy, 12)).all()
    # The tensors are views into one block of exactly their bytes, which every session keeps alive: it is freed
    # with the last of them, never before.
    import gc
    import weakref

    block = weakref.ref(shared.shared.block)
    assert block() is not None and all(v.data_ptr() >= block().pointer for v in shared.shared.values.values())
    shared.shared = None
    gc.collect()
    assert block() is not None
    assert (tokens_of(Generator(shared), EndOfPrompt(), 12) == tokens_of(plain, EndOfPrompt(), 12)).all()
    del shared
    gc.collect()
    assert block() is None
