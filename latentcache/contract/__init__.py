"""The contract every stage shares, standard library only: the artifacts manifest, dtype names, file hashing
and atomic writes. Nothing here imports torch, numpy or onnx, so an edge device can read it as well as the
exporter writes it; ``tests/test_layering.py`` keeps it that way.
"""
