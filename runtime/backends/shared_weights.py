"""One copy of the base's weights on the GPU for every ONNX Runtime CUDA session of an artifact.

Each session loads its own initializers: with a coprocessor that is a second copy of the base on the device (its
unmerged LoRA graph reads the base's weights, byte for byte). ONNX Runtime takes user-supplied initializers
instead (``SessionOptions.add_initializer``): it uses the given OrtValue as it is, wherever it lies
(``session_state_utils.cc``: "Using user supplied initializer"), and the value must outlive the session. So each
tensor that ``weights.json`` marks ``shared`` and that more than one loaded session reads is copied to the device
once, from ``weights.bin`` mapped read-only, and handed to every session that reads it.

Only on CUDA: the CUDA kernels read weights as they are, while ONNX Runtime's CPU kernels prepack theirs into
session-owned buffers, so on the CPU a user-supplied tensor would be held beside each session's prepacked copy (the
native runtime shares those through ONNX Runtime's prepacked-weights container, which the Python API lacks).
Tensors of a type numpy cannot hold (int4, bfloat16) stay per session.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from latentcache.arrays import HOST_DTYPES
from latentcache.contract import manifest as contract
from latentcache.contract.dtypes import ONNX_ELEMENT_TYPES

# ONNX data_type -> numpy: the contract's types numpy holds as they are, and the quantized codes (uint8, int8)
NUMPY_TYPES = {code: HOST_DTYPES[name] for code, name in ONNX_ELEMENT_TYPES.items() if name != "bfloat16"} | \
    {2: np.uint8, 3: np.int8}


class SharedWeights:
    """The shared tensors of ``graphs`` (the sessions a backend loads), each one OrtValue on ``device``."""

    def __init__(self, ort, artifacts: Path, manifest: contract.Manifest, graphs: list[str], device: str) -> None:
        self.ort, self.device = ort, device
        self.entries: dict[str, list[dict]] = {}
        self.values: dict[int, object] = {}  # offset in weights.bin -> OrtValue (kept alive for the sessions)
        if not manifest.weight_index:
            return
        index = json.loads((artifacts / manifest.weight_index).read_text())
        shared = {graph: [e for e in index["graphs"].get(graph, []) if e["shared"] and e["data_type"] in NUMPY_TYPES]
                  for graph in graphs}
        readers = Counter(e["offset"] for entries in shared.values() for e in entries)
        self.entries = {graph: [e for e in entries if readers[e["offset"]] > 1] for graph, entries in shared.items()}
        if any(self.entries.values()):
            self.mapped = np.memmap(artifacts / index["file"], dtype=np.uint8, mode="r")

    def add_to(self, graph: str, options) -> None:
        """Give ``options`` (for ``graph``'s session) every shared tensor that graph reads."""
        for entry in self.entries.get(graph, []):
            options.add_initializer(entry["name"], self._value(entry))

    def _value(self, entry: dict):
        offset = entry["offset"]
        if offset not in self.values:
            raw = self.mapped[offset: offset + entry["length"]]
            array = raw.view(NUMPY_TYPES[entry["data_type"]]).reshape(entry["dims"])
            copy = self.ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, 0)
            self.values[offset] = borrowed_view(self.ort, copy)
        return self.values[offset]

    def describe(self) -> str:
        """"N weight tensors (X MiB) held once for K sessions", or "" where nothing is shared."""
        if not self.values:
            return ""
        mib = sum(e["length"] for e in {e["offset"]: e for v in self.entries.values() for e in v}.values()) / 2**20
        sessions = sum(1 for entries in self.entries.values() if entries)
        return f"{len(self.values)} weight tensors ({mib:.1f} MiB) held once for {sessions} sessions"


def borrowed_view(ort, value):
    """``value``'s buffer as an OrtValue that does not own it, which is what ``add_initializer`` takes.

    ONNX Runtime refuses an initializer whose tensor owns its buffer ("Buffer containing the initializer must be
    owned by the user", onnxruntime_pybind_state.cc), and a copy onto the device is owned by the OrtValue that made
    it (the first GPU run of share_weights failed so). A DLPack round trip gives a view of the same memory whose
    deleter holds the original tensor, so the buffer lives as long as the view (onnxruntime/python/
    dlpack_converter.cc; onnxruntime-gpu 1.31.1 has both ends).
    """
    try:
        capsule = value._ortvalue.to_dlpack()
        return ort.OrtValue(ort.capi._pybind_state.OrtValue.from_dlpack(capsule))
    except AttributeError as missing:
        raise RuntimeError(f"onnxruntime {ort.__version__} has no DLPack support, which share_weights needs to hand "
                           "one device copy to several sessions: pass share_weights=False") from missing
