"""Backends by name; each imported only when asked for (an edge device installs one of them)."""

from __future__ import annotations

import importlib
from pathlib import Path

from latentcache.errors import LatentcacheError
from latentcache.runtime.backend import Backend, BackendUnavailable
from latentcache.contract.manifest import Manifest

BACKENDS = {
    "onnxruntime-cpu": ("latentcache.runtime.backends.onnxruntime", "OnnxRuntimeBackend"),
    "onnxruntime-cuda": ("latentcache.runtime.backends.onnxruntime", "OnnxRuntimeCudaBackend"),
    "tensorrt": ("latentcache.runtime.backends.tensorrt", "TensorRTBackend"),
    "torch": ("latentcache.runtime.backends.torch_reference", "TorchBackend"),
}
AUTO_ORDER = ("tensorrt", "onnxruntime-cuda", "onnxruntime-cpu")  # fastest first; torch is for development


def open_backend(name: str, artifacts: Path, manifest: Manifest, threads: int | None = None) -> Backend:
    """Load ``name`` (or, for ``auto``, the first of ``AUTO_ORDER`` that loads here); ``threads``: ONNX Runtime's."""
    if name == "auto":
        reasons = []
        for candidate in AUTO_ORDER:
            try:
                return open_backend(candidate, artifacts, manifest, threads)
            except BackendUnavailable as exc:
                reasons.append(f"{candidate}: {exc}")
        raise BackendUnavailable("no backend is usable here; " + "; ".join(reasons))
    if name not in BACKENDS:
        raise LatentcacheError(f"unknown backend '{name}': choose one of auto, {', '.join(BACKENDS)}")
    module, cls = BACKENDS[name]
    try:
        backend_class = getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        raise BackendUnavailable(f"{name}: {exc}") from None
    options = {"threads": threads} if name.startswith("onnxruntime") else {}
    return backend_class(artifacts, manifest, **options)
