"""The trainer: exact resume after an interruption, checkpoints that refuse the wrong base, and real learning."""

import json
import shutil

import numpy as np
import pytest
import torch

from latentcache.errors import LatentcacheError
from latentcache.train.config import ConfigError, TrainConfig
from latentcache.train.trainer import Trainer

SEQ = 24


def random_sequences(count, vocab=97, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, SEQ) for _ in range(count)]


def tiny_config(path, out, **overrides):
    values = dict(base=str(path), out=str(out), num_latents=2, ahead=4, points=3, seq_len=SEQ, batch_size=2,
                  max_steps=6, warmup_steps=2, lr=1e-3, eval_every=3, save_every=3, log_every=1, eval_batches=1)
    return TrainConfig(**{**values, **overrides})


def run(config, resume=False, on_step=None, train=None):
    trainer = Trainer(config, train or random_sequences(16), random_sequences(4, seed=1), "data-fp", on_step)
    trainer.setup(resume)
    return trainer, trainer.train()


def test_interrupted_and_resumed_run_matches_uninterrupted(tiny_model, tmp_path):
    _, path = tiny_model("llama-gqa-tied")
    straight, final = run(tiny_config(path, tmp_path / "a"))

    def interrupt(step, _):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tiny_config(path, tmp_path / "b"), on_step=interrupt)
    assert json.loads((tmp_path / "b/checkpoint/state.json").read_text())["step"] == 4
    resumed, resumed_final = run(tiny_config(path, tmp_path / "b"), resume=True)
    assert resumed_final["step"] == final["step"] == 6
    assert abs(resumed_final["loss"] - final["loss"]) <= 1e-4
    assert abs(resumed_final["val_loss"] - final["val_loss"]) <= 1e-4
    for name, param in straight.trainable.items():
        assert torch.allclose(param, resumed.trainable[name], atol=1e-5), name
    steps = [json.loads(line)["step"] for line in (tmp_path / "b/metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) == [1, 2, 3, 4, 5, 6]


def test_existing_checkpoint_is_never_overwritten_without_resume(tiny_model, tmp_path):
    _, path = tiny_model("llama-gqa-tied")
    run(tiny_config(path, tmp_path / "a", max_steps=3))
    with pytest.raises(LatentcacheError, match="pass --resume"):
        run(tiny_config(path, tmp_path / "a", max_steps=3))


def test_resume_refuses_changed_config_and_other_base(tiny_model, tmp_path):
    _, path = tiny_model("llama-gqa-tied")
    _, other = tiny_model("qwen2-bias")
    run(tiny_config(path, tmp_path / "a", max_steps=3))
    with pytest.raises(LatentcacheError, match=r"changed config \(lr 0.0005 \(was 0.001\)\)"):
        run(tiny_config(path, tmp_path / "a", lr=5e-4), resume=True)
    with pytest.raises(LatentcacheError, match=r"trained on another base than .*qwen2-bias.* \(fingerprint mismatch\)"):
        run(tiny_config(other, tmp_path / "a"), resume=True)
    moved = tmp_path / "moved-base"  # the base is the weights, not the path: a moved copy resumes
    shutil.copytree(path, moved)
    _, final = run(tiny_config(moved, tmp_path / "a", max_steps=4), resume=True)
    assert final["step"] == 4


def test_config_errors_are_reported_together():
    with pytest.raises(ConfigError) as error:
        TrainConfig(base="b", out="o", seq_len=16, ahead=16, batch_size=0)
    message = str(error.value)
    assert "batch_size must be >= 1" in message and "no context" in message


@pytest.mark.parametrize("variant, options, gain", [
    ("paper", {}, 0.05),  # measured: 4.52 vs 4.63
    # The gate starts nearly closed (harmless) and must open for any gain: measured 4.612 vs 4.629, gate -4 -> -2.1.
    ("gated", {"gate_init": -4.0, "gate_lr": 0.1}, 0.01),
])
def test_fifty_cpu_steps_beat_the_frozen_baseline(tiny_model, tmp_path, variant, options, gain):
    """A small skewed text: the latents learn to steer the frozen base (the machinery learns, nothing more)."""
    _, path = tiny_model("llama-gqa-tied")
    rng = np.random.default_rng(0)
    phrase = rng.integers(0, 97, 6)
    text = [np.roll(np.tile(phrase, 8), -k)[:SEQ] for k in range(12)]
    config = tiny_config(path, tmp_path / "smoke", max_steps=50, eval_every=50, save_every=50, log_every=10,
                         lr=3e-3, warmup_steps=5, variant=variant, **options)
    trainer = Trainer(config, text, text[:4], "smoke", None)
    trainer.setup(resume=False)
    before = trainer.validate()
    final = trainer.train()
    assert final["val_loss"] < final["val_base_loss"] - gain, final
    assert final["val_loss"] < before["val_loss"]
    if variant == "gated":
        assert trainer.coprocessor.latent_gate.mean().item() > options["gate_init"] + 0.5  # it opened


def test_checkpoint_reloads_the_same_coprocessor_and_refuses_another_base(tiny_model, tmp_path):
    from latentcache.model.checkpoint import load_coprocessor
    from latentcache.train.objective import base_cache_for

    _, path = tiny_model("llama-gqa-tied")
    _, other = tiny_model("qwen2-bias")
    trainer, _ = run(tiny_config(path, tmp_path / "a", max_steps=3, lora_rank=2))
    base, reloaded = load_coprocessor(tmp_path / "a/checkpoint", path)
    tokens = torch.randint(0, 97, (1, 12))
    cache = base_cache_for(base, tokens)
    with torch.no_grad():
        expected = trainer.coprocessor(cache, torch.tensor([[11]]), context_len=12)
        assert torch.allclose(reloaded(cache, torch.tensor([[11]]), context_len=12), expected, atol=1e-6)
    with pytest.raises(LatentcacheError, match="trained on another base"):
        load_coprocessor(tmp_path / "a/checkpoint", other)


def test_packed_checkpoint_is_fp16_without_optimizer_and_loads_as_rounded_weights(tiny_model, tmp_path):
    from safetensors.torch import load_file

    from latentcache.model.checkpoint import load_coprocessor, pack_checkpoint

    _, path = tiny_model("llama-gqa-tied")
    run(tiny_config(path, tmp_path / "a", max_steps=3, lora_rank=2))
    packed = pack_checkpoint(tmp_path / "a/checkpoint", tmp_path / "shipped")
    assert sorted(f.name for f in packed.iterdir()) == ["coprocessor.safetensors", "state.json"]
    source, shipped = load_file(tmp_path / "a/checkpoint/coprocessor.safetensors"), load_file(packed / "coprocessor.safetensors")
    assert set(source) == set(shipped) and all(t.dtype == torch.float16 for t in shipped.values())
    _, reloaded = load_coprocessor(packed, path)
    for name, param in reloaded.trainable_parameters().items():
        assert param.dtype == torch.float32 and torch.equal(param, source[name].half().float())
    assert json.loads((packed / "state.json").read_text())["packed_dtype"] == "float16"


def test_validation_baseline_reads_only_the_targets_document(tiny_model, tmp_path):
    """Packed documents: the frozen baseline must see the context the augmented pass sees (the target's own
    document), or ``val_delta`` credits the latents with the context the baseline got and they did not."""
    from latentcache.train.trainer import VALIDATION_STREAM

    hf, path = tiny_model("llama-gqa-tied")
    eos = hf.config.eos_token_id
    rows = []
    for row in random_sequences(4, seed=3):
        row[row == eos] = eos + 1
        row[[5, 11]] = eos  # three documents per sequence
        rows.append(row)
    trainer = Trainer(tiny_config(path, tmp_path / "a", eval_batches=2), random_sequences(16), rows, "fp")
    trainer.setup(resume=False)
    metrics = trainer.validate()
    points = trainer._points(len(rows), [trainer.config.seed, VALIDATION_STREAM])

    def reference(within_document):
        """Mean NLL of the ahead targets from transformers itself, on the document prefix ending at each target."""
        nll = []
        for row, row_points in zip(rows, points.tolist()):
            starts = [0] + [i + 1 for i in np.flatnonzero(row == eos)]
            for p in row_points:
                for k in range(1, 5):  # x[p+k] from the slot before it, reading that slot's document only
                    slot = p + k - 1
                    start = max(s for s in starts if s <= slot) if within_document else 0
                    with torch.no_grad():
                        logits = hf(torch.from_numpy(row[start : slot + 1])[None],
                                    position_ids=torch.arange(start, slot + 1)[None]).logits[0, -1].float()
                    nll.append(-torch.log_softmax(logits, -1)[row[p + k]].item())
        return float(np.mean(nll))

    assert metrics["val_base_loss"] == pytest.approx(reference(within_document=True), abs=1e-5)
    assert abs(reference(within_document=False) - metrics["val_base_loss"]) > 1e-3  # the test can tell


def test_latents_never_reach_across_an_end_of_sequence(tiny_model):
    """An ahead window that crosses an EOS: targets predicted from the next document get exactly the baseline's
    log-probs (no context of ``p``'s document, no latents), the ones before it still get the latents."""
    from latentcache.model import load_decoder
    from latentcache.model.coprocessor import Coprocessor, CoprocessorConfig
    from latentcache.train.objective import (
        augmented_predictions,
        baseline_logprobs,
        document_ids,
    )

    hf, path = tiny_model("llama-gqa-tied")
    base = load_decoder(path)
    coprocessor = Coprocessor(base, CoprocessorConfig(num_latents=3, variant="gated", gate_init=-1.0), seed=0)  # a gate open enough to see
    eos, ahead = hf.config.eos_token_id, 6
    tokens = torch.from_numpy(random_sequences(2, seed=5)[0] % (eos - 1) + eos + 1)[None]  # no EOS by chance
    tokens[0, 9] = eos  # documents 0..9 and 10..23
    points = torch.tensor([[6, 12]])  # group 0: x[7..12], its slots 8 and 9 are in doc 0, slots 10.. in doc 1
    docs = document_ids(tokens, eos)
    with torch.no_grad():
        augmented = augmented_predictions(base, coprocessor, tokens, points, ahead, docs).target_logprobs[0]
    baseline = baseline_logprobs(base, tokens, points, ahead, docs)[0]
    # Target x[6+k] comes from slot 5+k: k <= 4 reads document 0 (and the latents), k >= 5 document 1 only.
    assert torch.allclose(augmented[0, 4:], baseline[0, 4:], atol=1e-5)
    assert (augmented[0, :4] - baseline[0, :4]).abs().min() > 1e-4
    assert (augmented[1] - baseline[1]).abs().min() > 1e-4


def test_a_checkpoint_from_before_the_variants_loads_as_the_papers(tiny_model, tmp_path):
    # Checkpoints written before the augmentation variants existed have no "variant": they were the paper's.
    from latentcache.model.checkpoint import STATE, load_coprocessor

    _, path = tiny_model("llama-gqa-tied")
    run(tiny_config(path, tmp_path / "old", max_steps=3, variant="paper"))
    state_file = tmp_path / "old" / "checkpoint" / STATE
    state = json.loads(state_file.read_text())
    for section in ("coprocessor_config", "train_config"):
        for key in ("variant", "gate_init", "gate_lr", "attention"):
            state[section].pop(key, None)
    state_file.write_text(json.dumps(state))
    _, coprocessor = load_coprocessor(tmp_path / "old" / "checkpoint", path)
    assert coprocessor.variant == "paper" and coprocessor.latent_gate is None
    _, final = run(tiny_config(path, tmp_path / "old", max_steps=4, variant="paper"), resume=True)
    assert final["step"] == 4
    with pytest.raises(LatentcacheError, match=r"variant 'gated' \(was 'paper'\)"):
        run(tiny_config(path, tmp_path / "old", max_steps=5, variant="gated"), resume=True)
    state["coprocessor_config"]["variant"] = "sideways"
    state_file.write_text(json.dumps(state))
    with pytest.raises(LatentcacheError, match="variant must be one of gated, refeed, paper, got 'sideways'"):
        load_coprocessor(tmp_path / "old" / "checkpoint", path)


def test_bad_variant_options_are_one_line_errors():
    with pytest.raises(ConfigError, match="variant must be one of gated, refeed, paper, not 'x'.*gate_lr must be"):
        TrainConfig(base="b", out="o", variant="x", gate_lr=0.0)
    with pytest.raises(ConfigError, match="attention must be auto, flex or sdpa"):
        TrainConfig(base="b", out="o", attention="fast")
