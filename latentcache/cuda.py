"""CUDA through cuda-python (``CudaRuntime``): the TensorRT builder asks it for the GPU's compute capability,
the TensorRT backend for memory, streams and CUDA graphs.

CUDA's Python bindings (``pip install cuda-python``) are imported lazily, when a ``CudaRuntime`` is made;
nothing here imports torch.
"""

from __future__ import annotations

import numpy as np

from latentcache.errors import BackendUnavailable
from latentcache.tensorrt_support import TensorRTError


def import_cudart():
    """cuda-python's runtime module: ``cuda.bindings.runtime`` (cuda-python >= 12.6), else ``cuda.cudart``."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime
        except ImportError:
            raise BackendUnavailable("the TensorRT backend needs CUDA's Python bindings: pip install cuda-python") \
                from None
    return runtime


class CudaRuntime:
    """The handful of CUDA runtime calls the backend makes, each checked.

    cuda-python returns ``(error, *values)`` tuples; ``_call`` turns a non-success code into a
    ``TensorRTError`` naming the call. Host pointers are numpy ``ctypes.data`` addresses. Work goes to
    non-blocking streams (capture must not use the legacy default stream): ``stream`` for the cache's own
    copies, and one per graph from ``new_stream`` (so that the coprocessor can run beside decoding, and a
    decode capture records decode's work only).
    """

    def __init__(self, device: int = 0) -> None:
        self.rt = rt = import_cudart()
        try:
            self._call("cudaSetDevice", device)
            attr = rt.cudaDeviceAttr
            major = self._call("cudaDeviceGetAttribute", attr.cudaDevAttrComputeCapabilityMajor, device)
            minor = self._call("cudaDeviceGetAttribute", attr.cudaDevAttrComputeCapabilityMinor, device)
        except TensorRTError as exc:
            raise BackendUnavailable(f"no usable NVIDIA GPU {device}: {exc}") from None
        self.compute_capability = f"{major}.{minor}"
        self.streams: list = []
        self.stream = self.new_stream()

    def _call(self, function: str, *args):
        result = getattr(self.rt, function)(*args)
        error, values = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
        if error != self.rt.cudaError_t.cudaSuccess:
            name = getattr(error, "name", str(error))
            described = self.rt.cudaGetErrorString(error)
            text = described[1].decode() if isinstance(described, tuple) and len(described) > 1 else ""
            raise TensorRTError(f"CUDA {function} failed with {name} ({text})")
        return values[0] if len(values) == 1 else (values or None)

    def new_stream(self):
        stream = self._call("cudaStreamCreateWithFlags", self.rt.cudaStreamNonBlocking)
        self.streams.append(stream)
        return stream

    def malloc(self, nbytes: int) -> int:
        return int(self._call("cudaMalloc", max(int(nbytes), 1)))

    def free(self, pointer: int) -> None:
        self._call("cudaFree", pointer)

    def upload(self, pointer: int, array: np.ndarray, stream) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call("cudaMemcpyAsync", pointer, array.ctypes.data, array.nbytes, kind, stream)

    def download(self, array: np.ndarray, pointer: int, stream) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call("cudaMemcpyAsync", array.ctypes.data, pointer, array.nbytes, kind, stream)

    def zero(self, pointer: int, nbytes: int, stream) -> None:
        self._call("cudaMemsetAsync", pointer, 0, nbytes, stream)

    def synchronize(self, stream) -> None:
        self._call("cudaStreamSynchronize", stream)

    def capture(self, enqueue, stream) -> object:
        """Record what ``enqueue()`` puts on ``stream`` into an instantiated CUDA graph (nothing runs)."""
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._call("cudaStreamBeginCapture", stream, mode)
        try:
            enqueue()
        finally:
            graph = self._call("cudaStreamEndCapture", stream)
        try:
            return self._call("cudaGraphInstantiate", graph, 0)  # the executable does not need the graph
        finally:
            self._call("cudaGraphDestroy", graph)

    def launch(self, executable, stream) -> None:
        self._call("cudaGraphLaunch", executable, stream)

    def destroy(self, executable) -> None:
        self._call("cudaGraphExecDestroy", executable)

    def close(self) -> None:
        for stream in self.streams:
            self._call("cudaStreamDestroy", stream)
        self.streams = []
