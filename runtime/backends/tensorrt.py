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

import json
from pathlib import Path

import numpy as np

from latentcache.arrays import HOST_DTYPES, from_host, to_host
from latentcache.contract import manifest as contract
from latentcache.contract.dtypes import ONNX_ELEMENT_TYPES
from latentcache.contract.files import sha256_of, write_atomically
from latentcache.contract.manifest import GRAPHS, GraphSpec, Manifest, TensorSpec
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
    """One graph on one engine's optimization profile: staging buffers for the non-cache I/O (allocated once at
    the profile's max shapes), its execution context(s) bound once, and ``run``.

    ``name`` is the graph it runs; ``engine_graph`` the graph the engine was built from, whose tensors it binds,
    at profile ``profile``. Decode runs on the prefill engine's second profile by default (``engine_plan``): the
    prefill inputs decode has no use for (the embedding rows that absorb latents) are zeroed once and left bound.

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

    def __init__(self, name: str, engine_graph: str, engine, profile: int, trt, flavour: str, cuda,
                 cache: DeviceCache, manifest: Manifest, runtime_cache=None, bound: dict | None = None) -> None:
        """``bound``: the weight inputs of a ``--share-weights`` engine, ``name -> (pointer, dtype, dims)``
        (``BoundWeights``), set once on every context."""
        self.name, self.engine, self.profile, self.trt, self.flavour = name, engine, profile, trt, flavour
        self.cuda, self.cache, self.runtime_cache = cuda, cache, runtime_cache
        self.spec = spec = manifest.graphs[engine_graph]
        self.stream = cuda.new_stream()
        bound = bound or {}
        check_engine_io(engine, spec, trt, engine_graph, {n: dtype for n, (_, dtype, _) in bound.items()})
        self.inplace = engine_updates_in_place(engine, spec)
        self.graphed = name == "decode"
        self.profiles = profile_shapes(manifest, engine_graph, name)
        plain = [s for s in spec.inputs if s.layer is None]
        wanted = {s.role for s in manifest.graphs[name].inputs if s.layer is None}
        if not wanted <= {s.role for s in plain}:
            raise EngineMismatch(f"the {engine_graph} engine cannot run {name}: it lacks the inputs "
                                 f"{sorted(wanted - {s.role for s in plain})}: rebuild with `latentcache build "
                                 "--separate-decode`")
        self.feeds = {s.role: s for s in plain if s.role in wanted}
        self.idle = [s for s in plain if s.role not in wanted]
        if any(not self.profiles[s.name].static for s in self.idle):
            raise EngineMismatch(f"{name} on the {engine_graph} engine leaves inputs unset whose shapes vary: "
                                 "rebuild with `latentcache build --separate-decode`")
        self.results = {s.role: s for s in spec.outputs if s.layer is None}
        capacity = {**{n: r.max for n, r in self.profiles.items()},
                    **max_output_shapes(manifest, engine_graph, name)}
        self.buffers = {s.name: cuda.malloc(nbytes(capacity[s.name], s.dtype)) for s in (*plain, *self.results.values())}
        for s in self.idle:  # zeros: every row is a token's own embedding, none a latent
            cuda.zero(self.buffers[s.name], nbytes(capacity[s.name], s.dtype), self.stream)
        self.cache_names = cache_bindings(spec)
        # One context per cache slot it reads when CUDA-graphed (addresses fixed per context), else one.
        slots = cache.slots if (self.graphed and not self.inplace and spec.cache_pairs(past=True)) else 1
        self.contexts = [self._context() for _ in range(slots)]
        self.bound_slot = [None] * slots
        self.executables: dict[int, object] = {}
        for context in self.contexts:
            for tensor_name, pointer in self.buffers.items():
                context.set_tensor_address(tensor_name, pointer)
            for tensor_name, (pointer, _, _) in bound.items():  # read-only, so one copy serves every context
                context.set_tensor_address(tensor_name, pointer)
            if self.graphed:  # static shapes: set once (the engine's -1 dims have min == max)
                for spec_ in plain:
                    context.set_input_shape(spec_.name, self.profiles[spec_.name].max)
        cuda.synchronize(self.stream)  # the zeros and profile switches are in place before any run

    def _context(self):
        trt = self.trt
        # A context holds scratch memory for the largest of the engine's profiles unless told to size it for the
        # profile it selects: a decode context on the prefill engine would otherwise hold a whole prompt's.
        strategy = getattr(getattr(trt, "ExecutionContextAllocationStrategy", None), "ON_PROFILE_CHANGE", None) \
            if self.profile else None
        if self.flavour == "tensorrt_rtx" and hasattr(self.engine, "create_runtime_config"):
            config = self.engine.create_runtime_config()
            if self.runtime_cache is not None:
                config.set_runtime_cache(self.runtime_cache)
            if self.graphed and hasattr(trt, "CudaGraphStrategy"):
                config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
            if strategy is not None:
                config.set_execution_context_allocation_strategy(strategy)
            context = self.engine.create_execution_context(config)
        elif strategy is not None:
            context = self.engine.create_execution_context(strategy)
        else:
            context = self.engine.create_execution_context()
        if context is None:
            raise TensorRTError(f"{self.name}: could not create an execution context (out of GPU memory?)")
        # Before any input shape is set (IExecutionContext::setOptimizationProfileAsync); a new context is on 0.
        if self.profile and not context.set_optimization_profile_async(self.profile, int(self.stream)):
            raise TensorRTError(f"{self.name}: the engine has no optimization profile {self.profile}: rebuild with "
                                "`latentcache build`")
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


def nbytes(shape: tuple[int, ...], dtype: str) -> int:
    return int(np.prod(shape)) * np.dtype(HOST_DTYPES[dtype]).itemsize


def engine_tensors(engine, trt) -> dict[str, tuple[str, str, tuple[int, ...]]]:
    """``name -> ("input"|"output", dtype, shape)`` for every I/O tensor of ``engine``."""
    tensors = {}
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        mode = "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output"
        dtype = DTYPE_NAMES.get(engine.get_tensor_dtype(name).name, str(engine.get_tensor_dtype(name)))
        tensors[name] = (mode, dtype, tuple(engine.get_tensor_shape(name)))
    return tensors


def check_engine_io(engine, spec: GraphSpec, trt, graph: str, bound: dict[str, str] | None = None) -> None:
    """The engine's I/O must be the manifest's (names, direction, dtype, rank), plus the weight inputs its metadata
    names (``bound``: name -> dtype); fail closed otherwise."""
    actual = engine_tensors(engine, trt)
    expected = {s.name: ("input", s.dtype, len(s.shape)) for s in spec.inputs}
    expected.update({s.name: ("output", s.dtype, len(s.shape)) for s in spec.outputs})
    got = {name: (mode, dtype, len(shape)) for name, (mode, dtype, shape) in actual.items() if name not in (bound or {})}
    got.update({name: (mode, dtype) for name, (mode, dtype, _) in actual.items() if name in (bound or {})})
    expected.update({name: ("input", dtype) for name, dtype in (bound or {}).items()})
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


class BoundWeights:
    """The weight matrices that ``latentcache build --share-weights`` engines take as inputs: one device copy of each
    distinct tensor of ``weights.bin`` (identical bytes are stored once, at one offset), uploaded once and bound to
    every context of every engine that reads it, so prefill, decode and an unmerged-LoRA coprocessor hold the base
    once. Engines built without ``--share-weights`` bind nothing and hold their own weights."""

    def __init__(self, cuda, artifacts: Path, manifest: Manifest) -> None:
        self.cuda, self.artifacts, self.manifest = cuda, artifacts, manifest
        self.pointers: dict[int, int] = {}  # offset in weights.bin -> device pointer
        self.nbytes = 0
        self.index = self.mapped = None

    def bind(self, graph: str, names: tuple[str, ...]) -> dict[str, tuple[int, str, tuple[int, ...]]]:
        """``name -> (pointer, dtype, dims)`` for the weight inputs ``names`` of ``graph``'s engine."""
        if not names:
            return {}
        if self.index is None:
            if not self.manifest.weight_index:
                raise EngineMismatch(f"{self.artifacts}: the engines take weights as inputs but the artifacts have no "
                                     "weights.json: re-export, then rebuild with `latentcache build`")
            self.index = json.loads((self.artifacts / self.manifest.weight_index).read_text())
            self.mapped = np.memmap(self.artifacts / self.index["file"], dtype=np.uint8, mode="r")
            self.stream = self.cuda.new_stream()
        entries = {e["name"]: e for e in self.index["graphs"].get(graph, [])}
        unknown = [name for name in names if name not in entries]
        if unknown:
            raise EngineMismatch(f"the {graph} engine takes weights that weights.json does not list ({unknown[:2]}): "
                                 "rebuild with `latentcache build`")
        bound = {}
        for name in names:
            entry = entries[name]
            if entry["offset"] not in self.pointers:
                raw = np.ascontiguousarray(self.mapped[entry["offset"]: entry["offset"] + entry["length"]])
                pointer = self.cuda.malloc(raw.nbytes)
                self.cuda.upload(pointer, raw, self.stream)
                self.cuda.synchronize(self.stream)  # before ``raw`` goes
                self.pointers[entry["offset"]], self.nbytes = pointer, self.nbytes + raw.nbytes
            bound[name] = (self.pointers[entry["offset"]], ONNX_ELEMENT_TYPES[entry["data_type"]], tuple(entry["dims"]))
        return bound

    def describe(self) -> str:
        return f"{len(self.pointers)} weight tensors ({self.nbytes / 2**20:.1f} MiB) on the GPU once for every engine"

    def close(self) -> None:
        for pointer in self.pointers.values():
            self.cuda.free(pointer)
        self.pointers, self.mapped = {}, None


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
        self.engines, self.runtime_caches, self.bound = {}, {}, {}
        self.weights = BoundWeights(self.cuda, self.artifacts, manifest)
        self.serving: dict[str, tuple[str, int]] = {}  # graph -> (the engine's graph, its profile index)
        for graph in [g for g in GRAPHS if g in manifest.graphs]:
            if graph in self.serving:  # decode, on the prefill engine's second profile
                continue
            self.engines[graph], meta = self._load_engine(graph, manifest_sha)
            self.bound[graph] = self.weights.bind(graph, meta.bound_weights)
            for index, served in enumerate(meta.serves):
                self.serving.setdefault(served, (graph, index))
        slots = 1 if all(engine_updates_in_place(e, manifest.graphs[g]) for g, e in self.engines.items()) else 2
        self.cache = DeviceCache(self.cuda, manifest.kv, slots)
        self.runners = {
            graph: GraphRunner(graph, built_from, self.engines[built_from], index, self.trt, self.flavour, self.cuda,
                               self.cache, manifest, self.runtime_caches.get(built_from), self.bound[built_from])
            for graph, (built_from, index) in self.serving.items()
        }

    def _load_engine(self, graph: str, manifest_sha: str):
        """``(engine, metadata)`` of ``graph``'s engine, refused unless built for these artifacts and this GPU."""
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
                       manifest_sha256=manifest_sha, compute_capability=self.cuda.compute_capability,
                       graphs=tuple(self.manifest.graphs))
        data = path.read_bytes()
        if len(data) != meta.engine_bytes:
            raise EngineMismatch(f"{path} has {len(data)} bytes, its metadata says {meta.engine_bytes}: rebuild "
                                 f"with `latentcache build {self.artifacts} --backend {self.flavour}`")
        if rtx and hasattr(self.runtime, "get_engine_validity"):
            self._check_validity(path, data)
        engine = self.runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise TensorRTError(f"{path}: {self.flavour} could not deserialize it ({self.logger.last()})")
        if engine.num_optimization_profiles != len(meta.serves):
            raise EngineMismatch(f"{path} has {engine.num_optimization_profiles} optimization profiles, its metadata "
                                 f"{len(meta.serves)}: rebuild with `latentcache build {self.artifacts} --backend "
                                 f"{self.flavour}`")
        if rtx:
            self.runtime_caches[graph] = self._runtime_cache(engine, graph)
        return engine, meta

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
        self.weights.close()
        self.cache.close()
        self.runners, self.engines = {}, {}
        self.cuda.close()

    def describe(self) -> str:
        notes = ["in-place kv-cache" if self.cache.slots == 1 else "ping-pong kv-cache"]
        notes += [f"{graph} on the {built_from} engine"
                  for graph, (built_from, _) in self.serving.items() if built_from != graph]
        notes += [self.weights.describe()] if self.weights.pointers else []
        return f"{self.flavour} {self.trt.__version__} on compute capability {self.cuda.compute_capability} " \
               f"({'; '.join(notes)})"
