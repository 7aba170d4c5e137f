"""The TensorRT / TensorRT-RTX runtime backend: one ``GraphRunner`` per engine, the engines' I/O checked against
the manifest, and ``TensorRTBackend``.

Both flavours share one Python API, so one code path serves both; the module shim, engine metadata and
optimization profiles it shares with the builder (``latentcache.export.tensorrt_build``) live in
``latentcache.tensorrt_support``, the CUDA calls and the device kv-cache in
``latentcache.runtime.backends.cuda``. Loading refuses engines built for other artifacts, another TensorRT or
another GPU, with a message naming the fix: rebuild with ``latentcache build``.

The backend needs a GPU, the TensorRT flavour and CUDA's Python bindings (``pip install cuda-python``);
everything is imported lazily, and nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from latentcache.arrays import HOST_DTYPES, from_host, to_host
from latentcache.contract import manifest as contract
from latentcache.contract.files import sha256_of, write_atomically
from latentcache.contract.manifest import GraphSpec, Manifest, TensorSpec
from latentcache.cuda import CudaRuntime
from latentcache.errors import BackendUnavailable, LatentcacheError
from latentcache.runtime.backend import Backend
from latentcache.runtime.backends.cuda import DeviceCache
from latentcache.tensorrt_support import (
    DTYPE_NAMES,
    FLAVOURS,
    EngineMetadata,
    EngineMismatch,
    TensorRTError,
    check_metadata,
    compute_capability_ok,
    engine_dir,
    engine_path,
    load_tensorrt,
    make_logger,
    max_output_shapes,
    metadata_path,
    profile_shapes,
)

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
        manifest.require_consumer("tensorrt", BackendUnavailable)
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
