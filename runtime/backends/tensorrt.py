"""TensorRT and TensorRT-RTX: the module shim, engine metadata, optimization profiles, and the runtime backend.

Both flavours share one Python API (``import tensorrt`` for TensorRT 10.x/11.x, ``import tensorrt_rtx`` for
TensorRT for RTX), so one code path serves both; ``load_tensorrt`` picks the module. The builder
(``latentcache.export.tensorrt_build``) imports the shim, the profile rule and the metadata schema from here,
so the builder and the runtime cannot disagree about them.

Engines live in ``ARTIFACTS/engines/<flavour>/<graph>.engine``, each with ``<graph>.json`` beside it
(``EngineMetadata``). TensorRT engines are tied to the TensorRT version and to the GPU's compute capability;
TensorRT-RTX builds ahead of time on the CPU for a set of compute capabilities. The backend refuses any
mismatch with a message naming the fix: rebuild with ``latentcache build``.

The backend needs a GPU, the TensorRT flavour and CUDA's Python bindings (``pip install cuda-python``);
everything is imported lazily, and nothing here imports torch.
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from latentcache.errors import LatentcacheError
from latentcache.runtime import manifest as contract
from latentcache.runtime.backend import Backend, BackendUnavailable
from latentcache.runtime.manifest import GraphSpec, Manifest, ManifestError, TensorSpec

FLAVOURS = ("tensorrt", "tensorrt_rtx")
INSTALL = {
    "tensorrt": "pip install tensorrt (NVIDIA GPU needed to build; on Jetson it comes with JetPack)",
    "tensorrt_rtx": "pip install tensorrt-rtx-cu13 (TensorRT for RTX; builds on the CPU)",
}
ENGINES_DIR = "engines"
ENGINE_FORMAT = 1
AHEAD_OF_TIME = "ahead-of-time/CPU"
# TensorRT-RTX engines built without setComputeCapability run on "compute capability 8.0, 8.6, 8.9, 12.0,
# and later" (docs.nvidia.com/deeplearning/tensorrt-rtx/latest/inference-library/cpu-engines.html; the
# 1.x support matrices list 8.6/8.9/12.0 as the portable default). Hopper (9.0) and Thor (10.x/11.0) are not
# among them: the RTX runtime refuses those GPUs.
RTX_DEFAULT_TARGETS = ("8.0", "8.6", "8.9", "12.0+")
DTYPE_NAMES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT64": "int64", "INT32": "int32",
               "BOOL": "bool"}
HOST_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16, "int64": np.int64,
               "int32": np.int32, "bool": np.bool_}  # bfloat16 travels as its raw 16 bits


class TensorRTError(LatentcacheError):
    """An engine could not be loaded or run (device, driver or engine problem), explained in one line."""


class EngineMismatch(TensorRTError):
    """The engines on disk were built for other artifacts, another TensorRT or another GPU."""


# --- the module shim ------------------------------------------------------------------------------------


def load_tensorrt(flavour: str = "auto"):
    """``(module, flavour)``: ``tensorrt`` or ``tensorrt_rtx``; ``auto`` prefers TensorRT, then TensorRT-RTX."""
    if flavour not in ("auto", *FLAVOURS):
        raise LatentcacheError(f"backend must be one of auto, {', '.join(FLAVOURS)}; got '{flavour}'")
    candidates = FLAVOURS if flavour == "auto" else (flavour,)
    for name in candidates:
        try:
            return importlib.import_module(name), name
        except (ImportError, OSError):  # OSError: the wheel is there but its shared libraries are not
            continue
    if flavour == "auto":
        raise BackendUnavailable(f"neither TensorRT nor TensorRT-RTX is installed: {INSTALL['tensorrt_rtx']}, "
                                 f"or {INSTALL['tensorrt']}")
    raise BackendUnavailable(f"{flavour} is not installed: {INSTALL[flavour]}")


def network_flags(trt) -> int:
    """A strongly typed network: precision comes from the ONNX dtypes, never from builder flags.

    ``1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)`` is the documented spelling for TensorRT 10.x
    and TensorRT-RTX (Python API, Builder page); TensorRT 11 keeps the flag but ignores it ("strongly typed
    mode is always enabled", 11.0 Builder page), so it is set whenever it exists.
    """
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def make_logger(trt):
    """A ``trt.ILogger`` that keeps errors (for one-line exceptions) and drops the rest."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg) -> None:
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(" ".join(str(msg).split()))

        def last(self, count: int = 3) -> str:
            return " | ".join(self.errors[-count:]) or "no error was logged"

    return Logger()


# --- engine locations and metadata ----------------------------------------------------------------------


def engine_dir(artifacts: Path, flavour: str) -> Path:
    return Path(artifacts) / ENGINES_DIR / flavour


def engine_path(artifacts: Path, flavour: str, graph: str) -> Path:
    return engine_dir(artifacts, flavour) / f"{graph}.engine"


def metadata_path(artifacts: Path, flavour: str, graph: str) -> Path:
    return engine_dir(artifacts, flavour) / f"{graph}.json"


@dataclass(frozen=True)
class EngineMetadata:
    """What an engine was built from and for; written beside each engine, checked before deserializing it."""

    graph: str
    flavour: str  # "tensorrt" | "tensorrt_rtx"
    version: str  # the library's __version__, e.g. "10.13.3.9" or "1.7.1.116"
    compute_capability: str  # the build GPU's "major.minor"; AHEAD_OF_TIME for TensorRT-RTX
    targets: tuple[str, ...]  # compute capabilities the engine runs on ("12.0+" = 12.0 and later)
    manifest_sha256: str
    graph_file: str
    graph_sha256: str
    profiles: dict  # input name -> {"min": [...], "opt": [...], "max": [...]}
    engine_bytes: int
    engine_sha256: str
    build_seconds: float
    workspace_bytes: int | None = None
    built_at: str = ""
    tool_versions: dict = field(default_factory=dict)
    format: int = ENGINE_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @staticmethod
    def read(path: Path) -> "EngineMetadata":
        try:
            data = json.loads(Path(path).read_text())
            if data.get("format") != ENGINE_FORMAT:
                raise EngineMismatch(f"{path}: engine metadata format {data.get('format')} is not "
                                     f"{ENGINE_FORMAT}: rebuild with `latentcache build`")
            data["targets"] = tuple(data["targets"])
            return EngineMetadata(**data)
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise EngineMismatch(f"{path}: unreadable engine metadata ({exc}): rebuild with `latentcache build`") \
                from None


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def compute_capability_ok(capability: str, targets: tuple[str, ...]) -> bool:
    """Whether a device of ``capability`` ("8.6") is among ``targets`` (``"12.0+"`` means 12.0 and later)."""
    def parse(text: str) -> tuple[int, int]:
        major, minor = text.rstrip("+").split(".")
        return int(major), int(minor)

    device = parse(capability)
    return any(device >= parse(t) if t.endswith("+") else device == parse(t) for t in targets)


def metadata_problems(meta: EngineMetadata, *, graph: str, flavour: str, version: str, manifest_sha256: str,
                      compute_capability: str | None) -> list[str]:
    """Every reason the engine described by ``meta`` must not be loaded here (empty when it may)."""
    problems = []
    if meta.graph != graph:
        problems.append(f"it holds graph '{meta.graph}', not '{graph}'")
    if meta.flavour != flavour:
        problems.append(f"it was built with {meta.flavour}, not {flavour}")
    if meta.version != version:
        problems.append(f"it was built with {meta.flavour} {meta.version}, this is {version}")
    if meta.manifest_sha256 != manifest_sha256:
        problems.append("it was built from other artifacts (manifest.json changed since)")
    if compute_capability is not None and not compute_capability_ok(compute_capability, meta.targets):
        problems.append(f"it targets compute capability {', '.join(meta.targets)}, this GPU is {compute_capability}")
    return problems


def check_metadata(meta: EngineMetadata, where: Path, artifacts: Path, **expected) -> None:
    """Raise ``EngineMismatch`` (one line, naming the fix) unless the engine matches ``expected``."""
    problems = metadata_problems(meta, **expected)
    if problems:
        raise EngineMismatch(f"{where}: {'; '.join(problems)}: rebuild with "
                             f"`latentcache build {artifacts} --backend {expected['flavour']}`")


# --- optimization profiles ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileRange:
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    @property
    def static(self) -> bool:
        return self.min == self.max

    def to_dict(self) -> dict:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def named_sizes(manifest: Manifest) -> dict[str, int]:
    """The fixed named dimensions of the contract."""
    kv = manifest.kv
    return {"batch": kv.batch, "kv_heads": kv.num_kv_heads, "max_seq": kv.max_seq, "head_dim": kv.head_dim,
            "hidden": manifest.hidden_size, "vocab": manifest.vocab_size}


def dynamic_ranges(manifest: Manifest, graph: str) -> dict[str, tuple[int, int, int]]:
    """``(min, opt, max)`` of the dynamic named dims per graph.

    prefill: ``query`` and ``attend`` in [1, max_seq], opt max_seq/2 (TensorRT-Edge-LLM's context profile).
    decode: every shape static and ``attend = max_seq`` (the runtime pads ``attention_mask`` with zeros), so
    the decode step can be CUDA-graphed. coprocessor: ``attend`` in [1, max_seq].
    """
    top = manifest.kv.max_seq
    half = max(1, top // 2)
    if graph == "decode":
        return {"query": (1, 1, 1), "attend": (top, top, top)}
    return {"query": (1, half, top), "attend": (1, half, top)}


def resolve_shape(spec: TensorSpec, sizes: dict[str, int], ranges: dict[str, tuple[int, int, int]], pick: int):
    """``spec.shape`` with named dims replaced (``pick`` 0/1/2 = min/opt/max for the dynamic ones)."""
    shape = []
    for dim in spec.shape:
        if isinstance(dim, int):
            shape.append(dim)
        elif dim in ranges:
            shape.append(ranges[dim][pick])
        elif dim in sizes:
            shape.append(sizes[dim])
        else:
            raise ManifestError(f"tensor {spec.name}: unknown named dimension '{dim}' (known: "
                                f"{', '.join([*sizes, *ranges])})")
    return tuple(shape)


def profile_shapes(manifest: Manifest, graph: str) -> dict[str, ProfileRange]:
    """Every input of ``graph``: its min/opt/max shape (static inputs have min == opt == max)."""
    sizes, ranges = named_sizes(manifest), dynamic_ranges(manifest, graph)
    return {
        spec.name: ProfileRange(*(resolve_shape(spec, sizes, ranges, pick) for pick in range(3)))
        for spec in manifest.graphs[graph].inputs
    }


def max_output_shapes(manifest: Manifest, graph: str) -> dict[str, tuple[int, ...]]:
    sizes, ranges = named_sizes(manifest), dynamic_ranges(manifest, graph)
    return {spec.name: resolve_shape(spec, sizes, ranges, 2) for spec in manifest.graphs[graph].outputs}


# --- host <-> device dtypes -----------------------------------------------------------------------------


def to_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def from_bfloat16_bits(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def to_host(values, dtype: str) -> np.ndarray:
    """A C-contiguous host array in the engine's representation of ``dtype``."""
    if dtype == "bfloat16":
        return to_bfloat16_bits(np.asarray(values, dtype=np.float32))
    return np.ascontiguousarray(values, dtype=HOST_DTYPES[dtype])


def from_host(values: np.ndarray, dtype: str) -> np.ndarray:
    return from_bfloat16_bits(values) if dtype == "bfloat16" else values


# --- CUDA (cuda-python) ---------------------------------------------------------------------------------


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


# --- the device kv-cache --------------------------------------------------------------------------------


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


# --- one graph ------------------------------------------------------------------------------------------


class GraphRunner:
    """One engine: staging buffers for the non-cache I/O (allocated once at the profile's max shapes), its
    execution context(s) bound once, and ``run``.

    Decode has static shapes and is CUDA-graphed: TensorRT-RTX through its built-in capture
    (``IRuntimeConfig.cuda_graph_strategy = WHOLE_GRAPH_CAPTURE``, RTX >= 1.2 "Working with RTX CUDA
    Graphs"); TensorRT by capturing ``execute_async_v3`` on our stream after one eager warm-up run (as
    TensorRT-Edge-LLM's ``captureVanillaDecodingCudaGraph`` does). A captured graph bakes in the tensor
    addresses, so a ping-pong cache gets one decode context (and graph) per slot, each bound once.

    Each graph has its own stream: the coprocessor may run on another thread beside decoding (the async
    policy; it reads prompt slots, decoding writes later ones), and a decode capture records decode's work
    only. ``run`` synchronizes its stream before returning, which orders one graph's cache writes before the
    next graph's reads.
    """

    def __init__(self, name: str, spec: GraphSpec, engine, trt, flavour: str, cuda, cache: DeviceCache,
                 manifest: Manifest, runtime_cache=None) -> None:
        self.name, self.spec, self.engine, self.trt, self.flavour = name, spec, engine, trt, flavour
        self.cuda, self.cache, self.runtime_cache = cuda, cache, runtime_cache
        self.stream = cuda.new_stream()
        check_engine_io(engine, spec, trt, name)
        self.inplace = engine_updates_in_place(engine, spec)
        self.graphed = name == "decode"
        self.profiles = profile_shapes(manifest, name)
        self.feeds = {s.role: s for s in spec.inputs if s.layer is None}
        self.results = {s.role: s for s in spec.outputs if s.layer is None}
        capacity = {**{n: r.max for n, r in self.profiles.items()}, **max_output_shapes(manifest, name)}
        self.buffers = {s.name: cuda.malloc(int(np.prod(capacity[s.name])) * np.dtype(HOST_DTYPES[s.dtype]).itemsize)
                        for s in (*self.feeds.values(), *self.results.values())}
        self.cache_names = cache_bindings(spec)
        # One context per cache slot it reads when CUDA-graphed (addresses fixed per context), else one.
        slots = cache.slots if (self.graphed and not self.inplace and spec.cache_pairs(past=True)) else 1
        self.contexts = [self._context() for _ in range(slots)]
        self.bound_slot = [None] * slots
        self.executables: dict[int, object] = {}
        for context in self.contexts:
            for tensor_name, pointer in self.buffers.items():
                context.set_tensor_address(tensor_name, pointer)
            if self.graphed:  # static shapes: set once (the engine's -1 dims have min == max)
                for spec_ in self.feeds.values():
                    context.set_input_shape(spec_.name, self.profiles[spec_.name].max)

    def _context(self):
        trt = self.trt
        if self.flavour == "tensorrt_rtx" and hasattr(self.engine, "create_runtime_config"):
            config = self.engine.create_runtime_config()
            if self.runtime_cache is not None:
                config.set_runtime_cache(self.runtime_cache)
            if self.graphed and hasattr(trt, "CudaGraphStrategy"):
                config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
            context = self.engine.create_execution_context(config)
        else:
            context = self.engine.create_execution_context()
        if context is None:
            raise TensorRTError(f"{self.name}: could not create an execution context (out of GPU memory?)")
        return context

    def _bind_cache(self, index: int, slot: int) -> None:
        """Bind past to cache slot ``slot`` and present to the slot written (the same one when in place)."""
        if self.bound_slot[index] == slot:
            return
        context, written = self.contexts[index], slot if self.inplace else 1 - slot
        for layer, names in self.cache_names:
            for name, pointer in zip(names, (*self.cache.layer(layer, slot), *self.cache.layer(layer, written))):
                if name is not None:
                    context.set_tensor_address(name, pointer)
        self.bound_slot[index] = slot

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing, unknown = sorted(set(self.feeds) - set(feeds)), sorted(set(feeds) - set(self.feeds))
        if missing or unknown:
            raise LatentcacheError(f"{self.name}: inputs missing {missing}, unexpected {unknown}")
        slot = self.cache.current
        index = slot if len(self.contexts) > 1 else 0
        context = self.contexts[index]
        hold = []  # host arrays must live until the stream is synchronized
        for role, spec in self.feeds.items():
            array = self._prepare(role, spec, feeds[role])
            if not self.graphed:
                context.set_input_shape(spec.name, array.shape)
            self.cuda.upload(self.buffers[spec.name], array, self.stream)
            hold.append(array)
        self._bind_cache(index, slot)
        self._execute(context, index)
        outputs = {}
        for role, spec in self.results.items():
            host = np.empty(tuple(context.get_tensor_shape(spec.name)), dtype=HOST_DTYPES[spec.dtype])
            self.cuda.download(host, self.buffers[spec.name], self.stream)
            outputs[role] = host
        self.cuda.synchronize(self.stream)
        if self.spec.cache_pairs(past=False) and not self.inplace:
            self.cache.flip()
        return {role: from_host(array, self.results[role].dtype) for role, array in outputs.items()}

    def _prepare(self, role: str, spec: TensorSpec, values) -> np.ndarray:
        array = to_host(values, spec.dtype)
        bounds = self.profiles[spec.name]
        if role == contract.ATTENTION_MASK and bounds.static and array.ndim == 2 and array.shape[1] < bounds.max[1]:
            padded = np.zeros(bounds.max, dtype=array.dtype)  # decode attends over the whole capacity
            padded[:, : array.shape[1]] = array
            array = padded
        if array.ndim != len(bounds.min) or any(
            not lo <= size <= hi for size, lo, hi in zip(array.shape, bounds.min, bounds.max)
        ):
            raise LatentcacheError(f"{self.name}: input {role} has shape {array.shape}, the engine takes "
                                   f"{bounds.min} to {bounds.max}")
        return array

    def _execute(self, context, index: int) -> None:
        if index in self.executables:
            self.cuda.launch(self.executables[index], self.stream)
            return
        self._enqueue(context)
        if self.graphed and self.flavour == "tensorrt" and self._capturable(context):
            # The eager run above was the warm-up (and gave this step's result): TensorRT applies deferred
            # shape/address updates on the first enqueue, which must not happen inside a capture.
            self.cuda.synchronize(self.stream)
            self.executables[index] = self.cuda.capture(lambda: self._enqueue(context), self.stream)

    def _enqueue(self, context) -> None:
        if not context.execute_async_v3(int(self.stream)):
            raise TensorRTError(f"{self.name}: TensorRT failed to enqueue the engine")

    def _capturable(self, context) -> bool:
        check = getattr(context, "is_stream_capturable", None)  # TensorRT >= 10.x / RTX >= 1.2
        return True if check is None else bool(check(int(self.stream)))

    def close(self) -> None:
        for executable in self.executables.values():
            self.cuda.destroy(executable)
        self.executables = {}
        for pointer in self.buffers.values():
            self.cuda.free(pointer)
        self.buffers, self.contexts = {}, []


def engine_tensors(engine, trt) -> dict[str, tuple[str, str, tuple[int, ...]]]:
    """``name -> ("input"|"output", dtype, shape)`` for every I/O tensor of ``engine``."""
    tensors = {}
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        mode = "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output"
        dtype = DTYPE_NAMES.get(engine.get_tensor_dtype(name).name, str(engine.get_tensor_dtype(name)))
        tensors[name] = (mode, dtype, tuple(engine.get_tensor_shape(name)))
    return tensors


def check_engine_io(engine, spec: GraphSpec, trt, graph: str) -> None:
    """The engine's I/O must be the manifest's (names, direction, dtype, rank); fail closed otherwise."""
    actual = engine_tensors(engine, trt)
    expected = {s.name: ("input", s.dtype, len(s.shape)) for s in spec.inputs}
    expected.update({s.name: ("output", s.dtype, len(s.shape)) for s in spec.outputs})
    got = {name: (mode, dtype, len(shape)) for name, (mode, dtype, shape) in actual.items()}
    if got != expected:
        differ = sorted(n for n in set(got) | set(expected) if got.get(n) != expected.get(n))
        raise EngineMismatch(f"{graph} engine I/O differs from the manifest at {differ[:3]}: rebuild with "
                             "`latentcache build`")


def engine_updates_in_place(engine, spec: GraphSpec) -> bool:
    """True when every present output aliases its past input (KVCacheUpdate), or the graph writes no cache."""
    presents = spec.cache_pairs(past=False)
    if not presents:
        return True
    aliased = getattr(engine, "get_aliased_input_tensor", None)  # TensorRT >= 10.15 / 11, TensorRT-RTX
    if aliased is None:
        return False
    pairs = zip(spec.cache_pairs(past=True), presents)
    return all(aliased(present.name) == past.name
               for (past_key, past_value), (key, value) in pairs
               for past, present in ((past_key, key), (past_value, value)))


def cache_bindings(spec: GraphSpec) -> list[tuple[int, tuple[str, str, str | None, str | None]]]:
    """Per layer: the past key/value input names and the present key/value output names (None if read-only)."""
    presents = {s.layer: s for s in spec.outputs if s.role == contract.PRESENT_KEY}
    present_values = {s.layer: s for s in spec.outputs if s.role == contract.PRESENT_VALUE}
    return [
        (key.layer, (key.name, value.name, getattr(presents.get(key.layer), "name", None),
                     getattr(present_values.get(key.layer), "name", None)))
        for key, value in spec.cache_pairs(past=True)
    ]


# --- the backend ----------------------------------------------------------------------------------------


def resolve_flavour(artifacts: Path, flavour: str) -> str:
    """``auto``: the first flavour (TensorRT, then TensorRT-RTX) that has built engines and is importable."""
    if flavour != "auto":
        return flavour
    built = [f for f in FLAVOURS if engine_dir(artifacts, f).is_dir()]
    if not built:  # BackendUnavailable, so that `--backend auto` falls back to ONNX Runtime
        raise BackendUnavailable(f"{artifacts} has no TensorRT engines: run `latentcache build {artifacts}`")
    for name in built:
        try:
            load_tensorrt(name)
            return name
        except BackendUnavailable:
            continue
    load_tensorrt(built[0])  # raises BackendUnavailable naming the package
    return built[0]


class TensorRTBackend(Backend):
    """Runs the artifacts' engines with TensorRT or TensorRT-RTX on one GPU; the kv-cache lives on the GPU.

    ``TensorRTBackend(artifacts, manifest, flavour="auto", device=0)``; ``run(graph, feeds)`` as every
    ``Backend``. Loading checks each engine's metadata (flavour, version, manifest hash, compute capability)
    and the engine's I/O against the manifest before anything runs.
    """

    def __init__(self, artifacts: Path, manifest: Manifest, flavour: str = "auto", device: int = 0) -> None:
        super().__init__(artifacts, manifest)
        from latentcache.registry import sha256_of

        self.flavour = resolve_flavour(self.artifacts, flavour)
        self.trt, _ = load_tensorrt(self.flavour)
        self.name = self.flavour
        self.cuda = CudaRuntime(device)
        self.logger = make_logger(self.trt)
        self.runtime = self.trt.Runtime(self.logger)
        manifest_sha = sha256_of(self.artifacts / contract.MANIFEST_FILE)
        self.engines, self.runtime_caches = {}, {}
        for graph in manifest.graphs:
            self.engines[graph] = self._load_engine(graph, manifest_sha)
        slots = 1 if all(engine_updates_in_place(self.engines[g], manifest.graphs[g]) for g in manifest.graphs) else 2
        self.cache = DeviceCache(self.cuda, manifest.kv, slots)
        self.runners = {
            graph: GraphRunner(graph, manifest.graphs[graph], engine, self.trt, self.flavour, self.cuda, self.cache,
                               manifest, self.runtime_caches.get(graph))
            for graph, engine in self.engines.items()
        }

    def _load_engine(self, graph: str, manifest_sha: str):
        path = engine_path(self.artifacts, self.flavour, graph)
        meta_file = metadata_path(self.artifacts, self.flavour, graph)
        if not path.is_file() or not meta_file.is_file():
            raise EngineMismatch(f"{path} is missing: run `latentcache build {self.artifacts} "
                                 f"--backend {self.flavour}`")
        meta = EngineMetadata.read(meta_file)
        rtx = self.flavour == "tensorrt_rtx"
        if rtx and not compute_capability_ok(self.cuda.compute_capability, meta.targets):
            raise BackendUnavailable(f"TensorRT-RTX engines run on compute capability {', '.join(meta.targets)}, "
                                     f"this GPU is {self.cuda.compute_capability}: build with --backend tensorrt")
        check_metadata(meta, path, self.artifacts, graph=graph, flavour=self.flavour, version=self.trt.__version__,
                       manifest_sha256=manifest_sha, compute_capability=self.cuda.compute_capability)
        data = path.read_bytes()
        if len(data) != meta.engine_bytes:
            raise EngineMismatch(f"{path} has {len(data)} bytes, its metadata says {meta.engine_bytes}: rebuild "
                                 f"with `latentcache build {self.artifacts} --backend {self.flavour}`")
        if rtx and hasattr(self.runtime, "get_engine_validity"):
            self._check_validity(path, data)
        engine = self.runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise TensorRTError(f"{path}: {self.flavour} could not deserialize it ({self.logger.last()})")
        if rtx:
            self.runtime_caches[graph] = self._runtime_cache(engine, graph)
        return engine

    def _check_validity(self, path: Path, data: bytes) -> None:
        """TensorRT-RTX's own verdict on the engine for this GPU, driver and version (RTX ``getEngineValidity``)."""
        validity, diagnostics = self.runtime.get_engine_validity(data)
        if validity == self.trt.EngineValidity.INVALID:
            reasons = [name for name, flag in self.trt.EngineInvalidityDiagnostics.__members__.items()
                       if int(diagnostics) & int(flag)] or [f"diagnostics {diagnostics}"]
            raise EngineMismatch(f"{path}: TensorRT-RTX reports it invalid here ({', '.join(reasons)}): update the "
                                 f"driver or rebuild with `latentcache build {self.artifacts} --backend tensorrt_rtx`")

    def _runtime_cache(self, engine, graph: str):
        """TensorRT-RTX compiles kernels just in time; a runtime cache file keeps them across runs."""
        if not hasattr(engine, "create_runtime_config"):
            return None
        cache = engine.create_runtime_config().create_runtime_cache()
        file = engine_dir(self.artifacts, self.flavour) / f"{graph}.runtime-cache"
        if file.is_file():  # a blob from another GPU, driver or RTX version is rejected (False), cache stays empty
            cache.deserialize(file.read_bytes())
        return cache

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if graph not in self.runners:
            raise LatentcacheError(f"no '{graph}' graph in {self.artifacts} (it has {', '.join(self.runners)})")
        return self.runners[graph].run(feeds)

    def reset(self) -> None:
        self.cache.reset()
        for runner in self.runners.values():
            runner.bound_slot = [None] * len(runner.bound_slot)  # slot 0 again; graphs keyed by slot stay valid

    def read_cache(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        return self.cache.read(layer)

    def close(self) -> None:
        if not getattr(self, "runners", None):
            return
        for runner in self.runners.values():
            self.cuda.synchronize(runner.stream)
        for graph, cache in self.runtime_caches.items():
            if cache is not None:
                try:
                    write_atomically(engine_dir(self.artifacts, self.flavour) / f"{graph}.runtime-cache",
                                     memoryview(cache.serialize()))
                except OSError:  # read-only artifacts: the cache only saves compile time on the next load
                    pass
        for runner in self.runners.values():
            runner.close()
        self.cache.close()
        self.runners, self.engines = {}, {}
        self.cuda.close()

    def describe(self) -> str:
        return (f"{self.flavour} {self.trt.__version__} on compute capability {self.cuda.compute_capability} "
                f"({'in-place' if self.cache.slots == 1 else 'ping-pong'} kv-cache)")


def write_atomically(path: Path, data) -> None:
    """Write ``path`` through a temporary sibling and a rename, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
