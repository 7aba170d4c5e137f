"""The embedded default coprocessor reproduces, on the CPU, the held-out figures it shipped with (slow).

README.json beside the weights records the `latentcache eval` slice measured on the GPU machine (fp32 weights,
the same packed fp16 file): the relative perplexity change at every position on the leading sequences of both
validation sets. The CPU run scores the same targets, so only kernel rounding may separate the two.
"""

import json

import pytest

from latentcache.demo import DEFAULT_COPROCESSOR

pytestmark = pytest.mark.slow
SHIPPED = json.loads((DEFAULT_COPROCESSOR / "README.json").read_text())
TOLERANCE_POINTS = 0.05  # percentage points; the slice's own bootstrap interval is about 100 times wider


@pytest.mark.skipif("slice" not in SHIPPED, reason="this default ships without a reproducible eval slice")
def test_cpu_eval_reproduces_the_shipped_slice(tmp_path, smollm2_dir):
    from latentcache.train.config import EvalConfig
    from latentcache.train.run import run_evaluation

    shipped = SHIPPED["slice"]
    report = run_evaluation(EvalConfig(
        base=smollm2_dir, json_out=tmp_path / "slice.json", coprocessors=(DEFAULT_COPROCESSOR,),
        seq_len=1024, sequences=shipped["sequences"], batch_size=shipped["batch_size"], points=shipped["points"],
        shuffled=False, device="cpu"))
    for set_name, expected in shipped["relative_change_pct"].items():
        rows = next(r for name, r in report["perplexity"][set_name].items() if name != "no-augmentation")["rows"]
        measured = {str(row["position"]): row["relative_change_pct"] for row in rows}
        for position, value in expected.items():
            assert measured[position] == pytest.approx(value, abs=TOLERANCE_POINTS), (set_name, position)
