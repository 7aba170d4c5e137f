"""The runtime on exported tiny artifacts: torch-free operation, policies, backends, sampling, errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from latentcache.cli import main
from latentcache.errors import LatentcacheError
from latentcache.runtime import Pipeline
from latentcache.runtime.backend import BackendUnavailable
from latentcache.runtime.backends import open_backend
from latentcache.runtime.backends.onnxruntime import OnnxRuntimeBackend
from latentcache.runtime.generator import Async, EndOfPrompt, Entropy, EveryN, Generator, RequestStats
from latentcache.contract.manifest import ManifestError, load_manifest
from latentcache.sampling import Sampling
from tests.exported import NUM_LATENTS, PROMPTS, export_tiny
from tests.test_packaging import run_blocked


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export_tiny("llama-gqa-tied", tmp_path_factory.mktemp("runtime"), batch=2, max_seq=96)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """Batch-1 artifacts of an architecture whose greedy output varies (for text-level tests)."""
    return export_tiny("mistral-sliding", tmp_path_factory.mktemp("single"), batch=1, max_seq=96)


def generator_for(exported) -> Generator:
    return Generator(OnnxRuntimeBackend(exported.artifacts, load_manifest(exported.artifacts)))


def tokens_of(generator, policy=None, count=24, sampling=Sampling(), stats=None) -> np.ndarray:
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
    assert generator.length == longest + 3 * NUM_LATENTS + 23


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
    with pytest.raises(LatentcacheError, match="kv-cache holds 96 slots"):
        list(generator.generate(PROMPTS, 200))
    from latentcache.export.onnx_export import ExportConfig, export_artifacts

    plain = export_artifacts(ExportConfig(base=exported.base_dir, out=tmp_path / "plain", max_seq=32),
                             progress=lambda m: None)
    pipeline = Pipeline(plain, "onnxruntime-cpu")
    with pytest.raises(LatentcacheError, match="no coprocessor graph"):
        pipeline.policy(True)


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


def test_cli_chat_answers_each_line_until_an_empty_one(single):
    result = CliRunner().invoke(main, ["chat", str(single.artifacts), "--raw", "--max-new-tokens", "6",
                                       "--backend", "onnxruntime-cpu"], input="Hello there\nHow are you\n\n")
    assert result.exit_code == 0, result.output
    pipeline = Pipeline(single.artifacts, "onnxruntime-cpu")
    for prompt in ("Hello there", "How are you"):
        answer = "".join(pipeline.stream(prompt, 6, policy=pipeline.policy(True), chat=False))
        assert answer in result.stdout


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
