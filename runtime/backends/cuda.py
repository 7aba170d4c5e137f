"""The kv-cache on the device for the TensorRT backend (``DeviceCache``), over ``latentcache.cuda``."""

from __future__ import annotations

import numpy as np

from latentcache.contract import manifest as contract
from latentcache.arrays import HOST_DTYPES, from_host


class DeviceCache:
    """The kv-cache on the device: per layer ``[batch, kv_heads, max_seq, head_dim]`` keys and values.

    Allocated once. With ``slots=1`` every engine updates it in place: TensorRT's KVCacheUpdate layer (the
    ``inplace`` lowering, ONNX TensorScatter) requires its output to share the cache input's memory, and the
    engine reports that alias (``ICudaEngine.get_aliased_input_tensor``). Any other engine (the ``portable``
    lowering) must not read and write one buffer, so it gets two slots: it reads ``current`` and writes the
    other (ping-pong), and ``flip()`` makes the written one current.
    """

    def __init__(self, cuda, kv: contract.KVSpec, slots: int) -> None:
        self.cuda, self.kv, self.slots, self.current = cuda, kv, slots, 0
        self.shape = kv.shape()
        self.host_dtype = HOST_DTYPES[kv.dtype]
        self.nbytes = int(np.prod(self.shape)) * np.dtype(self.host_dtype).itemsize
        self.pointers = [[(cuda.malloc(self.nbytes), cuda.malloc(self.nbytes)) for _ in range(slots)]
                         for _ in range(kv.num_layers)]
        self.reset()

    def layer(self, layer: int, slot: int) -> tuple[int, int]:
        return self.pointers[layer][slot]

    def flip(self) -> None:
        self.current = 1 - self.current if self.slots == 2 else 0

    def reset(self) -> None:
        for per_slot in self.pointers:
            for key, value in per_slot:
                self.cuda.zero(key, self.nbytes, self.cuda.stream)
                self.cuda.zero(value, self.nbytes, self.cuda.stream)
        self.cuda.synchronize(self.cuda.stream)
        self.current = 0

    def read(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        arrays = []
        for pointer in self.layer(layer, self.current):
            host = np.empty(self.shape, dtype=self.host_dtype)
            self.cuda.download(host, pointer, self.cuda.stream)
            arrays.append(host)
        self.cuda.synchronize(self.cuda.stream)
        return tuple(from_host(a, self.kv.dtype) for a in arrays)

    def close(self) -> None:
        for per_slot in self.pointers:
            for key, value in per_slot:
                self.cuda.free(key)
                self.cuda.free(value)
        self.pointers = []
