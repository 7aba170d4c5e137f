"""The examples' --quick forms on tiny exported artifacts: each completes and writes its JSON fields and PNG.

No timing assertions: these check that the scripts people copy from still run against the public API.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.exported import export_tiny

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ARC = [
    {"question": {"stem": "Which is hot?", "choices": [{"text": "ice", "label": "A"}, {"text": "fire", "label": "B"},
                                                       {"text": "snow", "label": "C"}]}, "answerKey": "B"},
    {"question": {"stem": "What is wet?", "choices": [{"text": "water", "label": "1"}, {"text": "sand", "label": "2"}]},
     "answerKey": "1"},
]
GSM8K = [{"question": "Tom has 2 apples and gets 3 more. How many?", "answer": "2 + 3 = 5\n#### 5"}]


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / name / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Batch-1 tiny artifacts with a (random) N_L = 4 coprocessor, and a tiny ARC / GSM8K data folder."""
    root = tmp_path_factory.mktemp("examples")
    exported = export_tiny("llama-gqa-tied", root / "tiny", batch=1, max_seq=256)
    (root / "data" / "arc").mkdir(parents=True)
    (root / "data" / "gsm8k").mkdir()
    (root / "data" / "arc" / "ARC-Easy-Test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ARC))
    (root / "data" / "gsm8k" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GSM8K))
    return exported.artifacts, root / "data"


def run_example(name: str, tmp_path: Path, *args: str) -> dict:
    out_json, out_png = tmp_path / f"{name}.json", tmp_path / f"{name}.png"
    returned = load(name).main(["--quick", "--json", str(out_json), "--png", str(out_png), *args])
    report = json.loads(out_json.read_text())
    assert report == json.loads(json.dumps(returned)), "the JSON written is not the report returned"
    assert out_png.stat().st_size > 1000 and out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["example"] == name and report["config"]["quick"] is True
    assert "commit" in report["environment"]
    return report


def test_coprocessor_cost(tiny, tmp_path):
    artifacts, _ = tiny
    report = run_example("01_coprocessor_cost", tmp_path, "--artifacts", str(artifacts), "--cache", str(tmp_path))
    assert report["config"]["latents"] == [2, 4, 8] and report["config"]["prompt_tokens"] == [8, 16, 32]
    rows = report["rows"]
    assert len(rows) == 3 * 4  # per prompt: off, then each N_L
    for row in rows:
        for key in ("prompt_tokens", "num_latents", "ttft_ms", "prefill_ms", "decode_ms_median", "decode_tokens_per_s",
                    "end_to_end_ms"):
            assert row[key] is not None, key
        if row["coprocessor"]:
            assert row["coprocessor_absorb_ms"] > 0 and row["coprocessor_ms"] > 0 and row["absorb_ms"] > 0
        else:
            assert row["num_latents"] == 0 and row["coprocessor_absorb_ms"] is None
    assert [row["trained"] for row in rows if row["coprocessor"]] == [False, True, False] * 3
    assert Path(report["variants"]["4"]) == artifacts.resolve()  # the given artifacts serve their own N_L
    for n in ("2", "8"):
        assert Path(report["variants"][n]).parent == tmp_path


def test_latents_vs_cot(tiny, tmp_path):
    artifacts, data = tiny
    report = run_example("02_latents_vs_cot", tmp_path, "--artifacts", str(artifacts), "--data", str(data))
    latency = report["latency"]
    assert latency["num_latents"] == 4 and set(latency["thinking_ms"]) == {"4", "8"}
    for key in ("coprocessor_ms", "absorb_ms", "latents_ms", "thinking_ms_per_token", "cot_over_latents"):
        assert key in latency
    conditions = {"direct", "latents", "cot-4", "cot-8"}
    assert report["accuracy"]["arc-easy"]["n"] == 2 and report["accuracy"]["gsm8k"]["n"] == 1
    for task in ("arc-easy", "gsm8k"):
        assert set(report["accuracy"][task]["conditions"]) == conditions
        for summary in report["accuracy"][task]["conditions"].values():
            assert 0 <= summary["accuracy"] <= 1 and summary["mean_total_ms"] > 0
    assert len(report["items"]) == 3 * len(conditions)
    assert all(item["thinking_tokens"] <= 8 for item in report["items"])


def test_backends(tiny, tmp_path):
    artifacts, _ = tiny
    report = run_example("03_backends", tmp_path, "--artifacts", str(artifacts))
    by_name = {entry["backend"]: entry for entry in report["backends"]}
    assert list(by_name) == ["onnxruntime-cpu", "onnxruntime-cuda", "tensorrt", "torch"]  # none dropped
    assert report["reference"] == "onnxruntime-cpu" and by_name["onnxruntime-cpu"]["status"] == "ran"
    for entry in by_name.values():
        if entry["status"] == "skipped":
            assert entry["reason"]
            continue
        assert entry["status"] == "ran"
        for mode in ("off", "on"):
            assert entry[mode]["ttft_ms"] > 0 and "matches_reference" in entry[mode]
        assert entry["on"]["coprocessor_absorb_ms"] > 0 and entry["off"]["coprocessor_absorb_ms"] is None
    # The PyTorch reference runs wherever torch does, and greedy answers agree with ONNX Runtime CPU.
    assert by_name["torch"]["status"] == "ran" and by_name["torch"]["on"]["matches_reference"]


def test_async(tiny, tmp_path):
    artifacts, data = tiny
    report = run_example("04_async", tmp_path, "--artifacts", str(artifacts), "--data", str(data))
    assert set(report["latency"]) == {"end-of-prompt", "async", "none"}
    assert report["latency"]["none"]["augmented_at"] == [] and report["latency"]["end-of-prompt"]["augmented_at"]
    assert all(at == 0 for at in report["latency"]["end-of-prompt"]["augmented_at"])
    assert len(report["latency"]["async"]["augmented_at"]) <= 1  # one timed request, absorbed at most once
    for policy, t in report["latency"].items():
        assert t["ttft_ms"] > 0 and t["end_to_end_ms"] > 0
    quality = report["quality"]
    assert quality["arc-easy"]["n"] == 2 and quality["open"]["n"] == 2
    assert quality["arc-easy"]["policies"]["end-of-prompt"]["agrees_with_sync"] == 1
    assert quality["open"]["policies"]["end-of-prompt"]["identical_to_sync"] == 1
    for policy in ("async", "none"):
        assert 0 <= quality["arc-easy"]["policies"][policy]["accuracy"] <= 1
        assert 0 <= quality["open"]["policies"][policy]["mean_common_prefix"] <= 8
