"""The native runtime (runtime/cpp, `latentcache-run`): token parity with the Python runtime on tiny exported
artifacts (both kv lowerings, with and without the coprocessor), tokenizer parity with HF `tokenizers`,
the chat prompt, and one-line errors for bad input.

The binaries come from ``build/native`` (what `.ci/run` builds; ``LATENTCACHE_NATIVE_BUILD`` overrides it).
The test re-runs ``cmake --build`` there (incremental, about a second when nothing changed) and configures
the folder first when it is missing; without CMake or the fetched dependencies (runtime/cpp/fetch_deps.sh)
the whole module skips, saying which.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from latentcache.paths import data_root
from tests.exported import export_tiny
from tests.tiny import TOKENIZER_ALPHABET, save_tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("LATENTCACHE_NATIVE_BUILD", ROOT / "build" / "native"))
SHARED = data_root()  # $LATENTCACHE_DATA, $LATENTCACHE_SHARED/data, else ../shared/data beside the checkout
SMOLLM2 = SHARED / "smollm2-135m-instruct"
PROMPT = "the quick brown fox jumps over it"
NEW_TOKENS = 24
# (architecture, kv lowering): four families, both lowerings covered; -m slow adds SLOW_CASES (the other families).
FAST_CASES = [("llama-gqa-tied", "inplace"), ("mistral-sliding", "portable"), ("qwen2-bias", "inplace"),
              ("gemma3", "portable")]


def _build() -> Path:
    if shutil.which("cmake") is None and not (BUILD / "latentcache-run").is_file():
        pytest.skip("no cmake and no built latentcache-run in build/native: run .ci/run's native build step")
    if shutil.which("cmake") is not None:
        # A failed configure still leaves CMakeCache.txt: only a generated build system means it succeeded.
        if not any((BUILD / name).is_file() for name in ("Makefile", "build.ninja")):
            configure = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(BUILD), "-DCMAKE_BUILD_TYPE=Release"],
                                       capture_output=True, text=True)
            if configure.returncode != 0:
                tail = (configure.stderr.strip().splitlines() or ["?"])[-1]
                pytest.skip(f"the native runtime does not configure ({tail}): run runtime/cpp/fetch_deps.sh first")
        build = subprocess.run(["cmake", "--build", str(BUILD), "-j", str(os.cpu_count() or 2)],
                               capture_output=True, text=True)
        assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return BUILD


@pytest.fixture(scope="session")
def native() -> Path:
    return _build()


def run_native(native: Path, *args, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(native / "latentcache-run"), *map(str, args)], capture_output=True, text=True,
                            timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def native_tokens(native: Path, artifacts: Path, prompt: str, *options) -> dict:
    return json.loads(run_native(native, artifacts, prompt, "--ids", "--threads", 2, *options).stdout)


def python_tokens(artifacts: Path, prompt: str, count: int, coprocessor: bool, chat: bool = False) -> list[int]:
    from latentcache.runtime import Pipeline

    pipeline = Pipeline(artifacts, "onnxruntime-cpu", threads=2)
    try:
        policy = pipeline.policy(coprocessor)
        return [int(step[0]) for step in pipeline.token_stream([prompt], count, policy=policy, chat=chat)]
    finally:
        pipeline.close()


def python_cli_text(artifacts: Path, prompt: str, *options) -> str:
    result = subprocess.run([sys.executable, "-m", "latentcache.cli", "run", str(artifacts), prompt, *options],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """(arch, kv) -> batch-1 tiny artifacts, exported once per module: the gated augmentation, and the paper's
    for llama-gqa-tied so that both absorb paths (re-fed last token or not) are compared."""
    made = {}

    def get(arch: str, kv: str) -> Path:
        if (arch, kv) not in made:
            variant = "paper" if arch == "llama-gqa-tied" else "gated"
            made[arch, kv] = export_tiny(arch, tmp_path_factory.mktemp(f"{arch}-{kv}"), kv_update=kv, batch=1,
                                         max_seq=64, variant=variant).artifacts
        return made[arch, kv]

    return get


# --- generation parity ------------------------------------------------------------------------------


def check_parity(native, artifacts):
    for coprocessor in (True, False):
        flags = () if coprocessor else ("--no-coprocessor",)
        got = native_tokens(native, artifacts, PROMPT, "--raw", "--max-new-tokens", NEW_TOKENS, *flags)["tokens"]
        expected = python_tokens(artifacts, PROMPT, NEW_TOKENS, coprocessor)
        assert got == expected, f"coprocessor={coprocessor}"


@pytest.mark.parametrize("arch,kv", FAST_CASES)
def test_greedy_tokens_equal_python_runtime(native, exports, arch, kv):
    check_parity(native, exports(arch, kv))


@pytest.mark.parametrize("weights", ["int4", "int8", "int4-hqq"])
def test_quantized_artifacts_give_the_python_runtimes_tokens(native, tmp_path, weights):
    """The same ONNX Runtime fuses and runs the quantized graphs under the native runtime as under Python."""
    check_parity(native, export_tiny("qwen2-bias", tmp_path, batch=1, max_seq=64, weights=weights).artifacts)


@pytest.mark.parametrize("ops", ["onnxruntime", "onnx-llm"])
def test_fused_attention_artifacts_give_the_python_runtimes_tokens(native, tmp_path, ops):
    """``--ops onnxruntime`` graphs (GroupQueryAttention, rotary inside at gemma3's head size) and ``--ops
    onnx-llm`` ones (ONNX Attention and RotaryEmbedding) bind and run the same in the native runtime: the contract
    did not change."""
    check_parity(native, export_tiny("gemma3", tmp_path, batch=1, max_seq=64, ops=ops).artifacts)


# The native runtime binds what the manifest names and leaves the architecture to the graphs: the slow set adds the
# families the fast set lacks and each fast family's other lowering where the lowering meets the model (sliding
# window, gemma's head size), not every pair (the full 14-pair cross cost CI about 270 s).
SLOW_CASES = [("llama3-rope-scaling", "inplace"), ("llama-mqa-bias", "portable"), ("gemma2", "inplace"),
              ("mistral-sliding", "inplace"), ("gemma3", "inplace")]


@pytest.mark.slow
@pytest.mark.parametrize("arch,kv", SLOW_CASES)
def test_greedy_tokens_equal_python_runtime_all_architectures(native, exports, arch, kv):
    check_parity(native, exports(arch, kv))


def test_coprocessor_changes_the_tokens_and_separate_decode_agrees(native, exports):
    artifacts = exports("mistral-sliding", "portable")
    with_latents = native_tokens(native, artifacts, PROMPT, "--raw", "--max-new-tokens", NEW_TOKENS)["tokens"]
    base = native_tokens(native, artifacts, PROMPT, "--raw", "--max-new-tokens", NEW_TOKENS, "--no-coprocessor")
    assert with_latents != base["tokens"]  # the latents reach the base (a perturbed LoRA coprocessor)
    separate = native_tokens(native, artifacts, PROMPT, "--raw", "--max-new-tokens", NEW_TOKENS, "--no-coprocessor",
                             "--separate-decode")
    assert separate["tokens"][:8] == base["tokens"][:8]  # decode.onnx vs the one-token prefill: fp32 noise only


@pytest.mark.parametrize("weights", ["float", "int8"])
def test_sessions_hold_the_base_weights_once_and_give_the_same_tokens(native, tmp_path, weights):
    """The prefill and LoRA-coprocessor sessions share weights.bin's tensors (one mapping, one prepacked copy): the
    base's projections are handed to both, and the tokens equal those of sessions that each load their own."""
    artifacts = export_tiny("qwen2-bias", tmp_path, batch=1, max_seq=64, weights=weights).artifacts
    options = ("--raw", "--max-new-tokens", NEW_TOKENS, "--bench")
    shared = native_tokens(native, artifacts, PROMPT, *options)
    alone = native_tokens(native, artifacts, PROMPT, *options, "--no-share-weights")
    assert shared["tokens"] == alone["tokens"] and "weights: per session (--no-share-weights)" in alone["backend"]
    held = re.search(r"weights: (\d+) weight tensors \(.*\) mapped once for 2 sessions", shared["backend"])
    index = json.loads((artifacts / "weights.json").read_text())["graphs"]
    assert held and int(held[1]) == len({e["offset"] for entries in index.values() for e in entries}), shared["backend"]


@pytest.mark.parametrize("arch,kv", [("llama-gqa-tied", "inplace"), ("mistral-sliding", "portable")])
def test_text_equals_python_cli(native, exports, arch, kv):
    artifacts = exports(arch, kv)
    for flags in (("--raw",), ("--raw", "--no-coprocessor"), ()):  # () : chat on, no template in tiny artifacts
        options = ("--max-new-tokens", str(NEW_TOKENS), *flags)
        assert run_native(native, artifacts, PROMPT, *options).stdout == python_cli_text(artifacts, PROMPT, *options)


def test_seeded_sampling_is_reproducible(native, exports):
    artifacts = exports("mistral-sliding", "portable")
    options = ("--raw", "--max-new-tokens", NEW_TOKENS, "--temperature", 1.5, "--top-k", 40, "--top-p", 0.95)
    first = native_tokens(native, artifacts, PROMPT, *options, "--seed", 7)["tokens"]
    assert native_tokens(native, artifacts, PROMPT, *options, "--seed", 7)["tokens"] == first
    others = [native_tokens(native, artifacts, PROMPT, *options, "--seed", s)["tokens"] for s in (8, 9)]
    assert any(o != first for o in others)


def test_bench_reports_latencies(native, exports):
    report = json.loads(run_native(native, exports("llama-gqa-tied", "inplace"), PROMPT, "--raw", "--bench",
                                   "--max-new-tokens", 8).stdout)
    assert report["new_tokens"] == 8 and report["decode_steps"] == 7 and len(report["augment_s"]) == 1
    assert 0 < report["ttft_s"] <= report["startup_to_first_token_s"] and report["peak_rss_mb"] > 0


# --- bad input: one line on stderr, non-zero exit ---------------------------------------------------


@pytest.fixture()
def copy(exports, tmp_path):
    target = tmp_path / "artifacts"
    shutil.copytree(exports("llama-gqa-tied", "inplace"), target)
    return target


def assert_one_line_error(result, *fragments):
    assert result.returncode != 0 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_missing_file(native, copy):
    (copy / "decode.onnx").unlink()
    assert_one_line_error(run_native(native, copy, PROMPT, check=False), "decode.onnx", "missing")


def test_tampered_file(native, copy):
    with open(copy / "tokenizer.json", "a") as file:
        file.write(" ")
    assert_one_line_error(run_native(native, copy, PROMPT, check=False), "tokenizer.json", "sha256")


def test_foreign_manifest_version(native, copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_error(run_native(native, copy, PROMPT, check=False), "manifest version 99 is not supported")


def reseal(directory: Path, manifest: dict) -> None:
    """Write ``manifest`` with a recomputed integrity field: the check behind it must then be a different one."""
    from latentcache.contract.manifest import integrity_of

    manifest["integrity"] = integrity_of(manifest)
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))


def test_edited_manifest_fails_its_integrity_check(native, copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["kv"]["max_seq"] += 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_error(run_native(native, copy, PROMPT, check=False), "integrity sha256 does not match")
    del manifest["integrity"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_error(run_native(native, copy, PROMPT, check=False), "without an integrity field")


def test_the_native_integrity_equals_pythons_on_every_exported_manifest(native, exports):
    """Python writes the field; the binary recomputes it from the parsed JSON (floats, escapes, key order)."""
    for arch, kv in FAST_CASES:
        run_native(native, exports(arch, kv), PROMPT, "--max-new-tokens", 1)  # exit 0: the integrity agreed


@pytest.mark.parametrize("field, value, message", [
    ("chat_template", "../../../etc/passwd", "leaves the artifacts folder"),
    ("tokenizer_files", ["/etc/hostname"], "leaves the artifacts folder"),
])
def test_paths_may_not_leave_the_artifacts(native, copy, field, value, message):
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest[field] = value
    reseal(copy, manifest)
    assert_one_line_error(run_native(native, copy, PROMPT, check=False), message)


def test_every_file_must_be_hashed(native, copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["files"]["weights.bin"]
    reseal(copy, manifest)
    assert_one_line_error(run_native(native, copy, PROMPT, check=False), "no sha256 for weights.bin")


@pytest.mark.parametrize("damage, message", [
    (lambda entry, size: entry.update(offset=size), "beyond the end of"),
    (lambda entry, size: entry.pop("shared"), "is malformed"),
])
def test_a_bad_weight_index_is_one_line(native, copy, damage, message):
    """weights.json edited and its hash resealed: the native runtime names the file and the problem."""
    from latentcache.contract.files import sha256_of

    index = json.loads((copy / "weights.json").read_text())
    damage(index["graphs"]["prefill"][0], (copy / "weights.bin").stat().st_size)
    (copy / "weights.json").write_text(json.dumps(index))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["weights.json"] = sha256_of(copy / "weights.json")
    reseal(copy, manifest)
    assert_one_line_error(run_native(native, copy, PROMPT, check=False), "weights.json", message)


def test_not_an_artifacts_directory(native, tmp_path):
    assert_one_line_error(run_native(native, tmp_path, PROMPT, check=False), "no manifest.json")


def test_prompt_beyond_capacity(native, copy):
    assert_one_line_error(run_native(native, copy, "x" * 80, "--raw", check=False), "kv-cache holds 64 slots")
    # the coprocessor's latents count too: 61 prompt tokens + 4 latents > 64 (fails before the first token)
    assert_one_line_error(run_native(native, copy, "y" * 61, "--raw", check=False), "65 are needed")
    assert run_native(native, copy, "y" * 61, "--raw", "--no-coprocessor", "--max-new-tokens", 2).returncode == 0


def test_empty_prompt_and_bad_options(native, copy):
    assert_one_line_error(run_native(native, copy, "  ", check=False), "prompt is empty")
    assert_one_line_error(run_native(native, copy, PROMPT, "--backend", "cuda-magic", check=False), "unknown backend")
    assert_one_line_error(run_native(native, copy, PROMPT, "--top-p", "0", check=False), "--top-p")
    assert_one_line_error(run_native(native, copy, PROMPT, "--max-new-tokens", "x", check=False), "number")


def test_gpu_backends_fail_in_one_line_without_a_gpu(native, copy):
    version = run_native(native, "--version").stdout
    result = run_native(native, copy, PROMPT, "--backend", "tensorrt", check=False)
    if "TensorRT compiled in" in version:
        assert_one_line_error(result, "needs a CUDA GPU")  # this machine has no GPU (CI: cudaGetDeviceCount fails)
    else:
        assert_one_line_error(result, "built without TensorRT")
    assert_one_line_error(run_native(native, copy, PROMPT, "--backend", "ort-cuda", check=False), "no CUDA provider")


def third_party(build: Path) -> Path:
    """The dependency folder ``build`` was configured with (.ci/run keeps one per machine), else third_party/."""
    cache = build / "CMakeCache.txt"
    for line in cache.read_text().splitlines() if cache.is_file() else []:
        if line.startswith("LATENTCACHE_THIRD_PARTY:"):
            return Path(line.partition("=")[2])
    return ROOT / "third_party"


def test_tensorrt_backend_compiles_when_its_headers_were_fetched(native):
    deps = third_party(native)
    if not (deps / "trt" / "include" / "NvInferRuntime.h").is_file():
        pytest.skip(f"no TensorRT headers in {deps} (runtime/cpp/fetch_deps.sh)")
    assert "TensorRT compiled in" in run_native(native, "--version").stdout


@pytest.mark.slow
def test_build_without_tensorrt_says_so(native, copy, tmp_path):
    build = tmp_path / "no-trt"
    subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), "-DLATENTCACHE_WITH_TENSORRT=OFF",
                    f"-DLATENTCACHE_THIRD_PARTY={third_party(native)}"], check=True,
                   capture_output=True)
    subprocess.run(["cmake", "--build", str(build), "-j", "2", "--target", "latentcache-run"], check=True,
                   capture_output=True)
    assert_one_line_error(run_native(build, copy, PROMPT, "--backend", "tensorrt", check=False),
                          "built without TensorRT")


# --- tokenizer parity with HF `tokenizers` ----------------------------------------------------------


def builtin_strings() -> list[str]:
    """A few hundred strings: words, contractions, digits, whitespace runs, punctuation, non-ASCII, specials."""
    fixed = ["Hello world", "it's we're they've I'm we'll he'd 'S 'LL", "héllo wörld ünïcödé", "日本語のテキスト",
             "Привет, мир! 123", "emoji 😀👍🏽 and  spaces   \t\ttabs", "١٢٣ ٤٥ Ⅻ ½ ²", "   ", " ", "\t", "a\u00a0b\u2003c\u3000d",
             "x  \r  y", "<|im_start|>user hi<|im_end|>", "<s>a</s><unk>", "\u0085x\u2028y", "😀" * 5, "3.14159e-10",
             "can't won't shouldn't", "CamelCaseWord snake_case kebab-case", "email@example.com http://x.y/z?q=1",
             "    indented code();", "Ünïcödé ÀÉÎÕÜ ß ﬁ", "한국어 텍스트", "العربية", "עברית", "ελληνικά", "tab\tand\x0bvt"]
    rng = random.Random(0)
    pool = (TOKENIZER_ALPHABET.replace("\n", "") + "éüß日本😀\t   '0123456789" + "\u00a0\u2028")
    generated = ["".join(rng.choice(pool) for _ in range(rng.randint(1, 40))) for _ in range(300)]
    return fixed + generated


def byte_level_bpe(directory: Path) -> Path:
    """A small byte-level BPE tokenizer.json (GPT-2 style, SmolLM2's shape) trained here: no downloads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], show_progress=False)
    tokenizer.train_from_iterator(builtin_strings() * 3, trainer)
    path = directory / "bpe.json"
    tokenizer.save(str(path))
    return path


def tiny_wordlevel(directory: Path) -> Path:
    save_tiny_tokenizer(directory)
    return directory / "tokenizer.json"


def native_encode(native: Path, tokenizer_json: Path, lines: list[str], *flags) -> list[list[int]]:
    result = subprocess.run([str(native / "latentcache-tokenize"), str(tokenizer_json), *flags],
                            input="".join(line + "\n" for line in lines), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return [[int(x) for x in row.split()] for row in result.stdout.split("\n")[:-1]]


def assert_same_ids(native, tokenizer_json: Path, lines: list[str]):
    from tokenizers import Tokenizer

    lines = [line for line in lines if "\n" not in line]
    expected = [encoding.ids for encoding in Tokenizer.from_file(str(tokenizer_json)).encode_batch(lines)]
    got = native_encode(native, tokenizer_json, lines)
    assert len(got) == len(expected)
    bad = [i for i in range(len(lines)) if got[i] != expected[i]]
    assert not bad, f"{len(bad)} of {len(lines)} lines differ, first: {lines[bad[0]][:200]!r}"


def test_tokenizer_builtin_strings(native, tmp_path):
    for tokenizer_json in (byte_level_bpe(tmp_path), tiny_wordlevel(tmp_path)):
        assert_same_ids(native, tokenizer_json, builtin_strings())


def test_tokenizer_decode_matches(native, tmp_path):
    from tokenizers import Tokenizer

    rng = random.Random(1)
    for tokenizer_json in (byte_level_bpe(tmp_path), tiny_wordlevel(tmp_path)):
        reference = Tokenizer.from_file(str(tokenizer_json))
        size = reference.get_vocab_size()
        rows = [[rng.randrange(size + 5) for _ in range(rng.randint(1, 12))] for _ in range(300)]  # partial UTF-8 too
        result = subprocess.run([str(native / "latentcache-tokenize"), str(tokenizer_json), "--decode"],
                                input="".join(" ".join(map(str, r)) + "\n" for r in rows), capture_output=True,
                                text=True)
        assert result.returncode == 0, result.stderr
        got = [json.loads(line) for line in result.stdout.split("\n")[:-1]]  # not splitlines: U+2028 is raw JSON
        assert got == [reference.decode(r, skip_special_tokens=True) for r in rows]


def test_unsupported_tokenizer_is_one_line(native, tmp_path):
    from tokenizers import Tokenizer, models, normalizers

    tokenizer = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.save(str(tmp_path / "wp.json"))
    result = subprocess.run([str(native / "latentcache-tokenize"), str(tmp_path / "wp.json")], input="a\n",
                            capture_output=True, text=True)
    assert_one_line_error(result, "not supported by the native runtime")


def shared_or_skip(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent (the corpora and tokenizers live under the data root {SHARED}: set LATENTCACHE_DATA)")
    return path


def corpus_lines() -> list[str]:
    lines = []
    for name in ("wikitext-2/raw/wiki.test.raw", "wikitext-2/tokenized/valid.txt", "tinyshakespeare/input.txt"):
        lines += shared_or_skip(SHARED / name).read_text(encoding="utf-8").split("\n")
    with tarfile.open(shared_or_skip(SHARED / "gutenberg-fiction" / "gutenberg.tar.xz")) as archive:
        member = next(m for m in archive.getmembers() if m.isfile() and m.name.endswith(".txt"))
        lines += archive.extractfile(member).read().decode("utf-8").split("\n")
    return lines


@pytest.mark.slow
def test_tokenizer_corpora_smollm2_tiny_and_gpt2(native, tmp_path):
    """Every line of WikiText-2 (raw test, tokenized valid), tinyshakespeare and one Gutenberg text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    lines = corpus_lines()
    gpt2_dir = shared_or_skip(SHARED / "gpt2-tokenizer")
    gpt2 = Tokenizer(models.BPE.from_file(str(gpt2_dir / "vocab.json"), str(gpt2_dir / "merges.txt")))
    gpt2.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    gpt2.decoder = decoders.ByteLevel()
    gpt2.save(str(tmp_path / "gpt2.json"))
    for tokenizer_json in (shared_or_skip(SMOLLM2 / "tokenizer.json"), tiny_wordlevel(tmp_path), tmp_path / "gpt2.json"):
        assert_same_ids(native, tokenizer_json, lines)


# --- the chat prompt --------------------------------------------------------------------------------


def jinja_prompt(template: str, message: str, config: dict) -> str:
    """runtime/tokenizer.py's rendering (jinja2 as transformers renders chat templates)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    special = {k: config.get(k) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    return env.from_string(template).render(messages=[{"role": "user", "content": message}],
                                            add_generation_prompt=True, **special)


def test_chat_prompt_ids_equal_jinja_rendering(native):
    from tokenizers import Tokenizer

    template_file = shared_or_skip(SMOLLM2 / "chat_template.jinja")
    config = json.loads((SMOLLM2 / "tokenizer_config.json").read_text())
    reference = Tokenizer.from_file(str(SMOLLM2 / "tokenizer.json"))
    messages = ["What is the capital of France?", "héllo, 日本", "  spaced  ", "<|im_end|> injected", "x"]
    expected = [reference.encode(jinja_prompt(template_file.read_text(), m, config), add_special_tokens=False).ids
                for m in messages]
    got = native_encode(native, SMOLLM2 / "tokenizer.json", messages, "--chat-template", str(template_file))
    assert got == expected


def test_unsupported_chat_template_is_one_line(native, tmp_path):
    llama3 = ("{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + "
              "message['content'] + '<|eot_id|>' }}{% endfor %}")
    (tmp_path / "t.jinja").write_text(llama3)
    result = subprocess.run([str(native / "latentcache-tokenize"), str(tiny_wordlevel(tmp_path)), "--chat-template",
                             str(tmp_path / "t.jinja")], input="hi\n", capture_output=True, text=True)
    assert_one_line_error(result, "not a plain ChatML template")
