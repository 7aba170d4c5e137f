"""Bad input gets one line naming the file and the problem, exit code 1, no traceback (unless --verbose)."""

import json
import shutil

import pytest
from click.testing import CliRunner

from latentcache.cli import main


def run_cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def assert_one_line_error(code, output, *fragments):
    assert code == 1, output
    # Progress bars may precede it on stderr; the error itself is the last line, and the only one.
    errors = [line for line in output.strip().splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and output.strip().endswith(errors[0]), output
    assert "Traceback" not in output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.fixture
def checkpoint(tiny_model, tmp_path):
    """A private copy of a tiny checkpoint that the test may damage."""
    _, source = tiny_model("llama-gqa-tied")
    target = tmp_path / "ckpt"
    shutil.copytree(source, target)
    return target


def test_missing_directory(tmp_path):
    code, out = run_cli("generate", "--base", tmp_path / "nope", "hi")
    assert_one_line_error(code, out, str(tmp_path / "nope"), "no such model directory")


def test_missing_safetensors(checkpoint):
    (checkpoint / "model.safetensors").unlink()
    (checkpoint / "pytorch_model.bin").write_bytes(b"pickle")
    code, out = run_cli("generate", "--base", checkpoint, "hi")
    assert_one_line_error(code, out, "no model.safetensors", "pickle weights are never loaded")


def test_truncated_safetensors(checkpoint):
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, out = run_cli("generate", "--base", checkpoint, "hi")
    assert_one_line_error(code, out, str(weights), "truncated or corrupt")


def test_config_shapes_do_not_match_weights(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    config["intermediate_size"] = 64
    (checkpoint / "config.json").write_text(json.dumps(config))
    code, out = run_cli("generate", "--base", checkpoint, "hi")
    assert_one_line_error(code, out, "mlp", "(48, 32)", "(64, 32)", "config.json does not match")


def test_config_with_more_layers_than_weights(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (checkpoint / "config.json").write_text(json.dumps(config))
    code, out = run_cli("generate", "--base", checkpoint, "hi")
    assert_one_line_error(code, out, "missing", "layers.2.")


def test_unsupported_architecture_lists_supported(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    config["model_type"] = "gpt2"
    (checkpoint / "config.json").write_text(json.dumps(config))
    code, out = run_cli("generate", "--base", checkpoint, "hi")
    assert_one_line_error(code, out, "model_type 'gpt2' is not supported", "llama", "gemma2", "gemma3_text")


def test_gguf_hash_mismatch(tmp_path):
    fake = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 1000)
    code, out = run_cli("models", "fetch", "smollm2-135m-instruct", "--dir", tmp_path / "out", "--gguf", fake)
    assert_one_line_error(code, out, str(fake), "does not match the pinned", "b179c952")
    assert not (tmp_path / "out").exists(), "a failed fetch must leave nothing that looks like a checkpoint"


def test_unknown_model_name():
    code, out = run_cli("models", "fetch", "gpt-17")
    assert_one_line_error(code, out, "unknown model 'gpt-17'", "smollm2-135m-instruct")


def test_verbose_shows_the_traceback(tmp_path):
    result = CliRunner().invoke(main, ["--verbose", "generate", "--base", str(tmp_path / "nope"), "hi"])
    assert result.exit_code != 0 and result.exception is not None
