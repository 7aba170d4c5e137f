"""Load a Hugging Face causal-LM directory (config.json + safetensors, sharded or not) into a ``Decoder``.

Every way a directory can be wrong is reported as one ``CheckpointError`` line naming the file and the
problem: missing directory or config, pickle-only weights, truncated or corrupt safetensors, tensors
missing or unexpected, shapes that disagree with config.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from latentcache.errors import CheckpointError, UnsupportedModelError
from latentcache.model.config import SUPPORTED_MODEL_TYPES, ModelConfig, model_config_from_hf
from latentcache.model.decoder import Decoder

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
# Buffers some older checkpoints saved; recomputed here, so safe to skip.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def _require_dir(path: Path) -> None:
    if not path.is_dir():
        raise CheckpointError(
            f"{path}: no such model directory; pass a Hugging Face checkpoint directory "
            "(config.json + *.safetensors), e.g. the path printed by `latentcache models fetch`"
        )
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: no config.json; this is not a Hugging Face checkpoint directory")


def read_model_config(path: str | Path) -> ModelConfig:
    """Parse ``config.json`` (through transformers, which normalises every config vintage)."""
    path = Path(path)
    _require_dir(path)
    config_file = path / "config.json"
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config_file}: not valid JSON ({exc})") from exc
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"{config_file}: model_type '{model_type}' is not supported; "
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    from transformers import AutoConfig

    try:
        hf_config = AutoConfig.from_pretrained(str(path))
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{config_file}: transformers cannot parse it ({exc})") from exc
    try:
        return model_config_from_hf(hf_config)
    except UnsupportedModelError as exc:
        raise UnsupportedModelError(f"{config_file}: {exc}") from exc


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint, from the shard index when there is one."""
    index = path / WEIGHTS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise CheckpointError(f"{index}: not a valid shard index ({exc})") from exc
        files = [path / name for name in sorted(set(weight_map.values()))]
    elif (path / WEIGHTS_FILE).is_file():
        files = [path / WEIGHTS_FILE]
    else:
        pickles = sorted(p.name for p in path.glob("*.bin"))
        hint = f" (found {', '.join(pickles)}: pickle weights are never loaded; convert them to safetensors)" if pickles else ""
        raise CheckpointError(f"{path}: no {WEIGHTS_FILE} or {WEIGHTS_INDEX}{hint}")
    for file in files:
        if not file.is_file():
            raise CheckpointError(f"{file}: missing shard listed in {index.name}")
    return files


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint with the ``model.`` prefix removed."""
    from safetensors import SafetensorError, safe_open

    tensors: dict[str, torch.Tensor] = {}
    for file in weight_files(path):
        try:
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():
                    tensors[name.removeprefix("model.")] = handle.get_tensor(name)
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(
                f"{file}: unreadable safetensors ({exc}); the file is truncated or corrupt, re-download or re-convert it"
            ) from exc
    return {name: t for name, t in tensors.items() if not name.endswith(IGNORED_SUFFIXES)}


def check_state_dict(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], where: Path) -> None:
    """Fail on the first disagreement between the weights and what config.json implies."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing:
        raise CheckpointError(
            f"{where}: {len(missing)} tensors missing from the weights (first: {missing[0]}); "
            "config.json does not match the safetensors"
        )
    if unexpected:
        raise CheckpointError(
            f"{where}: {len(unexpected)} tensors the config does not expect (first: {unexpected[0]}); "
            "config.json does not match the safetensors"
        )
    for name, tensor in expected.items():
        if tuple(found[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{where}: tensor {name} has shape {tuple(found[name].shape)} but config.json implies "
                f"{tuple(tensor.shape)}; config.json does not match the safetensors"
            )


def load_decoder(
    path: str | Path, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> Decoder:
    """Build a ``Decoder`` from a checkpoint directory, weights cast to ``dtype``, in eval mode."""
    path = Path(path)
    config = read_model_config(path)
    with torch.device("meta"):
        decoder = Decoder(config)
    expected = decoder.state_dict()
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight")
    found = read_state_dict(path)
    if config.tie_word_embeddings:
        found.pop("lm_head.weight", None)  # some tied checkpoints store the copy anyway
    check_state_dict(expected, found, path)
    decoder = decoder.to_empty(device=device)
    decoder.load_state_dict({k: v.to(dtype) for k, v in found.items()}, strict=False, assign=False)
    decoder.cast(dtype)  # also rebuilds the rope buffers, which to_empty left uninitialised
    if config.tie_word_embeddings:
        decoder.lm_head.weight = decoder.embed_tokens.weight
    return decoder.eval().requires_grad_(False)
