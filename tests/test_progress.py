"""Step lines for long commands, and the export defaults a user gets without flags."""

from __future__ import annotations

import re

import pytest

from latentcache.progress import Steps
from tests.tiny import build_tiny


def test_steps_say_what_runs_then_how_long_it_took():
    lines = []
    steps = Steps(lines.append)
    with steps.step("exporting prefill.onnx"):
        lines.append("inside")
    with pytest.raises(RuntimeError), steps.step("failing"):
        raise RuntimeError("boom")
    assert lines[:2] == ["exporting prefill.onnx ...", "inside"]
    assert re.fullmatch(r"exporting prefill\.onnx: \d+\.\d s \(total \d+ s\)", lines[2])
    assert lines[3:] == ["failing ..."]  # a failed step prints no time: the error says what happened


def test_export_defaults_follow_the_model(tmp_path):
    from latentcache.export.onnx_export import ExportConfig, with_model_defaults

    build_tiny("llama-gqa-tied", tmp_path / "llama")  # 256 positions
    config = with_model_defaults(ExportConfig(base=tmp_path / "llama", out=tmp_path / "out"))
    assert (config.max_seq, config.dtype) == (256, "fp32")
    assert with_model_defaults(ExportConfig(base=tmp_path / "llama", out=tmp_path / "out", max_seq=64)).max_seq == 64
    build_tiny("gemma2", tmp_path / "gemma")  # once bf16 by default, which ONNX Runtime CPU cannot run
    assert with_model_defaults(ExportConfig(base=tmp_path / "gemma", out=tmp_path / "out")).dtype == "fp32"
