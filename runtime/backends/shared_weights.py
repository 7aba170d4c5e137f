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

One block (``ONE_BLOCK``), why: copies made through ONNX Runtime's Python API (``OrtValue.ortvalue_from_numpy``)
come from its Python CUDA arena (onnxruntime/python/onnxruntime_pybind_state.cc ``GetCudaAllocator``), a BFCArena
that grows to the next power of two (onnxruntime/core/framework/bfc_arena.cc ``Extend``, kNextPowerOfTwo). On an
H200 (onnxruntime-gpu 1.31.1, SmolLM2 fp16 + coprocessor, 2,304 slots; benchmarks/gpu/share_probe.py,
docs/results/gpu15/share_probe.json) the 202.6 MiB of shared tensors grew it by 255 MiB (1 + 2 + ... + 128), and the
kv-cache allocated from it next needed a new region of 256 MiB: 988 MiB against 1,020-1,052 per session, 684 base
only. So they are copied into one allocation of exactly their bytes instead (cudaMalloc through the CUDA runtime
that ONNX Runtime's provider loaded; malloc on the CPU), each handed over as a DLPack view into it: 744 MiB, the same
tokens, every shared name taken by both sessions ("Using user supplied initializer", session_state_utils.cc). Where
no CUDA runtime is found loaded, each tensor is copied through the Python API as before.
"""

from __future__ import annotations

import ctypes
import functools
import json
import weakref
from collections import Counter
from pathlib import Path

import numpy as np

from latentcache.arrays import HOST_DTYPES
from latentcache.contract import manifest as contract
from latentcache.contract.dtypes import ONNX_ELEMENT_TYPES
from latentcache.errors import LatentcacheError
from latentcache.runtime.backends.memset import CUDART_STEM, loaded_library

# ONNX data_type -> numpy: the contract's types numpy holds as they are, and the quantized codes (uint8, int8)
NUMPY_TYPES = {code: HOST_DTYPES[name] for code, name in ONNX_ELEMENT_TYPES.items() if name != "bfloat16"} | \
    {2: np.uint8, 3: np.int8}


class SharedWeights:
    """The shared tensors of ``graphs`` (the sessions a backend loads), each one OrtValue on ``device``."""

    ONE_BLOCK = True  # all of them in one exact allocation (see the module); False: one ONNX Runtime copy each

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
            if self.ONE_BLOCK:
                self.block = self._one_block()

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

    def _one_block(self) -> Block | None:
        """Copy every shared tensor into one block and fill ``values`` with views of it; None (nothing done)
        where no allocator for the device is found."""
        unique = {e["offset"]: e for entries in self.entries.values() for e in entries}
        place, total = {}, 0
        for offset, entry in sorted(unique.items()):
            place[offset] = total
            total += -(-entry["length"] // 256) * 256  # 256-byte aligned, as ONNX Runtime aligns its own
        block = Block.allocate(self.ort, self.device, total)
        if block is None:
            return None
        for offset, entry in unique.items():
            source = np.ascontiguousarray(self.mapped[offset: offset + entry["length"]])
            block.copy_in(place[offset], source)
            self.values[offset] = dlpack_view(self.ort, block.pointer + place[offset], entry["dims"],
                                              NUMPY_TYPES[entry["data_type"]], block.dlpack_device)
        return block

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
    except AttributeError as missing:
        raise no_dlpack(ort) from missing
    return from_dlpack(ort, capsule)


def no_dlpack(ort) -> LatentcacheError:
    return LatentcacheError(f"onnxruntime {ort.__version__} has no DLPack support, which share_weights needs to hand "
                            "one device copy to several sessions: pass share_weights=False")


def from_dlpack(ort, capsule):
    """The OrtValue ONNX Runtime makes of a DLPack capsule (it takes the capsule's deleter with it)."""
    try:
        return ort.OrtValue(ort.capi._pybind_state.OrtValue.from_dlpack(capsule))
    except AttributeError as missing:
        raise no_dlpack(ort) from missing


class Block:
    """``nbytes`` of device (or host) memory, freed when this object goes; the sessions given views of it must
    go first (the backend holds both)."""

    def __init__(self, pointer: int, dlpack_device: int, copy, free) -> None:
        self.pointer, self.dlpack_device, self._copy = pointer, dlpack_device, copy
        weakref.finalize(self, free, pointer)

    def copy_in(self, at: int, array: np.ndarray) -> None:
        self._copy(self.pointer + at, array.ctypes.data, array.nbytes)

    @classmethod
    def allocate(cls, ort, device: str, nbytes: int) -> Block | None:
        if device == "cpu":
            libc = _libc()
            pointer = libc.malloc(nbytes)
            return cls(pointer, 1, ctypes.memmove, libc.free) if pointer else None  # kDLCPU
        # The CUDA runtime of ONNX Runtime's provider: a first device OrtValue loads the provider (and with it
        # libcudart) if no session has yet
        ort.OrtValue.ortvalue_from_numpy(np.zeros(1, np.uint8), device, 0)
        path = loaded_library(CUDART_STEM)
        if path is None:
            return None
        cudart = ctypes.CDLL(path)
        cudart.cudaMalloc.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t]
        cudart.cudaMemcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        cudart.cudaFree.argtypes = [ctypes.c_void_p]
        pointer = ctypes.c_void_p()
        if cudart.cudaMalloc(ctypes.byref(pointer), nbytes) != 0:
            raise LatentcacheError(f"cudaMalloc of {nbytes} bytes for the shared weights failed (out of GPU memory?): "
                                  "pass share_weights=False")

        def copy(dst: int, src: int, count: int) -> None:
            if cudart.cudaMemcpy(dst, src, count, 1) != 0:  # cudaMemcpyHostToDevice
                raise LatentcacheError("cudaMemcpy of the shared weights to the device failed: pass share_weights=False")

        return cls(pointer.value, 2, copy, cudart.cudaFree)  # kDLCUDA


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32), ("dtype", _DLDataType),
                ("shape", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.c_void_p),
                ("byte_offset", ctypes.c_uint64)]


class _DLManagedTensor(ctypes.Structure):  # dlpack.h's DLManagedTensor (the unversioned "dltensor" capsule)
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]


_CAPSULE_NAME = b"dltensor"
_DL_CODES = {"f": 2, "i": 0, "u": 1}  # kDLFloat, kDLInt, kDLUInt


@functools.cache
def _libc():  # once: dlpack_view runs per shared tensor
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    return libc


def dlpack_view(ort, pointer: int, shape, dtype, dlpack_device: int, device_id: int = 0):
    """An OrtValue over ``pointer`` that does not own it (what ``add_initializer`` takes), through a DLPack capsule
    made here. ONNX Runtime copies the shape and calls the capsule's deleter when the OrtValue goes
    (onnxruntime/python/dlpack_converter.cc ``DlpackToOrtValue``): the DLManagedTensor is malloc'd and its deleter
    is libc's free, so that frees the struct alone, never the data, and needs nothing of Python then."""
    libc, dtype = _libc(), np.dtype(dtype)
    address = libc.malloc(ctypes.sizeof(_DLManagedTensor))
    managed = _DLManagedTensor.from_address(address)
    dims = (ctypes.c_int64 * max(1, len(shape)))(*shape)
    managed.dl_tensor.data = pointer
    managed.dl_tensor.device = _DLDevice(dlpack_device, device_id)
    managed.dl_tensor.ndim = len(shape)
    managed.dl_tensor.dtype = _DLDataType(_DL_CODES[dtype.kind], dtype.itemsize * 8, 1)
    managed.dl_tensor.shape = ctypes.cast(dims, ctypes.POINTER(ctypes.c_int64))
    managed.dl_tensor.strides = None  # contiguous
    managed.dl_tensor.byte_offset = 0
    managed.manager_ctx = None
    managed.deleter = ctypes.cast(libc.free, ctypes.c_void_p).value
    new_capsule = ctypes.pythonapi.PyCapsule_New
    new_capsule.restype, new_capsule.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    capsule = new_capsule(address, _CAPSULE_NAME, None)
    return from_dlpack(ort, capsule)
