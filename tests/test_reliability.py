"""The bad-input catalogue (issue 17): every case is a real command on tiny models, with its exact one-line
message, its exit status, and proof that nothing outside the command's own output changed.

``CASES`` maps a name to ``(setup, expected)``: ``setup(world, tmp)`` damages a private copy (or prepares an
input) and returns the CLI arguments plus the one path the command may write; ``expected`` is a regular
expression the whole ``error:`` line must match (``{tmp}`` and ``{world}`` are filled in). Exit status 1 is a
``LatentcacheError``; 2 is click's usage error for a value refused at parse time (``Error: Invalid value``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from latentcache.cli import main
from latentcache.contract import manifest as contract
from latentcache.contract.files import folder_lock
from tests.test_cli_train import TRAIN, make_base, write_corpus

CHECKPOINT_OPTS = ["--max-steps", 3, "--save-every", 1, "--eval-every", 100]


def cli(*args, input=None):
    result = CliRunner().invoke(main, [a if isinstance(a, str) else str(a) for a in args], input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback is a bug
    return result


def tree(root: Path, skip: Path | None = None) -> dict[str, bytes]:
    """Every file under ``root`` but ``skip`` (relative path -> bytes)."""
    found = {}
    for path in sorted(root.rglob("*")):
        if skip is not None and (path == skip or skip in path.parents):
            continue
        if path.name.startswith(".") and path.name.endswith(".lock"):
            continue  # a lock the case's setup holds (as another process would); checked separately
        if path.is_file() and not path.is_symlink():
            found[str(path.relative_to(root))] = path.read_bytes()
    return found


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny base with a tokenizer, a corpus, a 3-step run with a checkpoint and its exported artifacts."""
    root = tmp_path_factory.mktemp("reliability")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LATENTCACHE_HOME", str(root / "home"))
        make_base(root / "base")
        write_corpus(root / "corpus")
        result = cli("train", "--base", root / "base", "--data", root / "corpus", "--out", root / "run", *TRAIN,
                     *CHECKPOINT_OPTS)
        assert result.exit_code == 0, result.output
        result = cli("export", "--base", root / "base", "--coprocessor", root / "run" / "checkpoint",
                     "--out", root / "art", "--max-seq", 64)
        assert result.exit_code == 0, result.output
    return root


@pytest.fixture(autouse=True)
def home(monkeypatch, world):
    monkeypatch.setenv("LATENTCACHE_HOME", str(world / "home"))


# ---- helpers that build damaged copies ------------------------------------------------------------------
def copy_run(world, tmp):
    shutil.copytree(world / "run", tmp / "run")
    return tmp / "run"


def copy_art(world, tmp):
    shutil.copytree(world / "art", tmp / "art")
    return tmp / "art"


def flip(path: Path, offset: int = -64) -> None:
    data = bytearray(path.read_bytes())
    for i in range(4):
        data[offset + i] ^= 0xFF
    path.write_bytes(bytes(data))


def edit_manifest(art: Path, change, reseal: bool = True) -> None:
    """Apply ``change(data)`` to manifest.json; ``reseal`` recomputes the integrity field (a deliberate forger)."""
    path = art / contract.MANIFEST_FILE
    data = json.loads(path.read_text())
    change(data)
    if reseal:
        data["integrity"] = contract.integrity_of(data)
    path.write_text(json.dumps(data))


def resume(world, run, *extra, data=None):
    return ["train", "--base", world / "base", "--data", data or world / "corpus", "--out", run, *TRAIN,
            *CHECKPOINT_OPTS, "--resume", *extra], run


def run_art(art, *extra, prompt="hello"):
    return ["run", art, prompt, "--backend", "onnxruntime-cpu", "--max-new-tokens", 4, *extra], None


def export_to(world, out, *extra, base=None):
    return ["export", "--base", base or world / "base", "--out", out, "--max-seq", 64, *extra], out


def swap_present(data):
    outputs = data["graphs"]["prefill"]["outputs"]
    key = next(o for o in outputs if o["role"] == "present_key" and o["layer"] == 0)
    value = next(o for o in outputs if o["role"] == "present_value" and o["layer"] == 0)
    key["name"], value["name"] = value["name"], key["name"]


def retype_input_ids(data):
    next(t for t in data["graphs"]["prefill"]["inputs"] if t["role"] == "input_ids")["dtype"] = "int32"


def corrupt_weights_setup(world, tmp):
    run = copy_run(world, tmp)
    flip(run / "checkpoint" / "coprocessor.safetensors")
    return resume(world, run)


def nan_checkpoint_setup(world, tmp):
    """A checkpoint without checksums (as written before they existed) whose weights are NaN."""
    from safetensors.torch import load_file, save_file

    run = copy_run(world, tmp)
    weights = run / "checkpoint" / "coprocessor.safetensors"
    tensors = load_file(str(weights))
    save_file({k: v * float("nan") for k, v in tensors.items()}, str(weights))
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    del state["files"]
    (run / "checkpoint" / "state.json").write_text(json.dumps(state))
    return resume(world, run)


def state_setup(text):
    def setup(world, tmp):
        run = copy_run(world, tmp)
        (run / "checkpoint" / "state.json").write_text(text)
        return resume(world, run)
    return setup


def export_corrupt_coprocessor(world, tmp):
    run = copy_run(world, tmp)
    flip(run / "checkpoint" / "coprocessor.safetensors")
    return ["export", "--base", world / "base", "--coprocessor", run / "checkpoint", "--out", tmp / "out",
            "--max-seq", 64], tmp / "out"


def manifest_setup(change, reseal=True, extra=()):
    def setup(world, tmp):
        art = copy_art(world, tmp)
        edit_manifest(art, change, reseal)
        return run_art(art, *extra)
    return setup


def symlinked_tokenizer(world, tmp):
    art = copy_art(world, tmp)
    shutil.copy(art / "tokenizer.json", tmp / "elsewhere.json")
    (art / "tokenizer.json").unlink()
    (art / "tokenizer.json").symlink_to(tmp / "elsewhere.json")
    return run_art(art)


def locked_export(world, tmp):
    """Another process holds the lock on --out: the export must fail at once, not interleave."""
    holder = folder_lock(tmp / "out")
    holder.__enter__()
    LOCKS.append(holder)
    return export_to(world, tmp / "out")


LOCKS: list = []


def setup_args(*args, out=None):
    def setup(world, tmp):
        return [a(world, tmp) if callable(a) else a for a in args], (out(world, tmp) if out else None)
    return setup


W = lambda name: lambda world, tmp: world / name  # noqa: E731  a path in the shared world
T = lambda name: lambda world, tmp: tmp / name  # noqa: E731  a path in the case's own folder


def nonempty_out(world, tmp):
    (tmp / "out").mkdir()
    (tmp / "out" / "keep.txt").write_text("mine")
    return export_to(world, tmp / "out")


def metrics_setup(world, tmp):
    run = copy_run(world, tmp)
    return resume(world, run, "--max-steps", 4)


HEX = "[0-9a-f]{64}"
CASES = {
    # -- checkpoints ------------------------------------------------------------------------------------
    "checkpoint: 4 flipped bytes, --resume": (corrupt_weights_setup,
        r"{tmp}/run/checkpoint/coprocessor\.safetensors: does not match the sha256 in state\.json \(the file is "
        r"corrupt\); restore it from a backup or train again", 1),
    "checkpoint: 4 flipped bytes, export": (export_corrupt_coprocessor,
        r"{tmp}/run/checkpoint/coprocessor\.safetensors: does not match the sha256 in state\.json \(the file is "
        r"corrupt\); restore it from a backup or train again", 1),
    "checkpoint: NaN weights without checksums": (nan_checkpoint_setup,
        r"{tmp}/run/checkpoint/coprocessor\.safetensors: \S+ holds NaN or infinity; this checkpoint is unusable, "
        r"resume from an earlier one or train again", 1),
    "checkpoint: state.json not JSON": (state_setup("{not json"),
        r"{tmp}/run/checkpoint/state\.json: corrupt checkpoint state \(.*\)", 1),
    "checkpoint: state.json step is a string": (state_setup(json.dumps(
        {"step": "3", "train_config": {}, "coprocessor_config": {}, "fingerprints": {}})),
        r"{tmp}/run/checkpoint/state\.json: malformed checkpoint state \('step' is missing or not an int\); "
        r"restore it or start a new --out", 1),
    "checkpoint: state.json a list": (state_setup("[]"),
        r"{tmp}/run/checkpoint/state\.json: malformed checkpoint state \(a JSON list, not an object\); restore "
        r"it or start a new --out", 1),
    # -- training input -----------------------------------------------------------------------------------
    "train: --data /dev/zero": (setup_args("train", "--base", W("base"), "--data", "/dev/zero", "--out", T("r"),
                                           *TRAIN, out=T("r")),
        r"/dev/zero: not a regular file or directory \(a device, socket or FIFO\); pass text files, "
        r"directories, tar archives or JSONL", 1),
    "train: --lr nan": (setup_args("train", "--base", W("base"), "--out", T("r"), "--lr", "nan", out=T("r")),
        r"Error: Invalid value for '--lr': 'nan' is not a finite number", 2),
    "train: --seed -1": (setup_args("train", "--base", W("base"), "--out", T("r"), "--seed", "-1", out=T("r")),
        r"Error: Invalid value for '--seed': -1 is not in the range 0<=x<=9223372036854775807\.", 2),
    "train: second writer on one --out": (lambda world, tmp: (LOCKS.append(folder_lock(tmp / "r")) or
                                                              LOCKS[-1].__enter__()) or
                                          (["train", "--base", world / "base", "--data", world / "corpus", "--out",
                                            tmp / "r", *TRAIN], tmp / "r"),
        r"{tmp}/r is being written by another latentcache process \(pid \d+\); wait for it to finish \(another "
        r"`latentcache train` on this --out\) or choose another path", 1),
    # -- export ---------------------------------------------------------------------------------------------
    "export: --out is --base (with --force)": (lambda world, tmp: export_to(world, world / "base", "--force"),
        r"--out {world}/base is the input --base {world}/base: writing it could delete the input; choose an --out "
        r"outside every input", 1),
    "export: --out inside --base": (lambda world, tmp: export_to(world, world / "base" / "art", "--force"),
        r"--out {world}/base/art lies inside the input --base {world}/base: writing it could delete the input; "
        r"choose an --out outside every input", 1),
    "export: --out holds --base": (lambda world, tmp: export_to(world, world, "--force"),
        r"--out {world} contains the input --base {world}/base: writing it could delete the input; choose an "
        r"--out outside every input", 1),
    "export: non-empty --out": (nonempty_out,
        r"{tmp}/out exists and is not empty: choose another --out or pass --force to replace it", 1),
    "export: --batch 10**7": (lambda world, tmp: export_to(world, tmp / "out", "--batch", 10**7, "--max-seq", 256),
        r"a kv-cache of --batch 10000000 x --max-seq 256 needs about [\d.]+ GiB, more than the [\d.]+ GiB of "
        r"memory available; lower --batch or --max-seq", 1),
    "export: --max-seq beyond positions": (lambda world, tmp: export_to(world, tmp / "out", "--max-seq", 4096),
        r"--max-seq 4096 exceeds the model's 256 positions", 1),
    "export: --out locked by another writer": (locked_export,
        r"{tmp}/out is being written by another latentcache process \(pid \d+\); wait for it to finish \(another "
        r"export or build on this --out\) or choose another path", 1),
    # -- the manifest -----------------------------------------------------------------------------------------
    "manifest: files map emptied (resealed)": (manifest_setup(lambda d: d.update(files={})),
        r"{tmp}/art/manifest\.json: no sha256 for \S+, \S+, \S+ and more \(its files map must cover every file the "
        r"graphs and tokenizer read\): re-export the artifacts", 1),
    "manifest: weights.bin dropped from files (resealed)": (manifest_setup(lambda d: d["files"].pop("weights.bin")),
        r"{tmp}/art/manifest\.json: no sha256 for weights\.bin \(its files map must cover every file the graphs "
        r"and tokenizer read\): re-export the artifacts", 1),
    "manifest: edited, not resealed": (manifest_setup(lambda d: d.update(vocab_size=98), reseal=False),
        r"manifest\.json was edited or damaged after export \(its integrity sha256 does not match its contents\): "
        r"re-export the artifacts", 1),
    "manifest: no integrity field": (manifest_setup(lambda d: d.pop("integrity"), reseal=False),
        r"manifest version \d without an integrity field \(written before latentcache checked manifests\): "
        r"re-export the artifacts with this latentcache version", 1),
    "manifest: chat template ../../../etc/passwd": (manifest_setup(
        lambda d: d.update(chat_template="../../../etc/passwd")),
        r"{tmp}/art/manifest\.json: path '\.\./\.\./\.\./etc/passwd' leaves the artifacts folder: re-export the "
        r"artifacts", 1),
    "manifest: absolute graph path": (manifest_setup(lambda d: d["graphs"]["decode"].update(file="/etc/passwd")),
        r"{tmp}/art/manifest\.json: path '/etc/passwd' leaves the artifacts folder: re-export the artifacts", 1),
    "manifest: files key ../x": (manifest_setup(lambda d: d["files"].update({"../x": "0" * 64})),
        r"{tmp}/art/manifest\.json: path '\.\./x' leaves the artifacts folder: re-export the artifacts", 1),
    "manifest: tokenizer.json symlinked outside": (symlinked_tokenizer,
        r"{tmp}/art/tokenizer\.json resolves outside the artifacts folder \(a symlink\?\): re-export the "
        r"artifacts", 1),
    "manifest: present.0 key/value names swapped": (manifest_setup(swap_present),
        r"prefill\.onnx does not match the manifest: output 1 is present\.0\.key in the graph, present\.0\.value "
        r"in the manifest: re-export the artifacts", 1),
    "manifest: input_ids dtype int32": (manifest_setup(retype_input_ids),
        r"prefill\.onnx does not match the manifest: input input_ids is int64 in the graph, int32 in the "
        r"manifest: re-export the artifacts", 1),
    "manifest: kv max_seq edited": (manifest_setup(lambda d: d["kv"].update(max_seq=32)),
        r"\S+\.onnx does not match the manifest: input past_key_values\.0\.key has shape \[1, 2, 64, 8\] in the "
        r"graph, \[1, 2, 32, 8\] in the manifest(; .*)?( and \d+ more)?: re-export the artifacts", 1),
    "manifest: JSON list": (lambda world, tmp: (copy_art(world, tmp) / "manifest.json").write_text("[]") and
                            run_art(tmp / "art"),
        r"{tmp}/art/manifest\.json is malformed \(a JSON list, not an object\): re-export the artifacts", 1),
    # -- run / chat / generate options ----------------------------------------------------------------------
    "run: prompt with invalid UTF-8": (lambda world, tmp: run_art(world / "art", prompt="hi \udcff there"),
        r"the prompt is not valid UTF-8 \(byte 0xff at character 3\); pass UTF-8 text", 1),
    "generate: prompt with invalid UTF-8": (setup_args("generate", "--base", W("base"), "\udcc3("),
        r"the prompt is not valid UTF-8 \(byte 0xc3 at character 0\); pass UTF-8 text", 1),
    "run: --temperature nan": (lambda world, tmp: run_art(world / "art", "--temperature", "nan"),
        r"Error: Invalid value for '--temperature': 'nan' is not a finite number", 2),
    "run: --temperature -1": (lambda world, tmp: run_art(world / "art", "--temperature", "-1"),
        r"Error: Invalid value for '--temperature': '-1' is below the minimum 0", 2),
    "run: --entropy nan": (lambda world, tmp: run_art(world / "art", "--policy", "entropy", "--entropy", "nan"),
        r"Error: Invalid value for '--entropy': 'nan' is not a finite number", 2),
    "run: --top-p nan": (lambda world, tmp: run_art(world / "art", "--top-p", "nan", "--temperature", "1"),
        r"--top-p must be a finite number, got nan", 1),
    "run: --seed -1": (lambda world, tmp: run_art(world / "art", "--seed", "-1"),
        r"Error: Invalid value for '--seed': -1 is not in the range 0<=x<=9223372036854775807\.", 2),
    "run: not an artifacts folder": (lambda world, tmp: run_art(tmp),
        r"{tmp} is not an artifacts directory \(no manifest\.json\): run `latentcache export`", 1),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_catalogue(world, tmp_path, name):
    setup, expected, status = CASES[name]
    args, output = setup(world, tmp_path)
    before = {"world": tree(world, skip=output), "tmp": tree(tmp_path, skip=output)}
    try:
        result = cli(*args)
    finally:
        while LOCKS:
            LOCKS.pop().__exit__(None, None, None)
    lines = [line for line in result.output.strip().splitlines() if line.startswith(("error: ", "Error: "))]
    assert result.exit_code == status, result.output
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    line = lines[0].removeprefix("error: ")
    pattern = expected.replace("{tmp}", re.escape(str(tmp_path))).replace("{world}", re.escape(str(world)))
    assert re.fullmatch(pattern, line), line
    assert {"world": tree(world, skip=output), "tmp": tree(tmp_path, skip=output)} == before
    leftovers = [p for p in [*world.rglob(".*.partial-*"), *tmp_path.rglob(".*.partial-*"),
                             *world.rglob(".*.lock"), *tmp_path.rglob(".*.lock")]]
    assert leftovers == []


# ---- outcomes that are not errors: what the guards keep ---------------------------------------------------
def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(world, tmp_path):
    from latentcache.model.checkpoint import load_state, verify_checkpoint

    result = cli("train", "--base", world / "base", "--data", world / "corpus", "--out", tmp_path / "r", *TRAIN,
                 *CHECKPOINT_OPTS, "--lr", "1e30", "--max-steps", 6)
    assert result.exit_code == 1, result.output
    line = result.output.strip().splitlines()[-1]
    assert re.fullmatch(r"error: step (\d+): the loss or the gradients are not finite \(loss \S+, gradient norm \S+\); "
                        r"training stopped, the "
                        r"last good checkpoint \(step \d+\) in \S+ is intact; lower --lr or check the data", line), line
    stopped = int(re.match(r"error: step (\d+)", line).group(1))
    verify_checkpoint(tmp_path / "r" / "checkpoint")
    assert load_state(tmp_path / "r" / "checkpoint")["step"] == stopped - 1
    assert not list(tmp_path.rglob(".*.partial-*")) and not (tmp_path / "r" / "checkpoint.previous").exists()


def test_a_moved_corpus_resumes_without_retokenizing(world, tmp_path):
    run = copy_run(world, tmp_path)
    shutil.copytree(world / "corpus", tmp_path / "mounted" / "elsewhere" / "corpus")
    result = cli(*resume(world, run, "--max-steps", 4, data=tmp_path / "mounted" / "elsewhere" / "corpus")[0])
    assert result.exit_code == 0, result.output
    assert "resumed from step 3" in result.output and "tokenize" not in result.output


def test_a_partial_last_metrics_line_is_dropped_on_resume(world, tmp_path):
    run = copy_run(world, tmp_path)
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 4, "lo')  # what kill -9 in the middle of a write leaves
    result = cli(*resume(world, run, "--max-steps", 4)[0])
    assert result.exit_code == 0, result.output
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 4


def test_export_never_deletes_what_appeared_in_out_meanwhile(world, tmp_path):
    from latentcache.errors import LatentcacheError
    from latentcache.export.onnx_export import ExportConfig, export_artifacts

    out = tmp_path / "out"

    def intruder(message):
        if "decode" in message:  # mid-export, someone else writes into --out
            out.mkdir(exist_ok=True)
            (out / "notes.txt").write_text("not the exporter's")

    with pytest.raises(LatentcacheError, match=r"out changed while this run was writing \(1 entries, e.g. notes.txt\)"):
        export_artifacts(ExportConfig(base=world / "base", out=out, max_seq=64), progress=intruder)
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "notes.txt").read_text() == "not the exporter's"


def test_stale_partials_of_dead_processes_are_removed_live_ones_kept(world, tmp_path):
    dead = tmp_path / ".out.partial-999999999-abc"
    live = tmp_path / f".out.partial-{os.getppid()}-def"  # the test runner's parent: alive
    foreign = tmp_path / ".out.partial-notapid"
    for folder in (dead, live, foreign):
        folder.mkdir()
        (folder / "weights.bin").write_bytes(b"x" * 100)
    result = cli(*export_to(world, tmp_path / "out")[0])
    assert result.exit_code == 0, result.output
    assert not dead.exists() and live.exists() and foreign.exists()


def test_chat_survives_a_bad_line_and_an_overlong_one(world):
    lines = b"\xff\xfe bad\n" + b"w1 " * 100 + b"\nhello\n\n"  # 100 tokens do not fit 64 slots
    result = CliRunner().invoke(main, ["chat", str(world / "art"), "--backend", "onnxruntime-cpu", "--max-new-tokens",
                                       "3"], input=lines)
    assert result.exit_code == 0, result.output
    errors = [line for line in result.output.splitlines() if "error: " in line]
    assert len(errors) == 2, result.output
    assert "not valid UTF-8" in errors[0] and "64" in errors[1], errors
    assert result.output.count("you> ") == 4  # bad line, long line, hello, the empty line that ends it


def test_a_second_fetch_waits_for_the_first_and_finds_the_model(tmp_path):
    from latentcache.registry import COMPLETE_MARKER, fetch

    target = tmp_path / "model"
    done = []
    with folder_lock(target, wait=True):
        thread = threading.Thread(target=lambda: done.append(fetch("smollm2-135m-instruct", target,
                                                                     gguf=tmp_path / "missing.gguf")))
        thread.start()
        time.sleep(0.5)
        assert thread.is_alive() and not done  # waiting, not converting a second copy
        target.mkdir()
        (target / COMPLETE_MARKER).write_text("built by the first fetch\n")
    thread.join(10)
    assert done == [target]


def test_a_tiny_temperature_samples_like_greedy(world):
    greedy = cli(*run_art(world / "art")[0])
    tiny = cli(*run_art(world / "art", "--temperature", "1e-320")[0])
    assert greedy.exit_code == tiny.exit_code == 0, tiny.output
    assert greedy.stdout == tiny.stdout


# ---- property-based: prompts and sampling options ----------------------------------------------------------
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer(world):
    from latentcache.contract.manifest import load_manifest
    from latentcache.runtime.tokenizer import Tokenizer

    return Tokenizer(world / "art", load_manifest(world / "art"))


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.characters(), max_size=40))
def test_any_prompt_encodes_or_is_refused_in_one_line(tokenizer, text):
    from latentcache.errors import LatentcacheError

    try:
        ids = tokenizer.encode(text, chat=False)
    except LatentcacheError as exc:
        assert "\n" not in str(exc) and ("not valid UTF-8" in str(exc) or "empty" in str(exc))
    else:
        assert all(isinstance(i, int) for i in ids)


@settings(max_examples=300, deadline=None)
@given(temperature=st.floats(allow_nan=True, allow_infinity=True), top_k=st.integers(-2, 200),
       top_p=st.floats(allow_nan=True, allow_infinity=True), seed=st.integers(-2, 2**64),
       scale=st.sampled_from([1.0, 1e-30, 1e30, 3e38]))
def test_sampling_options_are_valid_or_refused_and_never_yield_a_bad_id(temperature, top_k, top_p, seed, scale):
    import numpy as np

    from latentcache.errors import LatentcacheError
    from latentcache.sampling import Sampling, sample

    try:
        sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    except LatentcacheError as exc:
        assert "\n" not in str(exc)
        return
    logits = (np.random.default_rng(0).standard_normal((2, 97)) * scale).astype(np.float32)
    ids = sample(logits, sampling, np.random.default_rng(sampling.seed))
    assert ids.shape == (2,) and ((0 <= ids) & (ids < 97)).all()
