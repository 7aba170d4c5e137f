"""``weights.bin``: one external-data file for every graph, each distinct tensor stored once, and its index.

Identical bytes are stored once (the base's weights serve prefill, decode and an unmerged LoRA coprocessor), and
``weights.json`` (``WEIGHT_INDEX_FILE``, named by the manifest's ``weight_index``) lists, per graph, every
initializer stored there: name, offset, length, ONNX data type, dims. A runtime that maps the file once can then hand
the same tensor to every session that reads it (ONNX Runtime's ``AddInitializer``) instead of each session loading
its own copy, and ONNX Runtime's prepacked-weights container keeps one prepacked copy of it for all of them.

``shared`` says where that is safe. The container finds a prepacked copy by operator type and a hash of the packed
bytes, computed from the weight alone, but some kernels fold the node's other weights into the same buffer after
that (ONNX Runtime's CPU MatMulNBits packs scales and zero points into it at accuracy level 4; checked in
onnxruntime/contrib_ops/cpu/quantization/matmul_nbits.cc). Two nodes with the same quantized codes and different
scales, as a full fine-tune's small updates can give, would then share one buffer with one node's scales. So a tensor
is ``shared`` only when every node of one operator type that reads it reads the same set of weights with it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

WEIGHTS_FILE = "weights.bin"
WEIGHT_INDEX_FILE = "weights.json"
ALIGNMENT = 64  # bytes: every stored tensor starts at a multiple


def digest(tensor) -> str:
    """sha256 of a tensor's values (not its name): raw bytes, or the typed fields small constants may use instead."""
    if tensor.raw_data:
        return hashlib.sha256(tensor.raw_data).hexdigest()
    from onnx import numpy_helper

    values = numpy_helper.to_array(tensor)
    return hashlib.sha256(f"{tensor.data_type}:{list(tensor.dims)}:".encode() + values.tobytes()).hexdigest()


@dataclass
class WeightStore:
    """Appends each graph's large initializers to ``path`` (identical tensors once) and records where they went."""

    path: Path
    min_bytes: int = 1024  # smaller tensors stay inside the graph file
    offsets: dict[str, tuple[int, int]] = field(default_factory=dict)  # sha256 -> (offset, length)
    entries: dict[str, list[dict]] = field(default_factory=dict)  # graph -> index entries (without "shared")
    readers: dict[str, dict[str, set]] = field(default_factory=dict)  # sha256 -> op type -> weight sets read with it

    def externalize(self, model, graph: str) -> None:
        """Move ``model``'s large initializers into the file (the graph then refers to them by offset)."""
        from onnx import TensorProto

        digests = {tensor.name: digest(tensor) for tensor in model.graph.initializer}
        entries = self.entries.setdefault(graph, [])
        with open(self.path, "ab") as handle:
            for tensor in model.graph.initializer:
                data = tensor.raw_data
                if len(data) < self.min_bytes:
                    continue
                key = digests[tensor.name]
                if key not in self.offsets:
                    self.offsets[key] = (handle.tell(), len(data))
                    handle.write(data + b"\0" * (-len(data) % ALIGNMENT))
                offset, length = self.offsets[key]
                entries.append({"name": tensor.name, "offset": offset, "length": length,
                                "data_type": tensor.data_type, "dims": list(tensor.dims), "sha256": key})
                tensor.ClearField("raw_data")
                tensor.data_location = TensorProto.EXTERNAL
                del tensor.external_data[:]
                for k, v in (("location", self.path.name), ("offset", str(offset)), ("length", str(length))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = k, v
        self._note_readers(model, digests)

    def _note_readers(self, model, digests: dict[str, str]) -> None:
        for node in model.graph.node:
            weights = tuple(digests.get(name, "") for name in node.input)  # "" : an activation
            for name in node.input:
                if name in digests:
                    self.readers.setdefault(digests[name], {}).setdefault(node.op_type, set()).add(weights)

    def shareable(self, key: str) -> bool:
        return all(len(sets) == 1 for sets in self.readers.get(key, {}).values())

    def write_index(self) -> Path:
        """``weights.json`` beside the file, once every graph is externalized."""
        graphs = {graph: [{**{k: v for k, v in e.items() if k != "sha256"}, "shared": self.shareable(e["sha256"])}
                          for e in entries] for graph, entries in self.entries.items()}
        index = {"file": self.path.name, "alignment": ALIGNMENT, "graphs": graphs}
        path = self.path.with_name(WEIGHT_INDEX_FILE)
        path.write_text(json.dumps(index, indent=0, sort_keys=True) + "\n")
        return path
