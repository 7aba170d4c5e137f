"""Coprocessor checkpoints: safetensors only, written atomically, tied to the base they were trained on.

A checkpoint directory holds
  - ``coprocessor.safetensors``: the trainable tensors only (full network, or LoRA adapters), soft tokens
    and the latent scale;
  - ``optimizer.safetensors``: AdamW moments per trainable tensor (no pickle anywhere);
  - ``state.json``: step, training and coprocessor configs, fingerprints of the base weights, tokenizer
    and data, and the last metrics.
It is assembled in a temporary sibling and swapped in with renames, so an interruption leaves either the
previous checkpoint or the new one, never a mix. ``state.json`` records the sha256 of each tensor file
(``files``) and every load checks it, so a flipped byte is refused instead of spreading NaN; non-finite
tensors are never written; the previous checkpoint waits as ``NAME.previous`` until the new one has been
read back and verified.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from latentcache.contract.dtypes import from_short
from latentcache.contract.files import (
    folder_lock,
    replace_directory,
    sha256_of,
    staging_directory,
)
from latentcache.errors import CheckpointError
from latentcache.model.loading import load_decoder, weight_files

WEIGHTS, OPTIMIZER, STATE = "coprocessor.safetensors", "optimizer.safetensors", "state.json"


@lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    return sha256_of(Path(path))  # size and mtime only key the cache: a changed file is hashed again


def file_sha256(path: Path) -> str:
    stat = path.stat()
    return _file_sha256(str(path), stat.st_size, stat.st_mtime_ns)


def base_fingerprint(base_dir: Path) -> str:
    """sha256 over the base's safetensors contents (not its path: a moved copy still matches)."""
    digest = hashlib.sha256()
    for file in weight_files(Path(base_dir)):
        digest.update(file_sha256(file).encode())
    return digest.hexdigest()


def tokenizer_fingerprint(base_dir: Path) -> str | None:
    tokenizer = Path(base_dir) / "tokenizer.json"
    return file_sha256(tokenizer) if tokenizer.is_file() else None


def save_checkpoint(
    directory: Path,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
    dtype: torch.dtype = torch.float32,
) -> None:
    """Write a checkpoint to ``directory`` atomically (replacing any previous one); weights stored as ``dtype``.

    Refuses non-finite tensors (the previous checkpoint stays as it was); the previous checkpoint is removed
    only after the new one has been read back and verified."""
    from safetensors.torch import save_file

    directory = Path(directory)
    tensors = {k: v.detach().to(dtype).contiguous().cpu() for k, v in trainable.items()}
    moments = _optimizer_tensors(trainable, optimizer) if optimizer is not None else None
    _require_finite(tensors, directory, f"step {state.get('step')}: the weights")
    _require_finite(moments or {}, directory, f"step {state.get('step')}: the optimizer state")
    previous = previous_path(directory)
    with folder_lock(directory), staging_directory(directory) as scratch:
        save_file(tensors, scratch / WEIGHTS)
        written = [WEIGHTS]
        if moments is not None:
            save_file(moments, scratch / OPTIMIZER)
            written.append(OPTIMIZER)
        state = {**state, "files": {name: sha256_of(scratch / name) for name in written}}
        (scratch / STATE).write_text(json.dumps(state, indent=2, sort_keys=True))
        # The old checkpoint waits as NAME.previous until the new one is verified (resolve_checkpoint reads it).
        replace_directory(scratch, directory, aside=previous, keep_aside=True)
        try:
            verify_checkpoint(directory)
        except CheckpointError:
            _restore_previous(directory, previous)
            raise
        if previous.exists():
            shutil.rmtree(previous)


def _restore_previous(directory: Path, previous: Path) -> None:
    """Put the previous checkpoint back after the new one failed its read-back (the broken one is discarded)."""
    if previous.exists():
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(previous, directory)


def verify_checkpoint(directory: Path) -> None:
    """Read every tensor file of ``directory`` back: sha256 as recorded, parseable, all values finite."""
    for name in load_state(directory).get("files", {}):
        load_tensors(directory, name)


def _require_finite(tensors: dict[str, torch.Tensor], directory: Path, what: str) -> None:
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{what} hold NaN or infinity ({name}): not saved, the checkpoint in {directory} "
                                  "is kept as it was; lower --lr or --grad-clip and resume from it")


def pack_checkpoint(source: Path, target: Path, dtype: torch.dtype = torch.float16) -> Path:
    """A shippable copy of checkpoint ``source``: weights cast to ``dtype``, no optimizer state.

    Loading restores the tensors into fp32 parameters, so the copy evaluates exactly as fp16-rounded weights;
    evaluate the packed copy, not the source, when its figures ship with it.
    """
    source = resolve_checkpoint(Path(source))
    state = {**load_state(source), "packed_from": str(source), "packed_dtype": str(dtype).removeprefix("torch.")}
    state.pop("files", None)  # the packed copy records its own
    save_checkpoint(Path(target), load_tensors(source), None, state, dtype)
    return Path(target)


def previous_path(directory: Path) -> Path:
    return Path(directory).with_name(Path(directory).name + ".previous")


def checkpoint_exists(directory: Path) -> bool:
    """Whether ``directory`` (or the ``.previous`` an interrupted swap left) holds anything a run must not clobber."""
    directory = Path(directory)
    return directory.exists() or previous_path(directory).exists()


def resolve_checkpoint(directory: Path) -> Path:
    """The checkpoint to read: ``directory``, or its ``.previous`` if a swap was interrupted between renames."""
    directory = Path(directory)
    if (directory / STATE).is_file():
        return directory
    previous = previous_path(directory)
    if (previous / STATE).is_file():
        return previous
    raise CheckpointError(f"{directory}: no coprocessor checkpoint here ({STATE} missing)")


def _optimizer_tensors(trainable: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> dict:
    tensors = {}
    for name, param in trainable.items():
        for key, value in optimizer.state.get(param, {}).items():
            if torch.is_tensor(value):
                tensors[f"{name}::{key}"] = value.detach().float().contiguous().cpu().reshape(value.shape)
    return tensors


STATE_FIELDS = {"step": int, "train_config": dict, "coprocessor_config": dict, "fingerprints": dict}


def load_state(directory: Path) -> dict[str, Any]:
    path = resolve_checkpoint(directory) / STATE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint state ({exc})") from exc
    problem = _state_problem(state)
    if problem:
        raise CheckpointError(f"{path}: malformed checkpoint state ({problem}); restore it or start a new --out")
    return state


def _state_problem(state) -> str | None:
    if not isinstance(state, dict):
        return f"a JSON {type(state).__name__}, not an object"
    for key, kind in STATE_FIELDS.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            return f"'{key}' is missing or not a{'n' if kind is int else ''} {kind.__name__}"
    if state["step"] < 0:
        return f"step {state['step']} is negative"
    files = state.get("files", {})
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()) or \
            not set(files) <= {WEIGHTS, OPTIMIZER}:
        return "'files' must map coprocessor.safetensors/optimizer.safetensors to sha256 strings"
    return None


def load_tensors(directory: Path, name: str = WEIGHTS) -> dict[str, torch.Tensor]:
    """The tensors of file ``name``, checked against the sha256 ``state.json`` recorded (checkpoints written
    before checksums existed carry none and are checked for finite values only)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = resolve_checkpoint(directory)
    path = directory / name
    expected = load_state(directory).get("files", {}).get(name)
    if expected is not None and path.is_file() and sha256_of(path) != expected:
        raise CheckpointError(f"{path}: does not match the sha256 in {STATE} (the file is corrupt); restore it "
                              "from a backup or train again")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint ({exc}); the file is truncated or corrupt") from exc
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: {key} holds NaN or infinity; this checkpoint is unusable, resume from an "
                                  "earlier one or train again")
    return tensors


def restore_trainable(trainable: dict[str, torch.nn.Parameter], saved: dict[str, torch.Tensor], where: Path) -> None:
    if set(saved) != set(trainable):
        extra, missing = sorted(set(saved) - set(trainable)), sorted(set(trainable) - set(saved))
        raise CheckpointError(
            f"{where}: checkpoint tensors do not match this coprocessor (missing {missing[:2]}, extra {extra[:2]}); "
            "was it trained with another --lora-rank/--latents/--pause?"
        )
    with torch.no_grad():
        for name, param in trainable.items():
            if saved[name].shape != param.shape:
                raise CheckpointError(f"{where}: {name} has shape {tuple(saved[name].shape)}, expected "
                                      f"{tuple(param.shape)}")
            param.copy_(saved[name].to(param.dtype))


def restore_optimizer(optimizer: torch.optim.Optimizer, trainable: dict[str, torch.nn.Parameter],
                      saved: dict[str, torch.Tensor], step: int) -> None:
    """Rebuild AdamW state (moments from the file, the step count from state.json)."""
    for name, param in trainable.items():
        moments = {key.split("::", 1)[1]: t for key, t in saved.items() if key.startswith(f"{name}::")}
        if moments:
            state = {key: t.to(param.device, param.dtype) for key, t in moments.items() if key != "step"}
            # AdamW keeps its step count as a CPU float tensor; fused AdamW (CUDA) on the parameter's device.
            fused = bool(optimizer.defaults.get("fused"))
            state["step"] = torch.tensor(float(step), dtype=torch.float32, device=param.device if fused else "cpu")
            optimizer.state[param] = state


def load_coprocessor(directory: Path, base_dir: Path, base=None):
    """The trained coprocessor of checkpoint ``directory`` on the base at ``base_dir`` (fingerprint-checked).

    ``base`` may be the already loaded ``Decoder`` of ``base_dir``; returns ``(base, coprocessor)`` in eval mode.
    """
    from latentcache.model.coprocessor import Coprocessor

    directory = resolve_checkpoint(Path(directory))
    state = load_state(directory)
    if state["fingerprints"].get("base") != base_fingerprint(Path(base_dir)):
        raise CheckpointError(
            f"{directory}: trained on another base than {base_dir} (weights fingerprint mismatch); "
            "pass the --base it was trained on"
        )
    base = base if base is not None else load_decoder(base_dir)
    coprocessor = Coprocessor(base, _coprocessor_config(state, directory), seed=state["train_config"]["seed"])
    restore_trainable(coprocessor.trainable_parameters(), load_tensors(directory), directory)
    return base, coprocessor.eval().requires_grad_(False)


def _coprocessor_config(state: dict, directory: Path):
    from latentcache.model.coprocessor import CoprocessorConfig

    try:
        return CoprocessorConfig.from_dict(state["coprocessor_config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{directory}/state.json: {error}") from None


def load_models(base_dir: Path, checkpoint: Path | None, dtype: str, merge: bool = True):
    """``(base, coprocessor or None)`` in ``dtype`` (``fp32``/``fp16``/``bf16``): what export traces and the torch
    backend runs. ``merge``: LoRA folded into plain weights (else the adapters stay beside the base weights)."""
    from latentcache.model.lora import merge_lora

    torch_dtype = getattr(torch, from_short(dtype))
    if checkpoint is None:
        return load_decoder(base_dir, dtype=torch_dtype), None
    base, coprocessor = load_coprocessor(checkpoint, base_dir)
    if coprocessor.network is not None:
        if merge:
            merge_lora(coprocessor.network)
        coprocessor.network.cast(torch_dtype)
    coprocessor.soft_tokens.data = coprocessor.soft_tokens.data.to(torch_dtype)
    return base.cast(torch_dtype), coprocessor
