"""The runtime imports on an edge install (no torch, no transformers), and the CLI starts without them."""

import subprocess
import sys

BLOCK_HEAVY_IMPORTS = """
import sys
class BlockHeavy:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ImportError(f"{name} is blocked: the runtime must not need it")
sys.meta_path.insert(0, BlockHeavy())
"""


def run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_HEAVY_IMPORTS + code], capture_output=True, text=True)


def test_blocker_really_blocks():
    result = run_blocked("import torch")
    assert result.returncode != 0 and "blocked" in result.stderr


def test_runtime_imports_without_torch_or_transformers():
    result = run_blocked(
        "import latentcache, latentcache.runtime, latentcache.errors\n"
        "assert not any(m.split('.')[0] in ('torch', 'transformers') for m in sys.modules)\n"
    )
    assert result.returncode == 0, result.stderr


def test_cli_help_without_torch_or_transformers():
    result = run_blocked("from latentcache.cli import main\nmain(['--help'])")
    assert "generate" in result.stdout and "models" in result.stdout, result.stderr


def test_embedded_default_coprocessor_is_small_and_complete():
    from latentcache.demo import DEFAULT_COPROCESSOR

    files = {p.name: p.stat().st_size for p in DEFAULT_COPROCESSOR.iterdir()}
    assert {"coprocessor.safetensors", "state.json", "README.json"} <= set(files)
    assert sum(files.values()) <= 20 * 2**20 and max(files.values()) <= 16 * 2**20
