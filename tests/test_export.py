"""Exported graphs against the PyTorch reference, on ONNX Runtime CPU, for every tiny architecture.

Each row of a left-padded batch of two is compared with the reference run on that row alone, so padding,
write indices, masks and positions are all exercised. Tolerance 1e-4 (fp32).
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import torch

from latentcache.contract.manifest import load_manifest
from latentcache.model.generate import advance, augment, greedy_tokens, prefill
from latentcache.runtime.backends.onnxruntime import OnnxRuntimeBackend
from latentcache.runtime.generator import EndOfPrompt, Generator
from tests.exported import PROMPTS, export_tiny
from tests.tiny import ARCHITECTURES

ATOL = 1e-4


# Three families in the default run (GQA+tied, sliding window, Gemma-2 soft-caps/sandwich norms); all in slow.
DEFAULT_SET = ("llama-gqa-tied", "mistral-sliding", "gemma2")


@pytest.fixture(scope="module", params=[
    arch if arch in DEFAULT_SET else pytest.param(arch, marks=pytest.mark.slow) for arch in ARCHITECTURES
])
def exported(request, tmp_path_factory):
    return export_tiny(request.param, tmp_path_factory.mktemp(request.param), kv_update="inplace")


def test_every_graph_passes_checker_and_shape_inference(exported):
    manifest = load_manifest(exported.artifacts)
    assert set(manifest.graphs) == {"prefill", "decode", "coprocessor"}
    for spec in manifest.graphs.values():
        path = exported.artifacts / spec.file
        onnx.checker.check_model(str(path), full_check=True)
        inferred = onnx.shape_inference.infer_shapes(onnx.load(str(path)), strict_mode=True)
        assert [o.name for o in inferred.graph.output] == [s.name for s in spec.outputs]


def test_prefill_logits_and_cache_match_reference(exported):
    generator = Generator(OnnxRuntimeBackend(exported.artifacts, load_manifest(exported.artifacts), separate_decode=True))
    logits = generator.prefill(PROMPTS)
    longest = max(map(len, PROMPTS))
    for row, prompt in enumerate(PROMPTS):
        state = prefill(exported.base, prompt, 64)
        expected = exported.base.logits(state.hidden)[0].numpy()
        assert np.abs(logits[row] - expected).max() <= ATOL
        for layer in range(exported.base.config.num_layers):
            keys, values = generator.backend.read_cache(layer)
            pad = longest - len(prompt)
            assert np.abs(keys[row, :, pad:longest] - state.cache.keys[layer][0, :, : len(prompt)].numpy()).max() <= ATOL
            assert np.abs(values[row, :, pad:longest] - state.cache.values[layer][0, :, : len(prompt)].numpy()).max() <= ATOL


def test_latents_absorbed_cache_and_16_decode_steps_match_reference(exported):
    generator = Generator(OnnxRuntimeBackend(exported.artifacts, load_manifest(exported.artifacts), separate_decode=True))
    generator.prefill(PROMPTS)
    latents = generator.coprocess()
    logits = generator.absorb(latents)
    longest = max(map(len, PROMPTS))
    n_latents = latents.shape[1]
    states = []
    for row, prompt in enumerate(PROMPTS):
        state = prefill(exported.base, prompt, 64)
        points = torch.tensor([[len(prompt) - 1]])
        expected = exported.coprocessor(state.cache, points, context_len=len(prompt))[0].numpy()
        assert np.abs(latents[row] - expected).max() <= ATOL, "coprocessor latents"
        state = augment(exported.base, exported.coprocessor, state)
        assert np.abs(logits[row] - exported.base.logits(state.hidden)[0].numpy()).max() <= ATOL, "logits after absorb"
        keys, _ = generator.backend.read_cache(exported.base.config.num_layers - 1)
        ref = state.cache.keys[-1][0, :, len(prompt): len(prompt) + n_latents].numpy()
        assert np.abs(keys[row, :, longest: longest + n_latents] - ref).max() <= ATOL, "absorbed cache"
        states.append(state)
    tokens = np.array([7, 11])
    for step in range(16):
        logits = generator.decode_step(tokens)
        for row, state in enumerate(states):
            states[row] = advance(exported.base, state, torch.tensor([int(tokens[row])]))
            hidden = states[row].hidden
            assert np.abs(logits[row] - exported.base.logits(hidden)[0].numpy()).max() <= ATOL, f"decode step {step}"
        tokens = (tokens * 5 + step) % 90 + 3


@pytest.mark.parametrize("augmented", [False, True])
def test_greedy_32_tokens_equal_reference_pipeline(exported, augmented):
    generator = Generator(OnnxRuntimeBackend(exported.artifacts, load_manifest(exported.artifacts), separate_decode=True))
    policy = EndOfPrompt() if augmented else None
    tokens = np.stack(list(generator.generate(PROMPTS, 32, policy=policy)), axis=1)
    for row, prompt in enumerate(PROMPTS):
        state = prefill(exported.base, prompt, 80)
        if augmented:
            state = augment(exported.base, exported.coprocessor, state)
        assert tokens[row].tolist() == greedy_tokens(exported.base, state, 32)


@pytest.fixture(scope="module", params=["mistral-sliding", pytest.param("gemma3", marks=pytest.mark.slow)])
def portable(request, tmp_path_factory):
    return export_tiny(request.param, tmp_path_factory.mktemp(f"portable-{request.param}"), kv_update="portable")


def test_portable_lowering_uses_no_tensorscatter_and_matches_reference(portable):
    manifest = load_manifest(portable.artifacts)
    assert manifest.kv_update == "portable" and manifest.opset == 18
    ops = {node.op_type for node in onnx.load(str(portable.artifacts / "decode.onnx"), load_external_data=False).graph.node}
    assert "TensorScatter" not in ops
    generator = Generator(OnnxRuntimeBackend(portable.artifacts, manifest, separate_decode=True))
    for augmented in (False, True):
        tokens = np.stack(list(generator.generate(PROMPTS, 32, policy=EndOfPrompt() if augmented else None)), axis=1)
        for row, prompt in enumerate(PROMPTS):
            state = prefill(portable.base, prompt, 80)
            if augmented:
                state = augment(portable.base, portable.coprocessor, state)
            assert tokens[row].tolist() == greedy_tokens(portable.base, state, 32)


def test_artifacts_are_as_readable_as_other_model_files(exported):
    """Published through a staging folder (mkdtemp makes 0700) and atomic writes (mkstemp makes 0600): the
    artifacts still get the umask's usual modes, so the group can read them like any downloaded model."""
    umask = os.umask(0)
    os.umask(umask)
    assert exported.artifacts.stat().st_mode & 0o777 == 0o777 & ~umask
    for path in exported.artifacts.iterdir():
        assert path.stat().st_mode & 0o444 & ~umask == 0o444 & ~umask, path.name
