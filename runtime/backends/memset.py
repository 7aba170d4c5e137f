"""Zeroing an OrtValue where it lies: a memset of its memory, not a copy of host zeros into it.

A cache reset used to copy a host array of zeros into every cache tensor. On CUDA that is the whole cache through a
pageable host-to-device copy on every request, inside the time to first token: 53 MB for SmolLM2-135M in fp16 at
2,304 slots, several milliseconds at pageable-copy speeds, where a device memset of the same bytes takes
microseconds. On the CPU a memset writes the bytes once instead of reading a second buffer as well.

- CPU: ``ctypes.memset`` over the OrtValue's buffer.
- CUDA: ``cudaMemsetAsync`` on the legacy default stream, then a synchronize of that stream, from the CUDA runtime
  that ONNX Runtime's CUDA provider has already loaded into the process (found in ``/proc/self/maps``: no package
  beyond onnxruntime-gpu). ONNX Runtime's ``Run`` synchronizes its own stream before it returns, so nothing of
  it is still reading the cache when the memset runs.
Where no CUDA runtime is loaded (not Linux, or a provider linked statically), ``device_memset`` returns None and the
backend copies host zeros as before, and its ``describe()`` says so.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

from latentcache.errors import LatentcacheError

CUDART_STEM = "libcudart"


class HostMemset:
    """``zero(pointer, nbytes)`` on host memory; ``finish()`` has nothing to wait for."""

    where = "host memset"

    def zero(self, pointer: int, nbytes: int) -> None:
        ctypes.memset(pointer, 0, nbytes)

    def finish(self) -> None:
        pass


class CudaMemset:
    """``zero(pointer, nbytes)`` on device memory through ``cudart`` (a loaded ``ctypes.CDLL``); ``finish()`` waits."""

    where = "device memset"

    def __init__(self, cudart) -> None:
        self.memset, self.sync = cudart.cudaMemsetAsync, cudart.cudaStreamSynchronize
        self.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t, ctypes.c_void_p]
        self.sync.argtypes = [ctypes.c_void_p]
        self.memset.restype = self.sync.restype = ctypes.c_int

    def zero(self, pointer: int, nbytes: int) -> None:
        self._check("cudaMemsetAsync", self.memset(pointer, 0, nbytes, None))

    def finish(self) -> None:
        self._check("cudaStreamSynchronize", self.sync(None))

    @staticmethod
    def _check(call: str, code: int) -> None:
        if code != 0:
            raise LatentcacheError(f"CUDA {call} failed with error {code} while resetting the kv-cache")


def device_memset(device: str, maps: str | None = None):
    """The memset for OrtValues on ``device`` ("cpu" or "cuda"), or None where none can be had (see the module)."""
    if device == "cpu":
        return HostMemset()
    path = loaded_library(CUDART_STEM, maps)
    if path is None:
        return None
    try:
        return CudaMemset(ctypes.CDLL(path))
    except (OSError, AttributeError):  # not loadable after all, or a library without the runtime API
        return None


def loaded_library(stem: str, maps: str | None = None) -> str | None:
    """The path of a shared library ``stem.so*`` mapped into this process (``/proc/self/maps``, or ``maps``)."""
    if maps is None:
        try:
            maps = Path("/proc/self/maps").read_text()
        except OSError:  # not Linux
            return None
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and Path(fields[5]).name.startswith(f"{stem}.so"):
            return fields[5]
    return None
