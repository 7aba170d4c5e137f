"""The import tree, checked from the source (every import statement, lazy ones inside functions included).

Layers, bottom to top:
- the contract (``latentcache/contract/``): standard library and ``latentcache.errors`` only;
- the core (the rest of ``latentcache/``): the model, coprocessor, checkpoints, sampling, tasks, TensorRT
  support; it imports no stage;
- the stages (``train/``, ``export/``, ``runtime/``, imported as ``latentcache.<stage>``): the core, never
  each other; the runtime reaches torch code only from its optional torch backend;
- the application (``latentcache.cli``, ``latentcache.demo``): anything.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("train", "export", "runtime")
APP = ("latentcache.cli", "latentcache.demo")
TORCH_FREE_EXCEPTION = "latentcache.runtime.backends.torch_reference"  # the optional PyTorch backend
TORCH_LIBRARIES = ("torch", "transformers", "safetensors", "onnx", "onnxscript", "gguf", "accelerate")


def module_files() -> dict[str, Path]:
    """Import name -> file, for every module of the package (the stage folders map to ``latentcache.<stage>``)."""
    modules = {}
    for top in ("latentcache", *STAGES):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT / top).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            prefix = ["latentcache"] if top == "latentcache" else ["latentcache", top]
            modules[".".join(prefix + parts)] = path
    return modules


def imports_of(name: str, path: Path) -> set[str]:
    """Absolute names of everything ``path`` imports, anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


def layer(name: str) -> str:
    if name in APP:
        return "app"
    for stage in STAGES:
        if name == f"latentcache.{stage}" or name.startswith(f"latentcache.{stage}."):
            return stage
    if name == "latentcache.contract" or name.startswith("latentcache.contract."):
        return "contract"
    return "core"


MODULES = module_files()


def problems_of(name: str, path: Path) -> list[str]:
    mine = layer(name)
    problems = []
    for target in sorted(imports_of(name, path)):
        top = target.split(".")[0]
        if top != "latentcache":
            if mine == "contract" and top not in sys.stdlib_module_names and top != "__future__":
                problems.append(f"{name} (contract) imports {target}: the contract is standard library only")
            if mine == "runtime" and top in TORCH_LIBRARIES and name != TORCH_FREE_EXCEPTION:
                problems.append(f"{name} (runtime) imports {target}: the runtime runs without torch")
            continue
        theirs = layer(target)
        if mine == "app" or theirs == mine or target == "latentcache":
            continue
        if theirs == "app":
            problems.append(f"{name} ({mine}) imports the application module {target}")
        elif theirs in STAGES:
            problems.append(f"{name} ({mine}) imports {target} ({theirs}): stages import the core, never each other")
        elif mine == "contract" and theirs != "contract" and target.split(".")[:2] != ["latentcache", "errors"]:
            problems.append(f"{name} (contract) imports {target}: the contract imports only latentcache.errors")
        elif (mine == "runtime" and target.startswith("latentcache.model") and name != TORCH_FREE_EXCEPTION):
            problems.append(f"{name} (runtime) imports {target}: torch code, only the torch backend may")
    return problems


def test_the_module_map_sees_every_layer():
    layers = {layer(name) for name in MODULES}
    assert layers == {"app", "core", "contract", *STAGES}
    assert "latentcache.runtime.generator" in MODULES and "latentcache.train.data.cache" in MODULES


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_import_crosses_a_layer(name):
    assert problems_of(name, MODULES[name]) == []


def test_the_check_catches_a_lazy_cross_stage_import(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    from latentcache.train.checkpoint import x\n    import torch\n")
    problems = " | ".join(problems_of("latentcache.runtime.planted", planted))
    assert "latentcache.train.checkpoint (train): stages import the core" in problems
    assert "imports torch: the runtime runs without torch" in problems
    relative = tmp_path / "relative.py"
    relative.write_text("from ..export import onnx_export\n")
    assert "export" in problems_of("latentcache.train.relative", relative)[0]
