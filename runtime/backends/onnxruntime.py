"""ONNX Runtime backends: CPU (the default and the fallback) and CUDA, through IO binding.

The cache lives in OrtValues allocated once on the session's device. With the ``inplace`` lowering
(TensorScatter) past and present are bound to the *same* OrtValue, which ONNX Runtime updates in place
(its kernel checks the aliasing; run plainly it would copy the whole cache each step). The ``portable``
lowering rewrites every slot through Where, so it gets two buffers that swap roles after each call
(binding one buffer as both input and output of an arbitrary op is not safe). Inputs are bound from host
arrays (ONNX Runtime copies them to the device); logits and latents land in preallocated outputs.

Memory: by default decode steps run on the prefill session (one token, no embedding rows): one session for the
base instead of two, at the same speed on ONNX Runtime (the static decode graph exists for TensorRT's CUDA
graphs). ``separate_decode=True`` loads ``decode.onnx`` as well (the parity tests do). On the CPU every session
holds its own prepacked copy of its weights. ``share_weights`` (for CUDA) makes the base's tensors that the prefill
and an unmerged LoRA coprocessor both read one device copy for both (``shared_weights``); the CUDA backend does so
by default. Its first version saved only 3 % of device memory (988 against 1,020 MiB on an H100, SmolLM2 fp16 +
coprocessor; docs/results.md): its copies came from ONNX Runtime's power-of-two Python arena. Copied into one exact
block, it gives 744 MiB against 1,020-1,052 per session and 684 base only (1.09x), same tokens (H200,
docs/results/gpu15).

Quantized weights (``--weights int4``): ONNX Runtime fuses each DequantizeLinear + MatMul into MatMulNBits as
it loads the graph and, by default, multiplies in int8 (activations quantized per block on the fly, its
``accuracy_level`` 4: the fast CPU path); ``int8_activations=False`` keeps fp32 products, so the graph computes
exactly what its dequantized weights define. ``int8`` and ``int4-hqq`` graphs hold MatMulNBits nodes with level 4
already: int8 products either way.

Fixed shapes and CUDA graphs (``fixed_shapes``; on by default on CUDA, where it is what ``cuda_graphs`` needs):
decode steps, absorbs and the coprocessor run from input buffers allocated once on the device at one shape each,
with the attention mask padded to the whole capacity (free slots are masked like any other) and the outputs in
fixed device buffers. That is what ONNX Runtime's CUDA graphs require (``enable_cuda_graph``: every input and
output of a captured run at the same address and shape; several captures per session under their own
``gpu_graph_id``, 0 reserved, -1 skipping capture: ``onnxruntime_run_options_config_keys.h``). Each step then
costs a few small host-to-device copies and one graph launch instead of hundreds of kernel launches. Prompts,
whose length varies, are captured at a few widths (``prefill_buckets``; ``PREFILL_BUCKETS`` on CUDA): the generator
left-pads a prompt to the smallest width that holds it when the request leaves those slots free, exactly as it
pads the shorter prompts of a batch; longer prompts run uncaptured, as does the coprocessor of a sliding-window
model (see ``_fixed_runs``).
On the CPU the same path runs without capture (the tests prove the padding and the buffers there); it is off by
default there, where attending the whole capacity costs more than launches do.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from latentcache.arrays import HOST_DTYPES
from latentcache.contract import dtypes
from latentcache.contract import manifest as contract
from latentcache.errors import LatentcacheError
from latentcache.limits import cache_bytes, check_memory
from latentcache.runtime.backend import Backend, BackendUnavailable
from latentcache.runtime.backends.memset import device_memset
from latentcache.runtime.backends.shared_weights import SharedWeights

MAX_DEFAULT_THREADS = 8  # a cap on the default only: --threads may ask for more
SLIDING = "sliding_attention"  # a sliding-window layer in the manifest's model.layer_types


def default_threads() -> int:
    """ONNX Runtime's intra-op threads when none are asked for: the cores this process may run on (its CPU
    affinity, which containers and ``taskset`` restrict; ``os.cpu_count()`` counts the whole machine), at most 8."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no sched_getaffinity on macOS and Windows
        usable = os.cpu_count() or 1
    return max(1, min(usable, MAX_DEFAULT_THREADS))


def numpy_dtype(dtype: str):
    if dtype == "bfloat16":  # no bfloat16 kernels on ONNX Runtime's CPU, and numpy has no bfloat16 to bind
        raise BackendUnavailable(
            f"ONNX Runtime cannot run {dtype} artifacts here: export with --dtype fp32 or fp16, or use --backend tensorrt"
        )
    return HOST_DTYPES[dtype]


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailable("ONNX Runtime is not installed: pip install 'latentcache[runtime]'") from None
    return onnxruntime


def check_graph_io(file: str, spec: contract.GraphSpec, session, sizes: dict[str, int]) -> None:
    """The graph's real inputs and outputs (order, names, element types, static dims) against the manifest.

    A manifest that disagrees with its graphs would bind the wrong buffers (swapped key/value caches run
    and print wrong text) or fail deep inside ONNX Runtime; one line lists the mismatches instead."""
    problems = []
    for kind, declared, actual in (("input", spec.inputs, session.get_inputs()),
                                   ("output", spec.outputs, session.get_outputs())):
        if [s.name for s in declared] != [a.name for a in actual]:
            problems += _name_problems(kind, declared, actual)
            continue
        for want, have in zip(declared, actual):
            dtype = dtypes.ONNXRUNTIME_TYPES.get(have.type, have.type)
            if dtype != want.dtype:
                problems.append(f"{kind} {want.name} is {dtype} in the graph, {want.dtype} in the manifest")
            wanted = [sizes.get(w, w) for w in want.shape]
            if len(have.shape) != len(wanted) or any(
                    isinstance(w, int) and isinstance(h, int) and w != h for w, h in zip(wanted, have.shape)):
                problems.append(f"{kind} {want.name} has shape {list(have.shape)} in the graph, {wanted} "
                                "in the manifest")
    if problems:
        more = f" and {len(problems) - 4} more" if len(problems) > 4 else ""
        raise contract.ManifestError(f"{file} does not match the manifest: {'; '.join(problems[:4])}{more}: "
                                     "re-export the artifacts")


def _name_problems(kind: str, declared, actual) -> list[str]:
    names, real = [s.name for s in declared], [a.name for a in actual]
    missing, extra = [n for n in names if n not in real], [n for n in real if n not in names]
    problems = [f"the manifest's {kind} {n} is not in the graph" for n in missing]
    problems += [f"the graph's {kind} {n} is not in the manifest" for n in extra]
    if not problems:  # same names, other order: roles would be bound to the wrong tensors
        first = next(i for i, (a, b) in enumerate(zip(names, real)) if a != b)
        problems.append(f"{kind} {first} is {real[first]} in the graph, {names[first]} in the manifest")
    return problems


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime-cpu"
    provider = "CPUExecutionProvider"
    device = "cpu"

    def __init__(self, artifacts: Path, manifest: contract.Manifest, threads: int | None = None,
                 separate_decode: bool = False, int8_activations: bool = True, fixed_shapes: bool = False,
                 cuda_graphs: bool = False, prefill_buckets: tuple[int, ...] = (), share_weights: bool = False) -> None:
        super().__init__(artifacts, manifest)
        self.cuda_graphs = cuda_graphs
        if fixed_shapes or cuda_graphs:
            self.prefill_buckets = tuple(sorted(b for b in set(prefill_buckets) if 0 < b <= manifest.kv.max_seq))
        ort = import_onnxruntime()
        if self.provider not in ort.get_available_providers():
            raise BackendUnavailable(self.missing_provider_message(ort))
        self.ort = ort
        dtype = numpy_dtype(manifest.kv.dtype)  # before loading: bf16 graphs fail deep inside session creation
        self.decode_on_prefill = not separate_decode
        kv = manifest.kv
        check_memory(cache_bytes(kv.num_layers, kv.batch, kv.num_kv_heads, kv.max_seq, kv.head_dim,
                                 np.dtype(dtype).itemsize) * (2 if manifest.kv_update == "portable" else 1),
                     f"the kv-cache of {self.artifacts}", "re-export with a smaller --batch or --max-seq")
        graphs = [name for name in manifest.graphs if not (name == "decode" and self.decode_on_prefill)]
        self.shared = SharedWeights(ort, self.artifacts, manifest, graphs, self.device) if share_weights else None
        self.sessions = {}
        for name in graphs:
            options = self._session_options(threads, int8_activations)
            if self.shared is not None:
                self.shared.add_to(name, options)
            self.sessions[name] = self._session(name, manifest.graphs[name], options)
            if self.shared is not None:  # the sessions read its memory: it must outlive every one of them
                self.sessions[name].latentcache_shared_weights = self.shared
        buffers = 2 if manifest.kv_update == "portable" else 1
        self.caches = [
            [self._allocate(kv.shape(), dtype) for _ in range(2 * kv.num_layers)] for _ in range(buffers)
        ]
        self.current = 0  # which buffer set holds the cache (portable lowering swaps)
        self._cache_nbytes = int(np.prod(kv.shape())) * np.dtype(dtype).itemsize
        self._zeros: np.ndarray | None = None  # host zeros, for reset() where no memset is had
        self.memset = device_memset(self.device)  # after the sessions: CUDA's runtime is loaded by then
        self.outputs = {
            name: {
                spec.role: self._allocate(self._static_shape(spec), numpy_dtype(spec.dtype), "cpu")
                for spec in graph.outputs if spec.role in (contract.LOGITS, contract.LATENTS)
            }
            for name, graph in manifest.graphs.items()
        }
        # Everything but the per-step inputs is bound once: one binding per graph and cache buffer set.
        self.swaps = {name: self._swaps(name) for name in self.sessions}
        self.bindings = {name: [self._bind_static(name, b) for b in range(buffers)] for name in self.sessions}
        self.input_names = {name: {s.role: s.name for s in manifest.graphs[name].inputs if s.layer is None}
                            for name in self.sessions}
        hidden, batch = manifest.hidden_size, kv.batch
        embeds_dtype = numpy_dtype(manifest.graphs["prefill"].tensor(contract.INPUTS_EMBEDS).dtype)
        self.decode_rows = {contract.INPUTS_EMBEDS: np.zeros((batch, 1, hidden), embeds_dtype),
                            contract.EMBEDS_MASK: np.zeros((batch, 1), dtype=np.int64)}
        self.fixed: dict[tuple[str, int], FixedShapeRun] = {}
        if fixed_shapes or cuda_graphs:
            self.fixed = {(run.graph, run.query): run for run in self._fixed_runs()}
        self.run_options = self._run_options(-1) if cuda_graphs else None  # variable shapes: never captured
        if cuda_graphs:
            self._capture()

    def _fixed_runs(self) -> list[FixedShapeRun]:
        """Decode (on its session), the absorb of latents (prefill at ``Capacity.per_augmentation`` rows), prompts
        at each of ``prefill_buckets`` rows, and the coprocessor, each at one shape. The coprocessor counts its span
        from the mask's data (a shape-derived value would be a host copy mid-graph, which ONNX Runtime refuses to
        capture), so a mask padded to the capacity gives the same latents; not with sliding windows, where the
        padding would move its soft tokens (they sit right after the span) in the window."""
        manifest, runs = self.manifest, []
        runs.append(("prefill" if self.decode_on_prefill else "decode", 1))
        if manifest.num_latents:
            runs.append(("prefill", manifest.num_latents + int(manifest.refeeds)))
        runs += [("prefill", rows) for rows in self.prefill_buckets]
        if self.fixed_coprocessor:
            runs.append(("coprocessor", manifest.num_latents))
        runs = list(dict.fromkeys(runs))  # a bucket may be the absorb's width: one run serves both
        return [FixedShapeRun(self, graph, query, graph_id=1 + index) for index, (graph, query) in enumerate(runs)]

    @property
    def fixed_coprocessor(self) -> bool:
        """Whether the coprocessor runs (and is captured) at one shape: a coprocessor graph, no sliding windows."""
        return "coprocessor" in self.manifest.graphs and SLIDING not in self.manifest.model.get("layer_types", ())

    def _run_options(self, graph_id: int):
        options = self.ort.RunOptions()
        options.add_run_config_entry("gpu_graph_id", str(graph_id))
        return options

    def _capture(self) -> None:
        """Capture every fixed-shape run now, on zero inputs: ONNX Runtime records a graph on the second run of
        an id (the first allocates its memory); capturing here keeps it out of the first request (and away from
        a coprocessor thread), and the zeroed cache afterwards is a fresh one."""
        for run in self.fixed.values():
            for _ in range(2):
                run.run({})
        self.reset()

    def _session_options(self, threads: int | None, int8_activations: bool):
        options = self.ort.SessionOptions()  # one per session: shared initializers are added per graph
        options.log_severity_level = 3  # TensorScatter logs a warning per call when it has to copy
        options.intra_op_num_threads = threads or default_threads()
        if not int8_activations:  # int4 graphs: fp32 products in the fused MatMulNBits (the parity tests' setting)
            options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
        return options

    def provider_options(self, graph: str) -> dict[str, str]:
        return {}

    def _session(self, graph: str, spec: contract.GraphSpec, options):
        path = self.artifacts / spec.file
        if not path.is_file():
            raise contract.ManifestError(f"{path} is missing: re-export the artifacts")
        session = self.ort.InferenceSession(str(path), options, providers=[(self.provider, self.provider_options(graph))])
        check_graph_io(path.name, spec, session, self.manifest.named_sizes())
        return session

    def _bind_static(self, graph: str, current: int):
        """A binding of ``graph`` with the cache (buffer set ``current`` as past) and the outputs attached."""
        spec = self.manifest.graphs[graph]
        binding = self.sessions[graph].io_binding()
        past = self.caches[current]
        present = self.caches[1 - current] if self.swaps[graph] else past
        for i, (key, value) in enumerate(spec.cache_pairs(past=True)):
            binding.bind_ortvalue_input(key.name, past[2 * i])
            binding.bind_ortvalue_input(value.name, past[2 * i + 1])
        for i, (key, value) in enumerate(spec.cache_pairs(past=False)):
            binding.bind_ortvalue_output(key.name, present[2 * i])
            binding.bind_ortvalue_output(value.name, present[2 * i + 1])
        for role, value in self.outputs[graph].items():
            binding.bind_ortvalue_output(spec.tensor(role, output=True).name, value)
        return binding

    def _swaps(self, graph: str) -> bool:
        """Whether ``graph`` writes the other buffer set (portable lowering), so the sets swap after it."""
        writes_cache = any(s.role == contract.PRESENT_KEY for s in self.manifest.graphs[graph].outputs)
        return writes_cache and len(self.caches) == 2

    def missing_provider_message(self, ort) -> str:
        return f"{self.provider} is not available in this onnxruntime ({ort.__version__})"

    def _allocate(self, shape, dtype, device: str | None = None):
        """A zeroed OrtValue; the cache on the session's device, logits/latents on the host (small, read each step)."""
        return self.ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype=dtype), device or self.device, 0)

    def _static_shape(self, spec: contract.TensorSpec) -> tuple[int, ...]:
        sizes = {"batch": self.manifest.kv.batch, "vocab": self.manifest.vocab_size, "hidden": self.manifest.hidden_size}
        return tuple(d if isinstance(d, int) else sizes[d] for d in spec.shape)

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = feeds.get(contract.INPUT_IDS, feeds.get(contract.POSITION_IDS))  # [batch, query] in every graph
        on_prefill = graph == "decode" and self.decode_on_prefill
        if on_prefill:
            graph = "prefill"  # a one-token prefill, no embedding rows
        fixed = self.fixed.get((graph, rows.shape[1]))
        if fixed is not None:
            return fixed.run(feeds)  # its embedding-row buffers stay zero: a decode step copies none
        if on_prefill:
            feeds = {**feeds, **self.decode_rows}
        binding, names = self.bindings[graph][self.current], self.input_names[graph]
        for role, value in feeds.items():
            binding.bind_cpu_input(names[role], np.ascontiguousarray(value))
        self.sessions[graph].run_with_iobinding(binding, self.run_options)
        self._after_run(graph)
        return {role: value.numpy() for role, value in self.outputs[graph].items()}

    def _after_run(self, graph: str) -> None:
        if self.swaps[graph]:
            self.current = 1 - self.current

    def describe(self) -> str:
        notes = ["CUDA graphs"] if self.cuda_graphs else []
        if self.shared is not None and self.shared.describe():
            notes.append(self.shared.describe())
        if self.memset is None:
            notes.append("cache reset by a host copy: no CUDA runtime library found loaded in this process")
        return f"{self.name} ({'; '.join(notes)})" if notes else self.name

    def reset(self) -> None:
        """Zero the cache where it lies (``runtime.backends.memset``). Stale slots are never attended (the mask
        decides), but zeros keep one request's non-finite values, were an fp16 cache to overflow, out of the next:
        a masked score is 0 after softmax, and 0 times a stale infinity is NaN."""
        if self.memset is None:
            if self._zeros is None:  # one host array for every layer: one per layer cost its page faults each time
                self._zeros = np.zeros(self.manifest.kv.shape(), dtype=numpy_dtype(self.manifest.kv.dtype))
            for buffers in self.caches:
                for value in buffers:
                    value.update_inplace(self._zeros)
        else:
            for buffers in self.caches:
                for value in buffers:
                    self.memset.zero(value.data_ptr(), self._cache_nbytes)
            self.memset.finish()
        self.current = 0

    def read_cache(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        cache = self.caches[self.current]
        return cache[2 * layer].numpy(), cache[2 * layer + 1].numpy()

    def close(self) -> None:
        self.fixed.clear()
        self.sessions.clear()
        self.caches.clear()


class FixedShapeRun:
    """One graph at one shape (``query`` rows) from buffers allocated and bound once: what a CUDA graph replays.

    Inputs live on the session's device at their full shapes (``attend`` = the whole capacity); ``run`` copies
    each step's inputs into them (the attention mask zero-padded in a host staging array) and runs the binding,
    under its own ``gpu_graph_id`` when the backend captures. Outputs land in device buffers and are copied back.
    A ping-pong cache (portable lowering) gets one binding, and capture, per buffer set.
    """

    def __init__(self, backend: OnnxRuntimeBackend, graph: str, query: int, graph_id: int) -> None:
        self.backend, self.graph, self.query = backend, graph, query
        manifest, spec = backend.manifest, backend.manifest.graphs[graph]
        sizes = {**manifest.named_sizes(), "query": query, "attend": manifest.kv.max_seq}
        self.inputs = {s.role: (s.name, tuple(sizes.get(d, d) for d in s.shape), numpy_dtype(s.dtype))
                       for s in spec.inputs if s.layer is None}
        self.buffers = {role: backend._allocate(shape, dtype) for role, (_, shape, dtype) in self.inputs.items()}
        self.staging = np.zeros(self.inputs[contract.ATTENTION_MASK][1], dtype=np.int64)
        self.outputs = {role: backend._allocate(value.shape(), numpy_dtype(spec.tensor(role, output=True).dtype))
                        for role, value in backend.outputs[graph].items()}
        self.bindings = [self._bind(current) for current in range(len(backend.caches))]
        self.options = [backend._run_options(2 * graph_id + current - 1) if backend.cuda_graphs else None
                        for current in range(len(backend.caches))]  # ids 1, 2, ... (0 is ONNX Runtime's)

    def _bind(self, current: int):
        binding = self.backend._bind_static(self.graph, current)
        spec = self.backend.manifest.graphs[self.graph]
        for role, value in self.outputs.items():  # device outputs replace the host ones: a capture writes there
            binding.bind_ortvalue_output(spec.tensor(role, output=True).name, value)
        for role, (name, _, _) in self.inputs.items():
            binding.bind_ortvalue_input(name, self.buffers[role])
        return binding

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for role, value in feeds.items():
            self.buffers[role].update_inplace(self._fit(role, np.asarray(value)))
        backend, current = self.backend, self.backend.current
        backend.sessions[self.graph].run_with_iobinding(self.bindings[current], self.options[current])
        backend._after_run(self.graph)
        return {role: value.numpy() for role, value in self.outputs.items()}

    def _fit(self, role: str, array: np.ndarray) -> np.ndarray:
        """``array`` at the buffer's shape: the attention mask zero-padded to the capacity, the rest as given."""
        name, shape, dtype = self.inputs[role]
        if role == contract.ATTENTION_MASK and array.ndim == 2 and array.shape[1] <= shape[1]:
            self.staging[:, : array.shape[1]] = array
            self.staging[:, array.shape[1]:] = 0
            array = self.staging
        if array.shape != shape:
            raise LatentcacheError(f"{self.graph}: input {name} has shape {array.shape}, the fixed-shape run takes {shape}")
        return np.ascontiguousarray(array, dtype=dtype)


PREFILL_BUCKETS = (16, 32, 64, 128, 256)  # prompt widths captured on CUDA (longer prompts run uncaptured)
# ONNX Runtime's CUDA attention kernels (its "sdpa_kernel" provider option, a bit mask: contrib_ops/cpu/bert/
# attention_common.h AttentionBackend), which the onnx-llm form's Attention nodes dispatch through: the ONNX-domain
# kernel reads the same GetAttentionKernelOptions() as the contrib ops (core/providers/cuda/llm/attention.cc) and
# falls back flash -> memory-efficient -> unified unfused ("math", which cannot be disabled).
SDPA_KERNELS = {"flash": 1, "efficient": 2, "math": 16}


def sdpa_mask(kernels: str) -> int:
    """``"math"`` or ``"flash+efficient+math"`` -> ONNX Runtime's ``sdpa_kernel`` bit mask."""
    names = kernels.split("+")
    unknown = [name for name in names if name not in SDPA_KERNELS]
    if unknown:
        raise LatentcacheError(f"unknown attention kernel(s) {', '.join(unknown)}: use {', '.join(SDPA_KERNELS)}, "
                               "joined by '+'")
    return sum(SDPA_KERNELS[name] for name in set(names))


def attention_kernels_for(ops: str, chosen: dict[str, str] | None) -> dict[str, str]:
    """The CUDA attention kernels per graph: ``chosen`` where given, else the unfused "math" kernel for every graph
    of onnx-llm artifacts. ONNX Runtime's own choice there (memory-efficient, since the mask is explicit) spreads
    one query row over the whole padded capacity across few thread blocks: on an H100 (SmolLM2 fp16, 2,304 slots)
    its attention took 3.36 of a 5.14 ms step, and with "math" everywhere decode took 2.35 ms per token against
    the standard form's 2.84 ms in the same run (docs/results.md, stop 32). Decode steps run on the prefill
    session unless ``separate_decode``, so its kernel is the prefill graph's."""
    if chosen is not None:
        return dict(chosen)
    return {graph: "math" for graph in ("prefill", "decode", "coprocessor")} if ops == "onnx-llm" else {}


class OnnxRuntimeCudaBackend(OnnxRuntimeBackend):
    """ONNX Runtime's CUDA provider; decode steps, absorbs and prompts of up to ``PREFILL_BUCKETS[-1]`` tokens
    replayed as CUDA graphs unless ``cuda_graphs=False``."""

    name = "onnxruntime-cuda"
    provider = "CUDAExecutionProvider"
    device = "cuda"

    def __init__(self, artifacts: Path, manifest: contract.Manifest, threads: int | None = None,
                 separate_decode: bool = False, cuda_graphs: bool = True,
                 prefill_buckets: tuple[int, ...] = PREFILL_BUCKETS, share_weights: bool = True,
                 attention_kernels: dict[str, str] | None = None, fixed_shapes: bool = False) -> None:
        """``fixed_shapes`` without ``cuda_graphs``: the captured runs' shapes, each launch its own (to profile).
        ``attention_kernels``: per graph, the attention kernels ONNX Runtime may pick for onnx-llm artifacts'
        Attention nodes, names of ``SDPA_KERNELS`` joined by "+" (default: ``attention_kernels_for``; ``{}`` leaves
        the choice to ONNX Runtime)."""
        if manifest.ops == "onnxruntime":  # its CUDA kernel takes neither fp32 nor an attention bias
            raise BackendUnavailable("these artifacts use ONNX Runtime's fused attention (--ops onnxruntime), which "
                                     "runs on its CPU provider only: use --backend onnxruntime-cpu, or re-export with "
                                     "--ops standard for CUDA")
        self.attention_kernels = attention_kernels_for(manifest.ops, attention_kernels)
        self.sdpa_kernel = {graph: sdpa_mask(kernels) for graph, kernels in self.attention_kernels.items()}
        super().__init__(artifacts, manifest, threads, separate_decode, cuda_graphs=cuda_graphs,
                         prefill_buckets=prefill_buckets, share_weights=share_weights, fixed_shapes=fixed_shapes)

    def provider_options(self, graph: str) -> dict[str, str]:
        captured = self.cuda_graphs and (graph != "coprocessor" or self.fixed_coprocessor)
        options = {"enable_cuda_graph": "1"} if captured else {}
        if graph in self.sdpa_kernel:
            options["sdpa_kernel"] = str(self.sdpa_kernel[graph])
        return options

    def missing_provider_message(self, ort) -> str:
        return (
            f"onnxruntime {ort.__version__} has no CUDA provider (providers: {', '.join(ort.get_available_providers())}):"
            " pip install onnxruntime-gpu (and uninstall the CPU-only onnxruntime)"
        )
