"""Tiny exported artifacts for the export and runtime tests: a random base, a perturbed LoRA coprocessor.

The coprocessor is the default (gated) variant unless asked otherwise, with a random, mostly open gate per layer
and head: closed, the latents would hardly change a token and the parity tests would prove little.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from tests.tiny import build_tiny, save_tiny_tokenizer

PROMPTS = [[5, 17, 33, 8, 41, 12, 60, 9, 27], [44, 6, 71, 30, 15]]  # left-padded to one batch of two
NUM_LATENTS = 4


@dataclass
class Exported:
    artifacts: Path
    base_dir: Path
    checkpoint: Path
    base: object  # the reference Decoder (fp32; with quantized weights, the graphs' own dequantized values)
    coprocessor: object  # the reference Coprocessor (LoRA unmerged; merged with quantized weights)
    backend_options: dict = field(default_factory=dict)  # what an ONNX Runtime backend needs to match the reference
    atol: float = 1e-4  # fp32 graphs against the fp32 reference


def save_random_coprocessor(base_dir: Path, out: Path, num_latents: int = NUM_LATENTS, seed: int = 0,
                            variant: str = "gated") -> Path:
    """A LoRA coprocessor checkpoint with random (non-zero) adapters and gate, as training would write it."""
    from latentcache.model import load_decoder
    from latentcache.model.checkpoint import base_fingerprint, save_checkpoint
    from latentcache.model.coprocessor import Coprocessor, CoprocessorConfig

    config = CoprocessorConfig(num_latents=num_latents, lora_rank=4, variant=variant)
    coprocessor = Coprocessor(load_decoder(base_dir), config, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in coprocessor.trainable_parameters().items():
            if "lora_b" in name:  # zero at init would make the adapters a no-op
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
            if name == "latent_gate":  # per head between +6 and +10 (wide open): latents then change greedy tokens
                param.copy_(6 + torch.rand(param.shape, generator=generator) * 4)
            if name == "latent_scale":  # latents far louder than token embeddings: they must move the tokens
                param.mul_(30)
    state = {"step": 0, "train_config": {"seed": seed}, "coprocessor_config": vars(config),
             "fingerprints": {"base": base_fingerprint(base_dir)}, "metrics": {}}
    save_checkpoint(out, coprocessor.trainable_parameters(), None, state)
    return out


def export_tiny(arch: str, directory: Path, kv_update: str = "inplace", batch: int = 2, max_seq: int = 64,
                dtype: str = "fp32", variant: str = "gated", weights: str = "float", ops: str = "standard") -> Exported:
    from latentcache.export.onnx_export import ExportConfig, export_artifacts
    from latentcache.export.quantize import load_graph_weights
    from latentcache.model.checkpoint import load_coprocessor

    base_dir = directory / "base"
    build_tiny(arch, base_dir)
    save_tiny_tokenizer(base_dir)
    checkpoint = save_random_coprocessor(base_dir, directory / "coprocessor", variant=variant)
    artifacts = export_artifacts(
        ExportConfig(base=base_dir, out=directory / "artifacts", coprocessor=checkpoint, dtype=dtype,
                     max_seq=max_seq, batch=batch, kv_update=kv_update, weights=weights, ops=ops),
        progress=lambda message: None,
    )
    base, coprocessor = load_coprocessor(checkpoint, base_dir)
    if weights == "float":
        return Exported(artifacts, base_dir, checkpoint, base, coprocessor)
    load_graph_weights(artifacts, base, coprocessor)  # the reference computes with the graphs' weights
    # int4 runs fp32 products on request: exact. int8's MatMulNBits always quantizes
    # activations (its fast path), ~1 % per product on the tiny models: 3e-2 still fails a wrong weight layout or a
    # broken graph by orders.
    return Exported(artifacts, base_dir, checkpoint, base, coprocessor, {"int8_activations": False},
                    atol=1e-4 if weights == "int4" else 3e-2)
