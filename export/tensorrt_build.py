"""`latentcache build`: every ONNX graph of an artifacts directory -> a TensorRT or TensorRT-RTX engine.

One code path for both flavours (their Python APIs are the same; ``load_tensorrt`` picks the module):
parse the ONNX from its path (so the shared ``weights.bin`` resolves as external data), create a strongly
typed network (precision is the ONNX dtypes), add one optimization profile per graph the engine serves, from the
manifest's named dimensions (``latentcache.tensorrt_support.dynamic_ranges``), build, and write
``ARTIFACTS/engines/<flavour>/<graph>.engine`` atomically with ``<graph>.json`` (``EngineMetadata``) beside it.
By default the prefill engine serves decode as its second profile (``engine_plan``; ``separate_decode`` builds decode
its own engine), and with ``share_weights`` the engines take the base's matrices as inputs, so that the runtime holds
them once for every engine (TensorRT-RTX keeps a constant weight once per profile: docs/results.md).

TensorRT builds on (and for) the GPU it runs on, so its metadata records that GPU's compute capability and
the build keeps a timing cache (``engines/tensorrt/timing.cache``, reused across builds). TensorRT-RTX
builds ahead of time on the CPU, for a set of compute capabilities, and has no timing cache (its builder does
not time kernels: the 1.7 bindings warn "Deprecated in TensorRT-RTX 1.2. Timing cache operations are no-ops").
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from latentcache.contract import manifest as contract
from latentcache.contract.files import folder_lock, sha256_of, write_atomically
from latentcache.errors import BackendUnavailable, LatentcacheError
from latentcache.tensorrt_support import (
    AHEAD_OF_TIME,
    DTYPE_NAMES,
    RTX_DEFAULT_TARGETS,
    EngineMetadata,
    bound_weight_entries,
    engine_dir,
    engine_path,
    engine_plan,
    load_tensorrt,
    make_logger,
    metadata_path,
    network_flags,
    now_utc,
    profile_shapes,
)

TIMING_CACHE = "timing.cache"
# Old TensorRT cannot import the in-place cache write, nor onnx-llm's operators; the parser error names the op.
ONNX_LLM_HINT = "ONNX Attention/RotaryEmbedding need TensorRT >= 10.15: re-export with --ops standard"
OP_HINTS = {"TensorScatter": "TensorScatter needs TensorRT >= 10.15: re-export with --kv-update portable",
            "Attention": ONNX_LLM_HINT, "RotaryEmbedding": ONNX_LLM_HINT}


def build_engines(artifacts: Path, backend: str = "auto", workspace_gb: float | None = None,
                  progress: Callable[[str], None] | None = None, separate_decode: bool = False,
                  share_weights: bool = False) -> list[Path]:
    """Build the engines that serve every graph in ``artifacts/manifest.json``; returns the engine paths.

    ``backend``: ``auto`` (TensorRT if installed, else TensorRT-RTX), ``tensorrt`` or ``tensorrt_rtx``.
    ``workspace_gb`` caps the builder's workspace memory pool (default: TensorRT's, the device memory).
    ``separate_decode``: decode in an engine of its own (a second copy of the base's weights) instead of a
    second optimization profile of the prefill engine. ``share_weights``: the engines take the base's weight
    matrices as inputs (``bound_weight_entries``), which the runtime binds to one device copy of ``weights.bin``'s
    bytes for every engine and profile, instead of each engine holding its own.
    Raises ``BackendUnavailable`` when the library is missing, ``LatentcacheError`` when a graph does
    not parse or build (one line, with the parser's or builder's errors).
    """

    say = progress or (lambda message: print(message, file=sys.stderr))
    if workspace_gb is not None and workspace_gb <= 0:
        raise LatentcacheError(f"--workspace must be a positive number of GiB, got {workspace_gb}")
    trt, flavour = load_tensorrt(backend)
    artifacts = Path(artifacts)
    contract.load_manifest(artifacts).require_consumer("tensorrt")  # clear errors before taking the folder's lock
    # One writer per artifacts folder: an export replacing it meanwhile would delete these engines.
    with folder_lock(artifacts, what=" (an export or another build on these artifacts)"):
        return _build_all(trt, flavour, artifacts, workspace_gb, say, separate_decode, share_weights)


def _build_all(trt, flavour: str, artifacts: Path, workspace_gb: float | None, say, separate_decode: bool,
               share_weights: bool) -> list[Path]:
    manifest = contract.load_manifest(artifacts)
    plan = engine_plan(manifest, separate_decode)
    capability, targets = build_target(flavour)
    where = "ahead of time on the CPU" if capability == AHEAD_OF_TIME else f"on a GPU ({capability})"
    say(f"building {len(plan)} engines with {flavour} {trt.__version__} {where}, for compute capability "
        f"{', '.join(targets)}")
    manifest_sha = sha256_of(artifacts / contract.MANIFEST_FILE)
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    timing = TimingCache(engine_dir(artifacts, flavour) / TIMING_CACHE) if flavour == "tensorrt" else None
    built = []
    for graph, serves in plan.items():
        spec = manifest.graphs[graph]
        onnx_file = artifacts / spec.file
        started = time.perf_counter()
        also = f", serving {' and '.join(serves)}" if serves != (graph,) else ""
        say(f"building {graph} ({spec.file}{also}) ...")  # minutes for the largest graph: say what is running
        bound = tuple(e["name"] for e in bound_weight_entries(artifacts, manifest, graph)) if share_weights else ()
        serialized, profiles = build_graph(trt, builder, logger, manifest, graph, onnx_file, workspace_gb, timing,
                                           serves, bound)
        seconds = time.perf_counter() - started
        data = memoryview(serialized)
        path = engine_path(artifacts, flavour, graph)
        write_atomically(path, data)
        meta = EngineMetadata(
            graph=graph, serves=serves, flavour=flavour, version=trt.__version__, compute_capability=capability,
            targets=targets, manifest_sha256=manifest_sha, graph_file=spec.file,
            graph_sha256=manifest.files.get(spec.file) or sha256_of(onnx_file),
            profiles={served: {name: r.to_dict() for name, r in ranges.items()} for served, ranges in profiles.items()},
            engine_bytes=data.nbytes, bound_weights=bound,
            engine_sha256=hashlib.sha256(data).hexdigest(), build_seconds=round(seconds, 3),
            workspace_bytes=workspace_bytes(workspace_gb), built_at=now_utc(), tool_versions=tool_versions(trt),
        )
        write_atomically(metadata_path(artifacts, flavour, graph), meta.to_json().encode())
        del serialized, data
        say(f"built {path} ({meta.engine_bytes / 2**20:.1f} MiB, {seconds:.1f} s)")
        built.append(path)
    remove_unplanned(artifacts, flavour, plan)
    if timing is not None:
        timing.save()
    return built


def remove_unplanned(artifacts: Path, flavour: str, plan: dict[str, tuple[str, ...]]) -> None:
    """Delete engines of an earlier build that this plan does not make (a separate decode engine, when the prefill
    engine now serves decode), so the runtime never loads one beside the other."""
    for graph in contract.GRAPHS:
        if graph not in plan:
            for path in (engine_path(artifacts, flavour, graph), metadata_path(artifacts, flavour, graph)):
                path.unlink(missing_ok=True)


def build_graph(trt, builder, logger, manifest: contract.Manifest, graph: str, onnx_file: Path,
                workspace_gb: float | None, timing: "TimingCache | None", serves: tuple[str, ...] | None = None,
                bound: tuple[str, ...] = ()):
    """Parse, configure and build one graph with one optimization profile per graph in ``serves`` (default: the
    graph itself), the initializers named in ``bound`` made inputs; returns ``(IHostMemory, {served graph:
    profiles})``."""
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    with weights_as_inputs(onnx_file, bound) as parsed:
        # parse_from_file (not parse(bytes)) so that external data resolves next to the model file.
        if not parser.parse_from_file(str(parsed)):
            raise LatentcacheError(f"{onnx_file}: {trt.__name__} {trt.__version__} cannot parse it: "
                                   f"{parser_errors(parser)}")
    profiles = {served: profile_shapes(manifest, graph, served) for served in serves or (graph,)}
    for ranges in profiles.values():
        check_network(network, manifest.graphs[graph], ranges, onnx_file, bound)
    allow_decomposed_attention(trt, network)
    config = builder.create_builder_config()
    if workspace_gb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes(workspace_gb))
    if timing is not None:
        timing.attach(config)
    for served, ranges in profiles.items():  # in the order of ``serves``: that order is the profile index
        profile = builder.create_optimization_profile()
        for index in range(network.num_inputs):
            tensor = network.get_input(index)
            if -1 in tuple(tensor.shape):  # only dynamic inputs take a profile; static ones (weights too) have none
                shapes = ranges[tensor.name]
                profile.set_shape(tensor.name, shapes.min, shapes.opt, shapes.max)
        if config.add_optimization_profile(profile) < 0:
            raise LatentcacheError(f"{onnx_file}: {trt.__name__} rejected the optimization profile for {served}: "
                                   f"{logger.last()}")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise LatentcacheError(f"{onnx_file}: {trt.__name__} {trt.__version__} could not build an engine: "
                               f"{logger.last()}")
    if timing is not None:
        timing.absorb(config)
    return serialized, profiles


def allow_decomposed_attention(trt, network) -> None:
    """Let the builder decompose each ``IAttention`` (``--ops onnx-llm``'s ONNX Attention) that no dedicated fused
    kernel covers (fp32, small head sizes): by default TensorRT refuses to build those ("Attention operation was not
    supported by a dedicated kernel"), and a decomposed attention is what the standard form builds anyway. Where a
    fused kernel exists TensorRT still picks it. TensorRT without ``IAttention`` (before 10.14) has none to mark."""
    kind = getattr(trt.LayerType, "ATTENTION_OUTPUT", None)
    for index in range(network.num_layers if kind is not None else 0):
        layer = network.get_layer(index)
        if layer.type == kind:
            layer.__class__ = trt.IAttentionOutputLayer  # get_layer returns the base ILayer
            layer.attention.decomposable = True


@contextmanager
def weights_as_inputs(onnx_file: Path, bound: tuple[str, ...]):
    """``onnx_file`` itself, or (with ``bound``) a copy beside it whose initializers named in ``bound`` are graph
    inputs; the copy's other initializers still point at ``weights.bin`` (external data resolves next to the model
    file, so the copy lies in the artifacts folder, under a hidden name, for the parse only)."""
    if not bound:
        yield onnx_file
        return
    try:
        import onnx
    except ImportError:
        raise BackendUnavailable("--share-weights rewrites the graphs' weights into inputs with the onnx package: "
                                 "pip install onnx") from None
    model = onnx.load(str(onnx_file), load_external_data=False)
    kept, names = [], set(bound)
    for initializer in model.graph.initializer:
        if initializer.name in names:
            model.graph.input.append(onnx.helper.make_tensor_value_info(initializer.name, initializer.data_type,
                                                                        list(initializer.dims)))
        else:
            kept.append(initializer)
    if len(model.graph.initializer) - len(kept) != len(names):
        raise LatentcacheError(f"{onnx_file}: weights.json names initializers the graph lacks: re-export the artifacts")
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    copy = onnx_file.with_name(f".{onnx_file.stem}.bound-weights.onnx")
    onnx.save(model, str(copy))
    try:
        yield copy
    finally:
        copy.unlink(missing_ok=True)


def parser_errors(parser) -> str:
    """Every parser error on one line: ``node (op): description``, plus a hint for known gaps."""
    errors, hints = [], []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        where = f"{error.node_name() or 'node ' + str(error.node())} ({error.node_operator()})"
        errors.append(f"{where}: {' '.join(error.desc().split())}")
        hint = OP_HINTS.get(error.node_operator())
        if hint and hint not in hints:
            hints.append(hint)
    return "; ".join(errors + hints) or "no error reported"


def check_network(network, spec: contract.GraphSpec, profiles: dict, onnx_file: Path, bound: tuple[str, ...] = ()) -> None:
    """The parsed network's inputs must be the manifest's (and the ``bound`` weights), with static dims equal to the
    contract's."""
    inputs = {}
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        if tensor.name in bound:
            continue
        inputs[tensor.name] = (DTYPE_NAMES.get(tensor.dtype.name, str(tensor.dtype)), tuple(tensor.shape))
    expected = {s.name: s.dtype for s in spec.inputs}
    if {name: dtype for name, (dtype, _) in inputs.items()} != expected:
        raise LatentcacheError(f"{onnx_file}: inputs {sorted(inputs)} differ from the manifest's {sorted(expected)} "
                               "(names or dtypes): re-export the artifacts")
    for name, (_, shape) in inputs.items():
        bounds = profiles[name]
        if len(shape) != len(bounds.min) or any(
            size != -1 and not lo == size == hi for size, lo, hi in zip(shape, bounds.min, bounds.max)
        ):
            raise LatentcacheError(f"{onnx_file}: input {name} has shape {shape} but the manifest gives "
                                   f"{bounds.min}..{bounds.max}: re-export the artifacts")


class TimingCache:
    """TensorRT's timing cache in a file, loaded before the first build and saved (atomically) after."""

    def __init__(self, path: Path) -> None:
        self.path, self.cache = path, None

    def attach(self, config) -> None:
        if self.cache is None:
            blob = self.path.read_bytes() if self.path.is_file() else b""
            self.cache = config.create_timing_cache(blob)
        # ignore_mismatch=False: a cache written on another GPU or TensorRT version is refused (set returns
        # False), and the build starts from an empty one instead (Python API, IBuilderConfig.set_timing_cache).
        if not config.set_timing_cache(self.cache, ignore_mismatch=False):
            self.cache = config.create_timing_cache(b"")
            config.set_timing_cache(self.cache, ignore_mismatch=False)

    def absorb(self, config) -> None:
        self.cache = config.get_timing_cache()

    def save(self) -> None:
        if self.cache is not None:
            write_atomically(self.path, memoryview(self.cache.serialize()))


def build_target(flavour: str) -> tuple[str, tuple[str, ...]]:
    """``(compute_capability, targets)`` for the metadata.

    TensorRT builds for the GPU it runs on; TensorRT-RTX builds ahead of time on the CPU and, without
    ``set_compute_capability``, for its default set (``RTX_DEFAULT_TARGETS``).
    """
    if flavour == "tensorrt_rtx":
        return AHEAD_OF_TIME, RTX_DEFAULT_TARGETS
    capability = gpu_compute_capability()
    return capability, (capability,)


def gpu_compute_capability(device: int = 0) -> str:
    """The build GPU's ``major.minor`` through cuda-python, else nvidia-smi; TensorRT cannot build without one."""
    from latentcache.cuda import CudaRuntime

    try:
        return CudaRuntime(device).compute_capability
    except BackendUnavailable:
        pass
    import subprocess

    try:
        result = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader", f"--id={device}"],
                                capture_output=True, text=True, timeout=30, check=True)
        return result.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        raise BackendUnavailable("TensorRT builds on a GPU and its compute capability could not be read: "
                                 "pip install cuda-python (or use --backend tensorrt_rtx, which builds on the CPU)") \
            from None


def workspace_bytes(workspace_gb: float | None) -> int | None:
    return None if workspace_gb is None else int(workspace_gb * 2**30)


def tool_versions(trt) -> dict[str, str]:
    import latentcache

    versions = {"latentcache": latentcache.__version__, trt.__name__: trt.__version__}
    parser_version = getattr(trt, "get_nv_onnx_parser_version", None)
    if parser_version is not None:
        versions["onnx_parser"] = str(parser_version())
    return versions
