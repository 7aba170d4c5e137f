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
