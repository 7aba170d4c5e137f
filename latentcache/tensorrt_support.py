"""TensorRT and TensorRT-RTX: what the builder and the runtime share: the module shim, engine locations and
metadata, optimization profiles and the errors.

Both flavours share one Python API (``import tensorrt`` for TensorRT 10.x/11.x, ``import tensorrt_rtx`` for
TensorRT for RTX), so one code path serves both; ``load_tensorrt`` picks the module. The builder
(``export/tensorrt_build.py``) and the backend (``runtime/backends/tensorrt.py``) import the
shim, the profile rule and the metadata schema from here, so the builder and the runtime cannot disagree
about them.

Engines live in ``ARTIFACTS/engines/<flavour>/<graph>.engine``, each with ``<graph>.json`` beside it
(``EngineMetadata``). One engine may serve several graphs, one optimization profile each: by default the prefill
engine serves decode too (``engine_plan``). Engines built with ``--share-weights`` take the base's matrices as
inputs (``bound_weight_entries``), which the runtime binds to one device copy. TensorRT engines are tied to the
TensorRT version and to the GPU's compute capability;
TensorRT-RTX builds ahead of time on the CPU for a set of compute capabilities. The backend refuses any
mismatch with a message naming the fix: rebuild with ``latentcache build``.

The TensorRT flavour is imported lazily, and nothing here imports torch.
"""

from __future__ import annotations

import datetime
import importlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


from latentcache.contract.dtypes import TENSORRT_NAMES as DTYPE_NAMES  # noqa: F401 (the builder's and tests' name)
from latentcache.contract.manifest import GRAPHS, Manifest, ManifestError, TensorSpec
from latentcache.errors import BackendUnavailable, LatentcacheError

FLAVOURS = ("tensorrt", "tensorrt_rtx")
INSTALL = {
    "tensorrt": "pip install tensorrt (NVIDIA GPU needed to build; on Jetson it comes with JetPack)",
    "tensorrt_rtx": "pip install tensorrt-rtx-cu13 (TensorRT for RTX; builds on the CPU)",
}
ENGINES_DIR = "engines"
ENGINE_FORMAT = 2  # 2: ``serves`` and per-graph ``profiles`` (one engine, several profiles)
AHEAD_OF_TIME = "ahead-of-time/CPU"
# TensorRT-RTX engines built without setComputeCapability run on "compute capability 8.0, 8.6, 8.9, 12.0,
# and later" (docs.nvidia.com/deeplearning/tensorrt-rtx/latest/inference-library/cpu-engines.html; the
# 1.x support matrices list 8.6/8.9/12.0 as the portable default). Hopper (9.0) and Thor (10.x/11.0) are not
# among them: the RTX runtime refuses those GPUs.
RTX_DEFAULT_TARGETS = ("8.0", "8.6", "8.9", "12.0+")


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

    graph: str  # the ONNX graph the engine was built from
    serves: tuple[str, ...]  # the graphs it runs, in optimization-profile order: ("prefill", "decode")
    flavour: str  # "tensorrt" | "tensorrt_rtx"
    version: str  # the library's __version__, e.g. "10.13.3.9" or "1.7.1.116"
    compute_capability: str  # the build GPU's "major.minor"; AHEAD_OF_TIME for TensorRT-RTX
    targets: tuple[str, ...]  # compute capabilities the engine runs on ("12.0+" = 12.0 and later)
    manifest_sha256: str
    graph_file: str
    graph_sha256: str
    profiles: dict  # served graph -> input name -> {"min": [...], "opt": [...], "max": [...]}
    engine_bytes: int
    engine_sha256: str
    build_seconds: float
    bound_weights: tuple[str, ...] = ()  # weight tensors the engine takes as inputs (``latentcache build --share-weights``)
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
            data["targets"], data["serves"] = tuple(data["targets"]), tuple(data["serves"])
            data["bound_weights"] = tuple(data.get("bound_weights", ()))
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
                      compute_capability: str | None, graphs: tuple[str, ...] = GRAPHS) -> list[str]:
    """Every reason the engine described by ``meta`` must not be loaded here (empty when it may); ``graphs``: those
    of the artifacts, which it may serve."""
    problems = []
    if meta.graph != graph:
        problems.append(f"it holds graph '{meta.graph}', not '{graph}'")
    if meta.serves[:1] != (graph,) or not set(meta.serves) <= set(graphs):
        problems.append(f"it serves {', '.join(meta.serves) or 'nothing'}, not {graph} first among {', '.join(graphs)}")
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


# --- which engine serves which graph --------------------------------------------------------------------

def engine_plan(manifest: Manifest, separate_decode: bool = False) -> dict[str, tuple[str, ...]]:
    """``engine graph -> the graphs it serves``, one optimization profile each, in profile order.

    Every TensorRT engine holds its own copy of the weights it reads, so a decode engine beside the prefill engine
    is a second copy of the base on the device. By default the prefill engine serves decode as its second profile
    (one static query row, the cache's whole capacity attended): the ONNX Runtime backends run decode on the
    prefill graph the same way, and TensorRT tunes each profile's kernels on its own (NVIDIA's Torch-TensorRT
    "Multiple Optimization Profiles (Prefill / Decode)"). TensorRT-RTX still keeps the layers' weights once per
    profile (SmolLM2 fp16: 466 MiB for the two-profile engine, 261 + 259 for two engines; docs/results.md), so the
    one engine saves only what lies outside them; one copy takes ``--share-weights``. ``separate_decode``: decode
    gets its own engine. The coprocessor always has its own engine.
    """
    graphs = [g for g in GRAPHS if g in manifest.graphs]  # prefill before the decode it serves
    if "decode" in graphs and "prefill" in graphs and not separate_decode:
        graphs.remove("decode")
        return {g: ("prefill", "decode") if g == "prefill" else (g,) for g in graphs}
    return {g: (g,) for g in graphs}


# --- weights bound at run time ---------------------------------------------------------------------------

BOUND_WEIGHT_TYPES = (1, 10, 16)  # ONNX float32, float16, bfloat16: quantized codes stay constants of their DQ node


def bound_weight_entries(artifacts: Path, manifest: Manifest, graph: str) -> list[dict]:
    """The ``weights.json`` entries of ``graph`` that ``--share-weights`` engines take as inputs instead of holding:
    the float matrices stored in ``weights.bin``, each bound at run time to the one device copy of its bytes.

    TensorRT keeps a copy of every constant weight in each engine, and TensorRT-RTX one per optimization profile
    (measured: a two-profile engine of one fp16 MatMul is twice the one-profile engine; SmolLM2's prefill engine
    serving decode holds the layers' weights twice), so weights held by the runtime are the only way to one copy.
    """
    if not manifest.weight_index:
        raise ManifestError(f"{artifacts} has no weight index (exported before weights.json): re-export to build "
                            "engines with --share-weights")
    index = json.loads((Path(artifacts) / manifest.weight_index).read_text())
    return [e for e in index["graphs"].get(graph, [])
            if e["data_type"] in BOUND_WEIGHT_TYPES and len(e["dims"]) >= 2]  # norm vectors stay constants


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


def profile_shapes(manifest: Manifest, graph: str, serving: str | None = None) -> dict[str, ProfileRange]:
    """Every input of ``graph``: its min/opt/max shape (static inputs have min == opt == max), at the ranges of
    the graph it is serving (itself by default; ``serving="decode"`` on the prefill graph: one static query row)."""
    sizes, ranges = manifest.named_sizes(), dynamic_ranges(manifest, serving or graph)
    return {
        spec.name: ProfileRange(*(resolve_shape(spec, sizes, ranges, pick) for pick in range(3)))
        for spec in manifest.graphs[graph].inputs
    }


def max_output_shapes(manifest: Manifest, graph: str, serving: str | None = None) -> dict[str, tuple[int, ...]]:
    sizes, ranges = manifest.named_sizes(), dynamic_ranges(manifest, serving or graph)
    return {spec.name: resolve_shape(spec, sizes, ranges, 2) for spec in manifest.graphs[graph].outputs}
