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
