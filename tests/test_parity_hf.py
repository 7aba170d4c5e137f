"""The owned decoder against transformers (the oracle), fp32 on the CPU, for every supported architecture."""

import pytest
import torch

from latentcache.model import KVCache, load_decoder
from latentcache.model.generate import generate
from latentcache.model.masks import causal_mask, positions_from_padding
from tests.tiny import ARCHITECTURES

ATOL = 1e-4


def left_padded_batch(batch: int, length: int, vocab: int):
    """Random ids with rows padded on the left by 0, length//3 and length//2 tokens (row 0 unpadded)."""
    ids = torch.randint(0, vocab, (batch, length))
    valid = torch.ones(batch, length, dtype=torch.bool)
    for row in range(1, batch):
        valid[row, : (length * row) // (2 * (batch - 1) + 1)] = False
    return ids, valid


def full_forward_logits(decoder, ids, valid):
    mask = causal_mask(valid, torch.arange(ids.shape[1]))
    return decoder.logits(decoder(ids, position_ids=positions_from_padding(valid), attention_mask=mask))


@pytest.mark.parametrize("length", [1, 7, 33])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_logits_match_transformers(tiny_model, arch, batch, length):
    hf, path = tiny_model(arch)
    decoder = load_decoder(path)
    ids, valid = left_padded_batch(batch, length, hf.config.vocab_size)
    assert batch == 1 or length == 1 or not valid.all(), "the batch of 3 must contain padding"
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=valid.long(), position_ids=positions_from_padding(valid)).logits
        ours = full_forward_logits(decoder, ids, valid)
    # Padding rows are discarded by design (see latentcache.model.masks); compare real tokens only.
    diff = (expected - ours)[valid].abs().max().item()
    assert diff <= ATOL, f"{arch}: max abs logit diff {diff:.3g}"


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_prefill_then_16_decode_steps_equals_full_forward(tiny_model, arch):
    _, path = tiny_model(arch)
    decoder = load_decoder(path)
    ids, valid = left_padded_batch(3, 33, decoder.config.vocab_size)
    prompt = 17
    with torch.no_grad():
        full = full_forward_logits(decoder, ids, valid)
        cache = KVCache(decoder.config, batch=3, max_seq=40)
        positions = positions_from_padding(valid)
        mask = causal_mask(valid[:, :prompt], torch.arange(prompt))
        steps = [decoder.logits(decoder(ids[:, :prompt], position_ids=positions[:, :prompt], attention_mask=mask,
                                        cache=cache, write_index=0))[:, -1]]
        for slot in range(prompt, 33):
            mask = causal_mask(valid[:, : slot + 1], torch.tensor([slot]))
            hidden = decoder(ids[:, slot : slot + 1], position_ids=positions[:, slot : slot + 1],
                             attention_mask=mask, cache=cache, write_index=slot)
            steps.append(decoder.logits(hidden)[:, -1])
    incremental = torch.stack(steps, dim=1)  # predictions made at slots 16..32
    diff = (incremental - full[:, prompt - 1 :]).abs().max().item()
    assert len(steps) == 17 and diff <= ATOL, f"{arch}: incremental vs full max abs diff {diff:.3g}"


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_greedy_32_tokens_match_transformers_generate(tiny_model, arch):
    hf, path = tiny_model(arch)
    decoder = load_decoder(path)
    ids, valid = left_padded_batch(3, 7, hf.config.vocab_size)
    pad = 0
    ids = ids.masked_fill(~valid, pad)
    with torch.no_grad():
        expected = hf.generate(
            input_ids=ids, attention_mask=valid.long(), max_new_tokens=32, min_new_tokens=32, do_sample=False,
            pad_token_id=pad, eos_token_id=None,
        )[:, ids.shape[1] :]
    ours = generate(decoder, ids, valid, max_new_tokens=32)
    assert ours.shape == (3, 32)
    assert torch.equal(ours, expected), f"{arch}: first mismatch at {(ours != expected).nonzero()[0].tolist()}"


@pytest.mark.parametrize("arch", ["llama-gqa-tied", "gemma2"])
def test_inputs_embeds_path_equals_token_path(tiny_model, arch):
    """Latents enter as input embeddings; token embeddings (Gemma's sqrt(d) scale included) must match."""
    _, path = tiny_model(arch)
    decoder = load_decoder(path)
    ids, valid = left_padded_batch(1, 7, decoder.config.vocab_size)
    mask, positions = causal_mask(valid, torch.arange(7)), positions_from_padding(valid)
    with torch.no_grad():
        by_ids = decoder(ids, position_ids=positions, attention_mask=mask)
        by_embeds = decoder(inputs_embeds=decoder.embed(ids), position_ids=positions, attention_mask=mask)
    assert torch.equal(by_ids, by_embeds)


def test_sharded_checkpoint_loads_identically(tiny_model, tmp_path):
    hf, path = tiny_model("qwen2-bias")
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    single, sharded = load_decoder(path), load_decoder(tmp_path)
    for (name, a), (_, b) in zip(single.state_dict().items(), sharded.state_dict().items()):
        assert torch.equal(a, b), name
