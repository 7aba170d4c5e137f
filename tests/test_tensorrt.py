"""TensorRT / TensorRT-RTX: every graph builds into an engine (RTX builds on the CPU), and the runtime backend's
logic (metadata checks, profiles, in-place or ping-pong cache binding, CUDA-graphed decode) holds.

No GPU here: the backend runs against a fake ``tensorrt`` module and a fake CUDA whose "kernels" are numpy
code over host memory. The fakes enforce what real TensorRT requires (an aliased present output must be
bound to its past input's address) and what a captured CUDA graph does (it replays with the addresses it
was captured with).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from latentcache import cuda as cuda_support
from latentcache import tensorrt_support as trt_support
from latentcache.arrays import from_bfloat16_bits, to_bfloat16_bits
from latentcache.contract import manifest as contract
from latentcache.errors import BackendUnavailable
from latentcache.runtime.backends import tensorrt as trt_backend
from latentcache.runtime.backends.tensorrt import TensorRTBackend, cache_bindings
from latentcache.tensorrt_support import (
    EngineMetadata,
    EngineMismatch,
    compute_capability_ok,
    dynamic_ranges,
    profile_shapes,
)
from tests.tiny import ARCHITECTURES

FAST_ARCH = "llama-gqa-tied"
N_LATENTS = 3


# --- a synthetic artifacts directory (no torch) ---------------------------------------------------------


def tensor(name, role, dtype, shape, layer=None):
    return contract.TensorSpec(name, role, dtype, tuple(shape), layer)


def cache_specs(layers: int, dtype: str, past: bool):
    shape = ("batch", "kv_heads", "max_seq", "head_dim")
    roles = (contract.PAST_KEY, contract.PAST_VALUE) if past else (contract.PRESENT_KEY, contract.PRESENT_VALUE)
    names = ("past_key_values.{}.key", "past_key_values.{}.value") if past else ("present.{}.key", "present.{}.value")
    return [tensor(n.format(i), r, dtype, shape, i) for i in range(layers) for r, n in zip(roles, names)]


# weights.bin of the synthetic artifacts: one matrix both base graphs and the coprocessor read (stored once, as
# export stores identical tensors) and one only the coprocessor reads; weights.json names them per graph.
SHARED_MATRIX, COPROCESSOR_MATRIX = np.arange(8, dtype=np.float32).reshape(2, 4), np.full((4, 2), 0.5, np.float32)


def write_weights(directory: Path) -> None:
    def entry(name, offset, array):
        return {"name": name, "offset": offset, "length": array.nbytes, "data_type": 1, "dims": list(array.shape),
                "shared": True}

    shared = [entry("base.w", 0, SHARED_MATRIX)]
    graphs = {"prefill": shared, "decode": shared, "coprocessor": [
        entry("cop.base.w", 0, SHARED_MATRIX), entry("cop.own", 64, COPROCESSOR_MATRIX),
        {**entry("cop.norm", 128, np.ones(4, np.float32)), "dims": [4]}]}  # a vector: stays a constant
    (directory / "weights.json").write_text(json.dumps({"alignment": 64, "file": "weights.bin", "graphs": graphs}))
    data = bytearray(144)
    data[0:32], data[64:96], data[128:144] = SHARED_MATRIX.tobytes(), COPROCESSOR_MATRIX.tobytes(), bytes(16)
    (directory / "weights.bin").write_bytes(bytes(data))


def synthetic_manifest(directory: Path, layers=2, max_seq=16, batch=1, coprocessor=True, kv_update="inplace"):
    from latentcache.contract.files import sha256_of

    directory.mkdir(parents=True, exist_ok=True)
    write_weights(directory)
    dt = "float32"
    common = [tensor("input_ids", "input_ids", "int64", ("batch", "query")),
              tensor("position_ids", "position_ids", "int64", ("batch", "query")),
              tensor("write_index", "write_index", "int64", ("batch",)),
              tensor("attention_mask", "attention_mask", "int64", ("batch", "attend")),
              *cache_specs(layers, dt, past=True)]
    outputs = (tensor("logits", "logits", "float32", ("batch", "vocab")), *cache_specs(layers, dt, past=False))
    graphs = {
        "prefill": contract.GraphSpec("prefill.onnx", (
            *common, tensor("inputs_embeds", "inputs_embeds", dt, ("batch", "query", "hidden")),
            tensor("embeds_mask", "embeds_mask", "int64", ("batch", "query"))), outputs),
        "decode": contract.GraphSpec("decode.onnx", tuple(
            contract.TensorSpec(s.name, s.role, s.dtype, tuple(1 if d == "query" else d for d in s.shape), s.layer)
            for s in common), outputs),
    }
    if coprocessor:
        graphs["coprocessor"] = contract.GraphSpec("coprocessor.onnx", (
            tensor("position_ids", "position_ids", "int64", ("batch", N_LATENTS)),
            tensor("attention_mask", "attention_mask", "int64", ("batch", "attend")),
            *cache_specs(layers, dt, past=True)), (tensor("latents", "latents", dt, ("batch", N_LATENTS, "hidden")),))
    manifest = contract.Manifest(
        graphs=graphs, kv=contract.KVSpec(layers, 2, 4, max_seq, batch, dt), model={}, dtype=dt, kv_update=kv_update,
        hidden_size=8, vocab_size=11, num_latents=N_LATENTS if coprocessor else 0, latent_positions="",
        special_tokens={}, tokenizer_files=(), chat_template=None, opset=24, tool_versions={},
        augmentation="paper" if coprocessor else "", weight_index="weights.json",
        files={name: sha256_of(directory / name) for name in ("weights.bin", "weights.json")},
    )
    (directory / contract.MANIFEST_FILE).write_text(manifest.to_json())
    return contract.load_manifest(directory)


def resealed(text: str) -> str:
    """Manifest JSON with its integrity field recomputed for the edited contents."""
    data = json.loads(text)
    data["integrity"] = contract.integrity_of(data)
    return json.dumps(data)


# --- fakes: a tensorrt module and CUDA over host memory --------------------------------------------------


class FakeCuda:
    """Device memory as bytearrays keyed by pointer; a capture records the closures enqueued on its stream,
    and ``launch`` replays them."""

    compute_capability = "8.6"

    def __init__(self, device: int = 0) -> None:
        self.memory, self.next, self.streams = {}, 1 << 12, []
        self.recording, self.captures, self.launches = None, 0, 0
        self.stream = self.new_stream()

    def new_stream(self):
        self.streams.append(100 + len(self.streams))
        return self.streams[-1]

    def malloc(self, nbytes):
        pointer, self.next = self.next, self.next + int(nbytes) + 256
        self.memory[pointer] = bytearray(int(nbytes))
        return pointer

    def free(self, pointer):
        del self.memory[pointer]

    def array(self, pointer, dtype, shape):
        count = int(np.prod(shape))
        return np.frombuffer(self.memory[pointer], dtype=dtype, count=count).reshape(shape)

    def upload(self, pointer, array, stream):
        self.memory[pointer][: array.nbytes] = array.tobytes()

    def download(self, array, pointer, stream):
        array[...] = self.array(pointer, array.dtype, array.shape)

    def zero(self, pointer, nbytes, stream):
        self.memory[pointer][:nbytes] = bytes(nbytes)

    def synchronize(self, stream):
        pass

    def capture(self, enqueue, stream):
        self.recording = (stream, [])
        enqueue()
        (_, recorded), self.recording = self.recording, None
        self.captures += 1
        return recorded

    def launch(self, executable, stream):
        self.launches += 1
        for kernel in executable:
            kernel()

    def destroy(self, executable):
        pass

    def close(self):
        pass


class FakeEnum:
    def __init__(self, name):
        self.name = name


class FakeContext:
    """Runs the fake model: writes input ids into key rows and positions into value rows at write_index+i;
    logits report the mask sum, the attended span the engine saw and the sum of layer 0's past keys."""

    def __init__(self, engine, strategy=None):
        self.engine, self.addresses, self.shapes, self.profile, self.strategy = engine, {}, {}, 0, strategy

    def set_tensor_address(self, name, pointer):
        self.addresses[name] = pointer
        return True

    def set_optimization_profile_async(self, index, stream):
        assert not self.shapes, "TensorRT wants the profile chosen before any input shape is set"
        if not 0 <= index < self.engine.num_optimization_profiles:
            return False
        self.profile = index
        return True

    def set_input_shape(self, name, shape):
        served = self.engine.serves[self.profile]
        bounds = profile_shapes(self.engine.manifest, self.engine.graph, served)[name]
        assert all(lo <= size <= hi for size, lo, hi in zip(shape, bounds.min, bounds.max)), (name, shape, served)
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        m = self.engine.manifest
        if name == "logits":
            return (m.kv.batch, m.vocab_size)
        if name == "latents":
            return (m.kv.batch, N_LATENTS, m.hidden_size)
        return self.shapes[name]

    def execute_async_v3(self, stream):
        addresses = dict(self.addresses)  # a capture bakes in the addresses bound now
        shapes = dict(self.shapes)
        kernel = lambda: self.engine.compute(addresses, shapes)  # noqa: E731
        cuda = self.engine.cuda
        if cuda.recording is not None and cuda.recording[0] == stream:
            cuda.recording[1].append(kernel)
        else:
            kernel()
        return True


class FakeEngine:
    def __init__(self, graph, manifest, alias, cuda, serves, bound):
        self.graph, self.manifest, self.alias, self.cuda, self.serves = graph, manifest, alias, cuda, serves
        self.spec = manifest.graphs[graph]
        self.contexts = []
        self.num_optimization_profiles = len(serves)
        self.bound = [tensor(name, "weight", "float32", (2, 4) if name.endswith("w") else (4, 2)) for name in bound]

    @property
    def tensors(self):
        return [*self.spec.inputs, *self.bound, *self.spec.outputs]

    @property
    def num_io_tensors(self):
        return len(self.tensors)

    def get_tensor_name(self, index):
        return self.tensors[index].name

    def get_tensor_mode(self, name):
        inputs = {s.name for s in (*self.spec.inputs, *self.bound)}
        return FakeTRT.TensorIOMode.INPUT if name in inputs else FakeTRT.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        spec = next(s for s in self.tensors if s.name == name)
        return FakeEnum({v: k for k, v in trt_support.DTYPE_NAMES.items()}[spec.dtype])

    def get_tensor_shape(self, name):
        spec = next(s for s in self.tensors if s.name == name)
        return tuple(-1 if d in ("query", "attend") else self.manifest.named_sizes().get(d, d)
                     for d in spec.shape)

    def get_aliased_input_tensor(self, name):
        if not self.alias or not name.startswith("present."):
            return None
        return name.replace("present.", "past_key_values.")

    def create_execution_context(self, strategy=None):
        context = FakeContext(self, strategy)
        self.contexts.append(context)
        return context

    def compute(self, addresses, shapes):
        m, cuda = self.manifest, self.cuda
        ids_shape = shapes.get("input_ids") or shapes["position_ids"]
        batch, rows = ids_shape
        attend = shapes["attention_mask"][1]
        mask = cuda.array(addresses["attention_mask"], np.int64, (batch, attend))
        kv = m.kv.shape()
        past_sum = cuda.array(addresses["past_key_values.0.key"], np.float32, kv).sum()
        if self.graph == "coprocessor":
            latents = cuda.array(addresses["latents"], np.float32, (batch, N_LATENTS, m.hidden_size))
            latents[...] = mask.sum() + past_sum
            return
        ids = cuda.array(addresses["input_ids"], np.int64, (batch, rows))
        latent_rows = cuda.array(addresses["embeds_mask"], np.int64, (batch, rows)).sum() if "embeds_mask" in shapes else 0
        positions = cuda.array(addresses["position_ids"], np.int64, (batch, rows))
        index = cuda.array(addresses["write_index"], np.int64, (batch,))
        for layer, (key, value) in enumerate(self.spec.cache_pairs(past=True)):
            for past, new_rows, out in ((key, ids, f"present.{layer}.key"),
                                        (value, positions, f"present.{layer}.value")):
                if self.alias:
                    assert addresses[out] == addresses[past.name], "KVCacheUpdate requires present aliased to past"
                else:
                    assert addresses[out] != addresses[past.name], "a non-aliased engine must not write its input"
                    cuda.array(addresses[out], np.float32, kv)[...] = cuda.array(addresses[past.name], np.float32, kv)
                present = cuda.array(addresses[out], np.float32, kv)
                for b in range(batch):
                    present[b, :, index[b] : index[b] + rows, :] = new_rows[b, :, None]
        logits = cuda.array(addresses["logits"], np.float32, (batch, m.vocab_size))
        logits[...] = 0
        logits[:, 0], logits[:, 1], logits[:, 2], logits[:, 3] = mask.sum(1), attend, past_sum, latent_rows
        if "base.w" in addresses:  # a bound weight: what lies at its address now
            logits[:, 4] = cuda.array(addresses["base.w"], np.float32, SHARED_MATRIX.shape).sum()


class FakeTRT:
    """Just enough of the ``tensorrt`` module for ``TensorRTBackend``."""

    __version__ = "10.99.0.1"

    class TensorIOMode:
        INPUT, OUTPUT = "input", "output"

    class ExecutionContextAllocationStrategy:
        STATIC, ON_PROFILE_CHANGE = "static", "on profile change"

    class ILogger:
        class Severity:
            ERROR, INTERNAL_ERROR, WARNING = "error", "internal", "warning"

        def __init__(self):
            pass

    def __init__(self, manifest, alias, cuda):
        self.manifest, self.alias, self.cuda, self.engines = manifest, alias, cuda, {}
        trt = self

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data):
                _, graph, serves, bound = bytes(data).decode().split(":")
                trt.engines[graph] = FakeEngine(graph, trt.manifest, trt.alias, trt.cuda, tuple(serves.split("+")),
                                                [name for name in bound.split(",") if name])
                return trt.engines[graph]

        self.Runtime = Runtime


def write_fake_engines(directory: Path, manifest, flavour="tensorrt", version=FakeTRT.__version__, targets=("8.6",),
                       recorded_flavour=None, separate_decode=False, share_weights=False):
    """The engines ``latentcache build`` would write (``engine_plan``); each fake engine's bytes name its graph and
    the graphs its profiles serve."""
    from latentcache.contract.files import sha256_of

    for graph, serves in trt_support.engine_plan(manifest, separate_decode).items():
        bound = tuple(e["name"] for e in trt_support.bound_weight_entries(directory, manifest, graph)) \
            if share_weights else ()
        data = f"fake:{graph}:{'+'.join(serves)}:{','.join(bound)}".encode()
        trt_support.engine_path(directory, flavour, graph).parent.mkdir(parents=True, exist_ok=True)
        trt_support.engine_path(directory, flavour, graph).write_bytes(data)
        meta = EngineMetadata(graph=graph, serves=serves, bound_weights=bound, flavour=recorded_flavour or flavour,
                              version=version,
                              compute_capability=targets[0], targets=tuple(targets),
                              manifest_sha256=sha256_of(directory / contract.MANIFEST_FILE), graph_file=f"{graph}.onnx",
                              graph_sha256="0" * 64, profiles={}, engine_bytes=len(data), engine_sha256="0" * 64,
                              build_seconds=0.0)
        trt_support.metadata_path(directory, flavour, graph).write_text(meta.to_json())


@pytest.fixture
def fake_backend(tmp_path, monkeypatch):
    """``make(alias=True, flavour="tensorrt", device_cc="8.6", separate_decode=False, **metadata) -> (backend, cuda,
    fake_trt)``."""

    def make(alias=True, flavour="tensorrt", device_cc="8.6", **meta):
        manifest = synthetic_manifest(tmp_path / "art")
        cuda = FakeCuda()
        cuda.compute_capability = device_cc
        fake = FakeTRT(manifest, alias, cuda)
        write_fake_engines(tmp_path / "art", manifest, **{"flavour": flavour, **meta})
        monkeypatch.setattr(trt_backend, "load_tensorrt", lambda name="auto": (fake, flavour))
        monkeypatch.setattr(trt_backend, "CudaRuntime", lambda device=0: cuda)
        return TensorRTBackend(tmp_path / "art", manifest, flavour=flavour), cuda, fake

    return make


def prefill_feeds(prompt: list[int], start: int = 0, batch: int = 1, hidden: int = 8):
    q = len(prompt)
    return {"input_ids": np.array([prompt] * batch), "position_ids": np.arange(start, start + q)[None].repeat(batch, 0),
            "write_index": np.full(batch, start), "attention_mask": np.ones((batch, start + q), dtype=np.int64),
            "inputs_embeds": np.zeros((batch, q, hidden), np.float32), "embeds_mask": np.zeros((batch, q), np.int64)}


def decode_feeds(token: int, slot: int, batch: int = 1):
    return {"input_ids": np.full((batch, 1), token), "position_ids": np.full((batch, 1), slot),
            "write_index": np.full(batch, slot), "attention_mask": np.ones((batch, slot + 1), dtype=np.int64)}


# --- the backend against the fakes ----------------------------------------------------------------------


@pytest.mark.parametrize("separate_decode", [False, True], ids=["decode-on-prefill-engine", "decode-engine"])
@pytest.mark.parametrize("alias", [True, False], ids=["in-place", "ping-pong"])
def test_backend_prefill_decode_coprocess(fake_backend, alias, separate_decode):
    backend, cuda, fake = fake_backend(alias=alias, separate_decode=separate_decode)
    assert backend.cache.slots == (1 if alias else 2)
    assert sorted(fake.engines) == sorted(["prefill", "coprocessor"] + (["decode"] if separate_decode else []))
    out = backend.run("prefill", prefill_feeds([5, 6, 7]))
    assert out["logits"][0, :4].tolist() == [3, 3, 0, 0]  # mask sum, attended span (dynamic), empty past, no latents
    keys, values = backend.read_cache(1)
    assert keys[0, :, :3, 0].tolist() == [[5, 6, 7]] * 2 and values[0, 0, :3, 0].tolist() == [0, 1, 2]
    assert not keys[0, :, 3:].any()
    sums = []
    for step, token in enumerate([8, 9, 10, 11]):
        slot = 3 + step
        logits = backend.run("decode", decode_feeds(token, slot))["logits"]
        assert logits[0, 0] == slot + 1  # the live span, zero padded ...
        assert logits[0, 1] == backend.manifest.kv.max_seq  # ... to the whole capacity: static shapes
        assert logits[0, 3] == 0  # on the prefill engine: no row is a latent
        sums.append(logits[0, 2])
    assert sums == [18 * 8, 26 * 8, 35 * 8, 45 * 8]  # each step read the cache the previous wrote (2 heads x 4)
    keys, _ = backend.read_cache(0)
    assert keys[0, 0, :7, 0].tolist() == [5, 6, 7, 8, 9, 10, 11]
    # One eager warm-up per decode context, then one capture each; later steps replay the graph.
    decoding = [c for c in fake.engines["decode" if separate_decode else "prefill"].contexts if c.profile == (
        0 if separate_decode else 1)]
    contexts = len(decoding)
    assert contexts == (1 if alias else 2) and cuda.captures == contexts and cuda.launches == 4 - contexts
    if not separate_decode:  # decode's contexts hold scratch for its own profile, not for a whole prompt
        assert all(c.strategy == FakeTRT.ExecutionContextAllocationStrategy.ON_PROFILE_CHANGE for c in decoding)
        assert len(fake.engines["prefill"].contexts) == 1 + contexts
        assert "decode on the prefill engine" in backend.describe()
    latents = backend.run("coprocessor", {"position_ids": np.arange(7, 10)[None], "attention_mask": np.ones((1, 7))})
    assert latents["latents"].shape == (1, N_LATENTS, 8) and np.all(latents["latents"] == 7 + 56 * 8)
    backend.reset()
    assert not any(a.any() for a in backend.read_cache(0))
    again = backend.run("decode", decode_feeds(3, 0))["logits"]
    assert again[0, 2] == 0 and backend.read_cache(0)[0][0, 0, 0, 0] == 3  # the replayed graph sees the reset cache
    backend.close()


@pytest.mark.parametrize("policy", ["end-of-prompt", "async"])
def test_generator_drives_the_backend(fake_backend, policy):
    """The runtime's generator (prefill, coprocessor on this or another thread, absorb, decode) end to end."""
    from latentcache.runtime.generator import Generator, make_policy

    backend, _, _ = fake_backend()
    generator = Generator(backend)
    tokens = list(generator.generate([[5, 6, 7]], max_new_tokens=4, policy=make_policy(policy)))
    assert len(tokens) == 4 and generator.length == 3 + N_LATENTS + 3
    keys, _ = backend.read_cache(0)
    assert keys[0, 0, :3, 0].tolist() == [5, 6, 7]  # the prompt; latents and new tokens follow
    backend.close()


def test_backend_rejects_bad_feeds(fake_backend):
    from latentcache.errors import LatentcacheError

    backend, _, _ = fake_backend()
    with pytest.raises(LatentcacheError, match="missing \\['write_index'\\]"):
        backend.run("decode", {k: v for k, v in decode_feeds(1, 0).items() if k != "write_index"})
    too_long = prefill_feeds(list(range(17)))
    with pytest.raises(LatentcacheError, match="input input_ids has shape \\(1, 17\\)"):
        backend.run("prefill", too_long)
    with pytest.raises(LatentcacheError, match="no 'verify' graph"):
        backend.run("verify", {})


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"version": "10.3.0.26"}, "built with tensorrt 10.3.0.26, this is 10.99.0.1"),
        ({"targets": ("8.7",)}, "targets compute capability 8.7, this GPU is 8.6"),
        ({"recorded_flavour": "tensorrt_rtx"}, "it was built with tensorrt_rtx, not tensorrt"),
    ],
)
def test_backend_refuses_mismatched_engines(fake_backend, meta, message):
    with pytest.raises(EngineMismatch, match=message) as caught:
        fake_backend(**meta)
    assert "latentcache build" in str(caught.value) and "\n" not in str(caught.value)


def test_backend_refuses_engines_of_other_artifacts(fake_backend, tmp_path):
    backend, _, _ = fake_backend()
    backend.close()
    coprocessor = trt_support.engine_path(tmp_path / "art", "tensorrt", "coprocessor")
    coprocessor.rename(coprocessor.with_suffix(".moved"))
    with pytest.raises(EngineMismatch, match="coprocessor.engine is missing: run `latentcache build"):
        TensorRTBackend(tmp_path / "art", contract.load_manifest(tmp_path / "art"), flavour="tensorrt")
    coprocessor.with_suffix(".moved").rename(coprocessor)
    manifest = tmp_path / "art" / contract.MANIFEST_FILE
    # Other artifacts (as a re-export would write them, integrity field included), not an edited manifest.
    manifest.write_text(resealed(manifest.read_text().replace('"vocab_size": 11', '"vocab_size": 12')))
    with pytest.raises(EngineMismatch, match="built from other artifacts .*latentcache build"):
        TensorRTBackend(tmp_path / "art", contract.load_manifest(tmp_path / "art"), flavour="tensorrt")


def test_shared_weights_are_on_the_gpu_once_for_every_engine(fake_backend):
    """``--share-weights`` engines take the weight matrices as inputs: the backend uploads each distinct tensor of
    weights.bin once and binds it to every context of every engine (prefill on both profiles, the coprocessor)."""
    backend, cuda, fake = fake_backend(share_weights=True)
    assert [t.name for t in fake.engines["prefill"].bound] == ["base.w"]
    assert [t.name for t in fake.engines["coprocessor"].bound] == ["cop.base.w", "cop.own"]  # cop.norm: a vector
    assert len(backend.weights.pointers) == 2 and backend.weights.nbytes == SHARED_MATRIX.nbytes * 2
    pointer = backend.weights.pointers[0]
    contexts = fake.engines["prefill"].contexts + fake.engines["coprocessor"].contexts
    assert len(contexts) == 3 and {c.addresses["base.w" if c.engine.graph == "prefill" else "cop.base.w"]
                                   for c in contexts} == {pointer}
    assert np.array_equal(cuda.array(pointer, np.float32, (2, 4)), SHARED_MATRIX)
    assert backend.run("prefill", prefill_feeds([5, 6]))["logits"][0, 4] == SHARED_MATRIX.sum()
    assert backend.run("decode", decode_feeds(7, 2))["logits"][0, 4] == SHARED_MATRIX.sum()
    assert "2 weight tensors (0.0 MiB) on the GPU once for every engine" in backend.describe()
    backend.close()
    assert pointer not in cuda.memory


def test_engines_must_serve_what_their_metadata_says(fake_backend, tmp_path):
    """A prefill engine whose metadata does not list decode (built with --separate-decode) needs decode's own
    engine; metadata naming a graph the artifacts lack, or more profiles than the engine has, is refused."""
    backend, _, _ = fake_backend(separate_decode=True)
    backend.close()
    art, manifest = tmp_path / "art", contract.load_manifest(tmp_path / "art")
    trt_support.engine_path(art, "tensorrt", "decode").unlink()
    with pytest.raises(EngineMismatch, match="decode.engine is missing: run `latentcache build"):
        TensorRTBackend(art, manifest, flavour="tensorrt")
    meta_file = trt_support.metadata_path(art, "tensorrt", "prefill")
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "serves": ["prefill", "verify"]}))
    with pytest.raises(EngineMismatch, match="it serves prefill, verify, not prefill first among .*latentcache build"):
        TensorRTBackend(art, manifest, flavour="tensorrt")
    meta_file.write_text(json.dumps({**meta, "serves": ["prefill", "decode"]}))  # the engine has one profile
    with pytest.raises(EngineMismatch, match="has 1 optimization profiles, its metadata 2: rebuild"):
        TensorRTBackend(art, manifest, flavour="tensorrt")


def test_backend_unavailable_lets_auto_fall_back(fake_backend, tmp_path):
    with pytest.raises(BackendUnavailable, match="this GPU is 9.0: build with --backend tensorrt"):
        fake_backend(flavour="tensorrt_rtx", device_cc="9.0", targets=trt_support.RTX_DEFAULT_TARGETS)
    manifest = synthetic_manifest(tmp_path / "bare")
    with pytest.raises(BackendUnavailable, match="no TensorRT engines: run `latentcache build"):
        TensorRTBackend(tmp_path / "bare", manifest)


def test_rtx_flavour_runs_without_manual_capture(fake_backend):
    """TensorRT-RTX captures decode itself (IRuntimeConfig.cuda_graph_strategy); the backend must not."""
    backend, cuda, _ = fake_backend(flavour="tensorrt_rtx", targets=trt_support.RTX_DEFAULT_TARGETS)
    backend.run("prefill", prefill_feeds([5, 6]))
    for slot in (2, 3, 4):
        assert backend.run("decode", decode_feeds(9, slot))["logits"][0, 0] == slot + 1
    assert cuda.captures == 0 and cuda.launches == 0
    assert len({runner.stream for runner in backend.runners.values()}) == 3  # one stream per graph
    backend.close()


def test_metadata_problems_and_compute_capabilities():
    assert compute_capability_ok("8.6", ("8.0", "8.6", "8.9", "12.0+"))
    assert compute_capability_ok("12.1", ("8.0", "8.6", "8.9", "12.0+"))
    assert not compute_capability_ok("9.0", ("8.0", "8.6", "8.9", "12.0+"))  # Hopper: RTX refuses it
    assert not compute_capability_ok("8.7", ("8.6",))  # a TensorRT engine runs on its build GPU only
    meta = EngineMetadata(graph="decode", serves=("decode",), flavour="tensorrt_rtx", version="1.7.1.116",
                          compute_capability="ahead-of-time/CPU", targets=("8.6", "12.0+"), manifest_sha256="a",
                          graph_file="decode.onnx", graph_sha256="b", profiles={}, engine_bytes=1,
                          engine_sha256="c", build_seconds=0.1)
    ok = dict(graph="decode", flavour="tensorrt_rtx", version="1.7.1.116", manifest_sha256="a",
              compute_capability="8.6")
    assert trt_support.metadata_problems(meta, **ok) == []
    bad = trt_support.metadata_problems(meta, **{**ok, "version": "1.8.0.1", "manifest_sha256": "x",
                                                  "compute_capability": "9.0"})
    assert len(bad) == 3


def test_profiles_from_named_dims(tmp_path):
    manifest = synthetic_manifest(tmp_path, max_seq=64)
    assert dynamic_ranges(manifest, "prefill") == {"query": (1, 32, 64), "attend": (1, 32, 64)}
    prefill = profile_shapes(manifest, "prefill")
    assert (prefill["input_ids"].min, prefill["input_ids"].opt, prefill["input_ids"].max) == ((1, 1), (1, 32), (1, 64))
    assert prefill["inputs_embeds"].max == (1, 64, 8) and prefill["past_key_values.1.value"].static
    decode = profile_shapes(manifest, "decode")
    assert all(r.static for r in decode.values()) and decode["attention_mask"].max == (1, 64)
    coprocessor = profile_shapes(manifest, "coprocessor")
    assert coprocessor["position_ids"].static and coprocessor["attention_mask"].min == (1, 1)
    assert coprocessor["attention_mask"].max == (1, 64)


def test_cache_bindings_follow_the_manifest(tmp_path):
    manifest = synthetic_manifest(tmp_path, layers=3)
    bindings = cache_bindings(manifest.graphs["decode"])
    assert bindings[2] == (2, ("past_key_values.2.key", "past_key_values.2.value", "present.2.key", "present.2.value"))
    assert cache_bindings(manifest.graphs["coprocessor"])[0] == (0, ("past_key_values.0.key",
                                                                     "past_key_values.0.value", None, None))


def test_bfloat16_round_trip():
    values = np.array([1.0, -2.5, 3.140625, 1e-3, 65504.0, 1 + 2**-8], dtype=np.float32)
    back = from_bfloat16_bits(to_bfloat16_bits(values))
    assert back[:3].tolist() == [1.0, -2.5, 3.140625]
    assert np.allclose(back, values, rtol=2**-8) and back[5] == 1.0  # ties round to even


def test_unavailable_library_names_the_package(monkeypatch):
    import importlib

    real = importlib.import_module

    def no_tensorrt(name, *args):
        if name in ("tensorrt", "tensorrt_rtx"):
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_tensorrt)
    with pytest.raises(BackendUnavailable, match="pip install tensorrt-rtx-cu13") as caught:
        trt_support.load_tensorrt("auto")
    assert "\n" not in str(caught.value)
    with pytest.raises(BackendUnavailable, match="tensorrt is not installed: pip install tensorrt"):
        trt_support.load_tensorrt("tensorrt")
    from latentcache.export.tensorrt_build import build_engines

    with pytest.raises(BackendUnavailable, match="pip install tensorrt-rtx-cu13"):
        build_engines(Path("/nonexistent"), "tensorrt_rtx")


def test_missing_cuda_python_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "cuda", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    with pytest.raises(BackendUnavailable, match="pip install cuda-python"):
        cuda_support.import_cudart()


# --- real builds with TensorRT-RTX (CPU) ----------------------------------------------------------------


def make_checkpoint(base: Path, out: Path) -> Path:
    """An untrained coprocessor checkpoint (a trained one exports the same graphs)."""
    from latentcache.model import checkpoint as ckpt
    from latentcache.model import load_decoder
    from latentcache.model.coprocessor import Coprocessor, CoprocessorConfig

    coprocessor = Coprocessor(load_decoder(base), CoprocessorConfig(num_latents=N_LATENTS), seed=0)
    ckpt.save_checkpoint(out, dict(coprocessor.trainable_parameters()), None,
                         {"step": 0, "train_config": {"seed": 0}, "coprocessor_config": asdict(coprocessor.config),
                          "fingerprints": {"base": ckpt.base_fingerprint(base)}})
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``export(arch, kv_update, dtype="fp32", weights="float", ops="standard") -> artifacts`` with prefill, decode
    and coprocessor graphs."""
    from latentcache.export.onnx_export import ExportConfig, export_artifacts
    from tests.tiny import build_tiny, save_tiny_tokenizer

    root, bases, done = tmp_path_factory.mktemp("trt"), {}, {}

    def export(arch: str, kv_update: str, dtype: str = "fp32", weights: str = "float", ops: str = "standard") -> Path:
        key = (arch, kv_update, dtype, weights, ops)
        if key in done:
            return done[key]
        if arch not in bases:
            base = root / arch / "base"
            build_tiny(arch, base)
            save_tiny_tokenizer(base)
            bases[arch] = (base, make_checkpoint(base, root / arch / "coprocessor"))
        base, coprocessor = bases[arch]
        out = root / arch / f"{kv_update}-{dtype}-{weights}-{ops}"
        done[key] = export_artifacts(ExportConfig(
            base=base, out=out, coprocessor=coprocessor, max_seq=64, kv_update=kv_update, dtype=dtype,
            weights=weights, ops=ops), progress=lambda _: None)
        return done[key]

    return export


def check_build(artifacts: Path, separate_decode: bool = False) -> list[Path]:
    from latentcache.export.tensorrt_build import build_engines

    trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed: pip install tensorrt-rtx-cu13")
    lines = []
    paths = build_engines(artifacts, "tensorrt_rtx", progress=lines.append, separate_decode=separate_decode)
    manifest = contract.load_manifest(artifacts)
    assert sorted(manifest.graphs) == ["coprocessor", "decode", "prefill"]
    assert sorted(p.stem for p in paths) == sorted(["coprocessor", "prefill"] + (["decode"] if separate_decode else []))
    # One header, then per engine a line before building it (minutes on a big graph) and one after.
    assert len(lines) == 1 + 2 * len(paths)
    assert [line.split()[1] for line in lines[1::2]] == [p.stem for p in paths]
    assert all(line.startswith("building ") and line.endswith(" ...") for line in lines[1::2])
    served = []
    for path in paths:
        meta = EngineMetadata.read(path.with_suffix(".json"))
        assert path.stat().st_size == meta.engine_bytes > 0
        assert (meta.flavour, meta.version, meta.compute_capability) == ("tensorrt_rtx", trt.__version__,
                                                                         "ahead-of-time/CPU")
        assert meta.graph_sha256 == manifest.files[meta.graph_file] and meta.serves[0] == meta.graph
        assert sorted(meta.profiles) == sorted(meta.serves)  # (the JSON sorts keys: the order is `serves`)
        for graph, ranges in meta.profiles.items():
            assert ranges["attention_mask"]["max"] == [1, 64]
            assert ranges["attention_mask"]["min"] == ([1, 64] if graph == "decode" else [1, 1])
            if graph == "decode":  # one static query row, on the prefill graph's inputs too
                assert all(ranges[name]["min"] == ranges[name]["max"] for name in ranges)
        served += meta.serves
        print(f"{artifacts.parent.name}/{artifacts.name} {meta.graph} (serving {', '.join(meta.serves)}): "
              f"{meta.build_seconds:.2f} s, {meta.engine_bytes / 2**20:.1f} MiB")
    assert sorted(served) == sorted(manifest.graphs)  # every graph runs on exactly one engine's profile
    assert not list(paths[0].parent.glob(".*"))  # no temporary files left behind
    return paths


@pytest.mark.parametrize("kv_update", ["inplace", "portable"])
def test_tiny_model_builds_with_tensorrt_rtx(exported, kv_update):
    trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed: pip install tensorrt-rtx-cu13")
    from latentcache.tensorrt_support import make_logger, network_flags

    artifacts = exported(FAST_ARCH, kv_update)
    check_build(artifacts, separate_decode=True)
    check_build(artifacts)  # the default again: decode on the prefill engine, the separate one removed
    assert not trt_support.engine_path(artifacts, "tensorrt_rtx", "decode").exists()
    assert not trt_support.metadata_path(artifacts, "tensorrt_rtx", "decode").exists()
    # The in-place lowering becomes TensorRT's KVCacheUpdate layer (one per key and value per layer), whose
    # output aliases the cache input; the portable one has none, so the runtime ping-pongs two buffers.
    logger = make_logger(trt)
    network = trt.Builder(logger).create_network(network_flags(trt))
    assert trt.OnnxParser(network, logger).parse_from_file(str(artifacts / "decode.onnx"))
    updates = sum(network.get_layer(i).type == trt.LayerType.KV_CACHE_UPDATE for i in range(network.num_layers))
    assert updates == (2 * contract.load_manifest(artifacts).kv.num_layers if kv_update == "inplace" else 0)


def test_shared_weight_engines_build_with_tensorrt_rtx(exported):
    """``--share-weights``: every float matrix in weights.bin becomes an engine input (bound at run time to one device
    copy), so the engines hold none of them; the parse reads a hidden copy of the graph, removed afterwards."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed: pip install tensorrt-rtx-cu13")
    from latentcache.export.tensorrt_build import build_engines

    artifacts = exported(FAST_ARCH, "inplace")
    manifest = contract.load_manifest(artifacts)
    holding = {p.stem: p.stat().st_size for p in check_build(artifacts)}
    paths = build_engines(artifacts, "tensorrt_rtx", progress=lambda _: None, share_weights=True)
    index = json.loads((artifacts / "weights.json").read_text())["graphs"]
    for path in paths:
        meta = EngineMetadata.read(path.with_suffix(".json"))
        matrices = [e for e in index[meta.graph] if len(e["dims"]) == 2]
        assert set(meta.bound_weights) == {e["name"] for e in matrices} and matrices
        held = sum(e["length"] for e in matrices)
        assert meta.engine_bytes < holding[meta.graph] - 0.5 * held, meta.graph  # (SmolLM2: 14 MiB of 682, docs)
    assert not [p for p in artifacts.iterdir() if p.name.startswith(".") and p.suffix == ".onnx"]
    assert contract.load_manifest(artifacts) == manifest  # the artifacts themselves are untouched


@pytest.mark.parametrize("arch, dtype", [(FAST_ARCH, "fp32"), ("gemma2", "fp32"),
                                         pytest.param(FAST_ARCH, "fp16", marks=pytest.mark.slow)])
def test_onnx_llm_form_builds_with_tensorrt_rtx(exported, arch, dtype):
    """``--ops onnx-llm``'s Attention and RotaryEmbedding nodes are TensorRT layers of their own (its fused
    attention and rotary), one attention and two rotaries per layer in every graph (the coprocessor's included);
    soft-capped Gemma-2 keeps its explicit attention, which TensorRT's attention could not take."""
    trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed: pip install tensorrt-rtx-cu13")
    from latentcache.tensorrt_support import make_logger, network_flags

    artifacts = exported(arch, "inplace", dtype, ops="onnx-llm")
    check_build(artifacts)
    layers = contract.load_manifest(artifacts).kv.num_layers
    attentions = 0 if arch == "gemma2" else layers
    logger = make_logger(trt)
    for graph in ("prefill", "decode", "coprocessor"):
        network = trt.Builder(logger).create_network(network_flags(trt))
        assert trt.OnnxParser(network, logger).parse_from_file(str(artifacts / f"{graph}.onnx"))
        kinds = [network.get_layer(i).type for i in range(network.num_layers)]
        assert kinds.count(trt.LayerType.ATTENTION_OUTPUT) == attentions, graph
        assert kinds.count(trt.LayerType.ROTARY_EMBEDDING) == 2 * layers, graph


@pytest.mark.slow
@pytest.mark.parametrize("arch", [a for a in ARCHITECTURES if a != FAST_ARCH])
def test_every_architecture_builds_with_tensorrt_rtx(exported, arch):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed: pip install tensorrt-rtx-cu13")
    check_build(exported(arch, "inplace", "bf16" if arch.startswith("gemma") else "fp32"))  # Gemma: as TensorRT users export it


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama-gqa-tied", "gemma3"])
def test_fp16_exports_build_with_tensorrt_rtx(exported, arch):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed: pip install tensorrt-rtx-cu13")
    check_build(exported(arch, "inplace", "fp16"))


def test_int4_weights_build_with_tensorrt_rtx(exported):
    """Blockwise int4 DequantizeLinear + MatMul is standard ONNX: TensorRT parses it as weight-only int4."""
    trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed: pip install tensorrt-rtx-cu13")
    from latentcache.tensorrt_support import make_logger, network_flags

    artifacts = exported(FAST_ARCH, "inplace", weights="int4")
    check_build(artifacts)
    logger = make_logger(trt)
    network = trt.Builder(logger).create_network(network_flags(trt))
    assert trt.OnnxParser(network, logger).parse_from_file(str(artifacts / "decode.onnx"))
    dequantize = [network.get_layer(i) for i in range(network.num_layers)
                  if network.get_layer(i).type == trt.LayerType.DEQUANTIZE]
    # every projection (q/k/v packed into one, gate/up into another) and the LM head
    assert len(dequantize) == 4 * contract.load_manifest(artifacts).kv.num_layers + 1


def test_int8_weights_are_refused_for_tensorrt_with_the_fix(exported):
    from latentcache.export.tensorrt_build import build_engines

    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed: pip install tensorrt-rtx-cu13")
    with pytest.raises(contract.ManifestError, match="int8 weights in a form only onnxruntime reads: re-export with "
                                                     "--weights int4"):
        build_engines(exported(FAST_ARCH, "inplace", weights="int8"), "tensorrt_rtx")


def test_the_tensorrt_backend_passes_int8_artifacts_on_to_the_next_backend(exported):
    """``--backend auto`` tries TensorRT first: int8 artifacts make it unavailable (not an error), naming the fix."""
    from latentcache.errors import BackendUnavailable
    from latentcache.runtime.backends.tensorrt import TensorRTBackend

    artifacts = exported(FAST_ARCH, "inplace", weights="int8")
    with pytest.raises(BackendUnavailable, match="only onnxruntime reads: re-export with --weights int4"):
        TensorRTBackend(artifacts, contract.load_manifest(artifacts))


def test_timing_cache_and_workspace_options(exported, tmp_path):
    """TensorRT's timing cache and workspace limit go through the same API on RTX (where timing is a no-op)."""
    trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed: pip install tensorrt-rtx-cu13")
    from latentcache.export.tensorrt_build import TimingCache, build_graph
    from latentcache.tensorrt_support import make_logger

    artifacts = exported(FAST_ARCH, "inplace")
    manifest, logger, timing = contract.load_manifest(artifacts), make_logger(trt), TimingCache(tmp_path / "t.cache")
    serialized, profiles = build_graph(trt, trt.Builder(logger), logger, manifest, "decode", artifacts / "decode.onnx",
                                       0.25, timing)
    timing.save()
    assert serialized.nbytes > 0 and profiles["decode"]["attention_mask"].static and (tmp_path / "t.cache").is_file()


def test_parser_errors_are_one_line(tmp_path):
    trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed: pip install tensorrt-rtx-cu13")
    import onnx
    from onnx import TensorProto, helper

    from latentcache.errors import LatentcacheError
    from latentcache.export.tensorrt_build import build_graph
    from latentcache.tensorrt_support import make_logger

    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"], name="bogus")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "prefill.onnx")
    manifest = synthetic_manifest(tmp_path / "art")
    logger = make_logger(trt)
    with pytest.raises(LatentcacheError, match="cannot parse it: .*bogus \\(NoSuchOp\\)") as caught:
        build_graph(trt, trt.Builder(logger), logger, manifest, "prefill", tmp_path / "prefill.onnx", None, None)
    assert "\n" not in str(caught.value)


def test_parser_errors_name_the_export_option_an_older_tensorrt_needs():
    """A TensorRT before 10.15 fails on the in-place cache write and on onnx-llm's operators: the one-line error
    says which re-export it can read, once per hint."""
    from types import SimpleNamespace

    from latentcache.export.tensorrt_build import parser_errors

    def error(op: str, node: int):
        return SimpleNamespace(node_name=lambda: f"/layers.{node}/{op}", node=lambda: node, node_operator=lambda: op,
                               desc=lambda: "No importer registered for op")

    failed = [error("Attention", 0), error("RotaryEmbedding", 1), error("Attention", 2), error("TensorScatter", 3)]
    parser = SimpleNamespace(num_errors=len(failed), get_error=failed.__getitem__)
    line = parser_errors(parser)
    assert line.count("re-export with --ops standard") == 1 and line.count("re-export with --kv-update portable") == 1
    assert "/layers.1/RotaryEmbedding (RotaryEmbedding): No importer registered for op" in line and "\n" not in line


@pytest.mark.slow
def test_smollm2_builds_with_tensorrt_rtx(request):
    """The real default base in fp16 (the Jetson precision; fp32 builds the same graph, measured: 25 s), exported
    once for the slow set (max_seq 512), built in a child process; report time and peak RSS."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed: pip install tensorrt-rtx-cu13")
    artifacts = request.getfixturevalue("smollm2_fp16")
    started = time.perf_counter()
    script = ("import resource, sys; from latentcache.export.tensorrt_build import build_engines; "
              "build_engines(sys.argv[1], 'tensorrt_rtx', progress=lambda _: None); "
              "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", script, str(artifacts)], check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    peak = int(done.stdout.split()[-1]) / 2**10  # ru_maxrss is in KiB on Linux
    meta = EngineMetadata.read(trt_support.metadata_path(artifacts, "tensorrt_rtx", "prefill"))
    print(f"SmolLM2 fp16 prefill (serving {', '.join(meta.serves)}): build {meta.build_seconds:.1f} s, engine "
          f"{meta.engine_bytes / 2**20:.1f} MiB")
    assert meta.serves == ("prefill", "decode")
    # --share-weights: the engines hold none of the base's matrices (measured: 8.3 MiB for prefill + decode,
    # against 466 MiB holding them; docs/results/trt15/tensorrt_engines_smollm2_fp16.json)
    from latentcache.export.tensorrt_build import build_engines

    paths = build_engines(artifacts, "tensorrt_rtx", progress=lambda _: None, share_weights=True)
    bound = sum(p.stat().st_size for p in paths)
    print(f"SmolLM2 fp16 with --share-weights: engines {bound / 2**20:.1f} MiB")
    assert bound < 0.1 * (artifacts / "weights.bin").stat().st_size
    print(f"SmolLM2 fp16: whole build {seconds:.1f} s, peak RSS of the build process {peak:.0f} MiB")
    assert json.loads((artifacts / contract.MANIFEST_FILE).read_text())["dtype"] == "float16"
