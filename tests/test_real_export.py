"""SmolLM2-135M-Instruct exported and run on ONNX Runtime CPU against the PyTorch reference (slow)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "List three prime numbers."]


def reference_tokens(base_dir, ids, count):
    from latentcache.model import load_decoder
    from latentcache.model.generate import greedy_tokens, prefill

    base = load_decoder(base_dir)
    return greedy_tokens(base, prefill(base, ids, 256), count), base


@pytest.fixture(scope="module")
def demo_artifacts(smollm2_dir):
    """SmolLM2 fp32 with the embedded default coprocessor, exported once (the demo's artifacts)."""
    from latentcache.demo import ensure_artifacts

    return ensure_artifacts(lambda message: None)


def test_fp32_greedy_64_tokens_identical_and_chat_template_matches_transformers(smollm2_dir, demo_artifacts):
    from transformers import AutoTokenizer

    from latentcache.runtime import Pipeline

    pipeline = Pipeline(demo_artifacts, "onnxruntime-cpu")  # coprocessor off: the base graphs alone
    hf_tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    for prompt in PROMPTS:
        ids = pipeline.tokenizer.encode(prompt)
        assert ids == list(hf_tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                            add_generation_prompt=True, return_dict=False))
        expected, _ = reference_tokens(smollm2_dir, ids, 64)
        tokens = [int(t[0]) for t in pipeline.generator.generate([ids], 64)]
        assert tokens[: len(expected)] == expected
    answer = "".join(pipeline.stream("What is the capital of France?", 32))
    assert "Paris" in answer


def test_fp16_logits_cosine_and_16_greedy_tokens(smollm2_dir, smollm2_fp16):
    from latentcache.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from latentcache.runtime.generator import Generator
    from latentcache.contract.manifest import load_manifest
    from latentcache.model.generate import prefill

    artifacts = smollm2_fp16
    generator = Generator(OnnxRuntimeBackend(artifacts, load_manifest(artifacts), separate_decode=True))
    from latentcache.runtime.tokenizer import Tokenizer

    tokenizer = Tokenizer(artifacts, load_manifest(artifacts))
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt)
        expected, base = reference_tokens(smollm2_dir, ids, 16)
        reference_logits = base.logits(prefill(base, ids, 256).hidden)[0].numpy()
        logits = generator.prefill([ids])[0]
        cosine = float(logits @ reference_logits / np.linalg.norm(logits) / np.linalg.norm(reference_logits))
        assert cosine >= 0.999, f"fp16 prefill logits cosine {cosine:.5f}"
        tokens = [int(t[0]) for t in generator.generate([ids], 16)]
        assert tokens[: len(expected)] == expected


def test_demo_prints_both_answers_and_the_latency_table(demo_artifacts):
    from click.testing import CliRunner

    from latentcache.cli import main

    result = CliRunner().invoke(main, ["demo", "--max-new-tokens", "16"])
    assert result.exit_code == 0, result.output
    assert "[base] The capital of France is Paris" in result.stdout
    assert "[augmented] " in result.stdout and "coproc+absorb" in result.stdout
