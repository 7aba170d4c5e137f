"""latentcache: cache-augmented language models from training to the edge.

Stages (each a subpackage; ``runtime`` depends on nothing of ``train`` or ``export``):

- ``latentcache.model``: the owned PyTorch decoder shared by training, export and the reference runtime.
- ``latentcache.train``: the coprocessor and its one-pass training.
- ``latentcache.export``: ONNX graphs with explicit kv-cache I/O and TensorRT engines.
- ``latentcache.runtime``: the orchestrator that runs those graphs (no torch needed).
"""

__version__ = "0.1.0"
