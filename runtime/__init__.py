"""Run exported artifacts: prefill -> (coprocess -> absorb) -> decode_step on ONNX Runtime, TensorRT or PyTorch.

Imports and runs with neither torch nor transformers installed (``pip install 'latentcache[runtime]'``):
``Pipeline(artifacts, backend="auto").stream("prompt", max_new_tokens=64, policy=...)``.
"""

from latentcache.runtime.generator import Generator, RequestStats, make_policy
from latentcache.contract.manifest import Manifest, load_manifest
from latentcache.runtime.pipeline import Pipeline

__all__ = ["Generator", "Manifest", "Pipeline", "RequestStats", "load_manifest", "make_policy"]
