"""Tiny random Hugging Face models of every supported architecture, built in the test (no downloads).

Each entry is a transformers config small enough to run in milliseconds yet exercising the feature that
distinguishes it (GQA/MQA, biases, tied or untied heads, rope scaling, sliding windows, soft-caps, q/k norms).
Windows are short (8) so that the 33-token prompts of the parity tests actually cross them.
"""

from __future__ import annotations

from pathlib import Path

import torch

COMMON = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, max_position_embeddings=256)


def tiny_configs() -> dict:
    from transformers import Gemma2Config, Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config

    return {
        "llama-gqa-tied": LlamaConfig(**COMMON, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
        "llama3-rope-scaling": LlamaConfig(
            **COMMON, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
            rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
        ),
        "llama-mqa-bias": LlamaConfig(
            **COMMON, num_attention_heads=4, num_key_value_heads=1, attention_bias=True, mlp_bias=True,
            tie_word_embeddings=False, rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
        ),
        "mistral-sliding": MistralConfig(
            **COMMON, num_attention_heads=4, num_key_value_heads=2, sliding_window=8, tie_word_embeddings=False
        ),
        "qwen2-bias": Qwen2Config(**COMMON, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
        "gemma2": Gemma2Config(
            **{**COMMON, "num_hidden_layers": 3}, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            sliding_window=8, query_pre_attn_scalar=16, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
        ),
        "gemma3": Gemma3TextConfig(
            **{**COMMON, "num_hidden_layers": 3}, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
            sliding_window=8, query_pre_attn_scalar=16,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={
                "full_attention": {"rope_type": "linear", "rope_theta": 1000000.0, "factor": 4.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            },
        ),
    }


def build_tiny(name: str, directory: Path, seed: int = 0):
    """Save a random HF model (with non-trivial norm weights and biases) to ``directory``; return it, fp32, eval."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_configs()[name], dtype=torch.float32)
    with torch.no_grad():
        for pname, param in model.named_parameters():
            # Default init leaves norms at identity and biases at zero, which would hide a wrong norm style.
            if "norm" in pname or pname.endswith("bias"):
                param.add_(torch.randn_like(param) * 0.1)
    model.save_pretrained(directory)
    return model.eval()


ARCHITECTURES = [
    "llama-gqa-tied", "llama3-rope-scaling", "llama-mqa-bias", "mistral-sliding", "qwen2-bias", "gemma2", "gemma3",
]


TOKENIZER_ALPHABET = " abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"-()\n"


def save_tiny_tokenizer(directory: Path) -> None:
    """A character-level ``tokenizer.json`` (ids 0-2 special, then ``TOKENIZER_ALPHABET``) fitting every tiny vocab."""
    import json

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({ch: i + 3 for i, ch in enumerate(TOKENIZER_ALPHABET)})
    assert len(vocab) <= COMMON["vocab_size"]
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens(["<unk>", "<s>", "</s>"])
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
