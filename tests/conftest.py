import pytest
import torch

from tests.tiny import build_tiny


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """``tiny_model(name) -> (hf_model, checkpoint_dir)``, built once per session and architecture."""
    built = {}

    def make(name: str):
        if name not in built:
            directory = tmp_path_factory.mktemp(name)
            built[name] = (build_tiny(name, directory), directory)
        return built[name]

    return make


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


# ---- the real data: tests that need it skip, with the reason, when the data root lacks it ---------------
def pytest_configure(config):
    config.addinivalue_line(
        "markers", "needs_data(*paths): skip unless every path (e.g. 'arc', 'mmlu/test') exists under the data "
                   "root ($LATENTCACHE_DATA, else ../shared/data); the skip names the first one missing")


def missing_data(paths) -> str | None:
    """The skip reason for the first of ``paths`` absent from the data root, or None when all are there."""
    from latentcache.catalog import DATASETS
    from latentcache.paths import DATA_ENV, data_root, data_root_origin

    for relative in paths:
        path = data_root() / relative
        if not path.exists():
            title = DATASETS[relative.split("/")[0]].title
            return (f"needs {title}: no {path} (data root from {data_root_origin()}); set {DATA_ENV} to a folder "
                    "laid out like ../shared/data to run it")
    return None


def pytest_runtest_setup(item):
    for marker in item.iter_markers("needs_data"):
        reason = missing_data(marker.args)
        if reason:
            pytest.skip(reason)


@pytest.fixture(autouse=True)
def _no_hub_loader(monkeypatch):
    """Tests never reach the network: a developer's LATENTCACHE_DATA_HUB=1 does not turn the Hub loader on."""
    monkeypatch.delenv("LATENTCACHE_DATA_HUB", raising=False)


# ---- the real default base (slow tests) -------------------------------------------------------------------
@pytest.fixture(scope="session")
def smollm2_dir():
    """SmolLM2-135M-Instruct's checkpoint, fetched once into the checkout's cache (unless LATENTCACHE_HOME says
    elsewhere)."""
    import os
    from pathlib import Path

    os.environ.setdefault("LATENTCACHE_HOME", str(Path(__file__).resolve().parents[1] / ".cache"))
    from latentcache.registry import fetch

    return Path(fetch("smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def smollm2_fp16(smollm2_dir, tmp_path_factory):
    """SmolLM2 exported once in fp16 (max_seq 512, the Jetson precision): the ONNX Runtime parity test and the
    TensorRT-RTX build both read it (two exports of it cost CI about a minute)."""
    from latentcache.export.onnx_export import ExportConfig, export_artifacts

    return export_artifacts(ExportConfig(base=smollm2_dir, out=tmp_path_factory.mktemp("smollm2") / "fp16",
                                         dtype="fp16", max_seq=512), progress=lambda _: None)
