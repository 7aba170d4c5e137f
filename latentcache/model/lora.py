"""LoRA adapters for the coprocessor: ``y = W x + (alpha / r) * B A x`` on every projection, merged for export."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Module):
    """``y = W x + (alpha / r) * B A x`` with ``W`` frozen; ``B`` starts at zero so training starts at ``W``."""

    def __init__(self, linear: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = linear.requires_grad_(False)
        # Drawn on the CPU (the same init whatever the device), then placed beside W: a coprocessor built on a
        # CUDA base (`latentcache eval` on a GPU) must not mix devices.
        lora_a = torch.empty(rank, linear.in_features, dtype=linear.weight.dtype)
        nn.init.kaiming_uniform_(lora_a, a=math.sqrt(5))
        self.lora_a = nn.Parameter(lora_a.to(linear.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(linear.out_features, rank, dtype=linear.weight.dtype,
                                               device=linear.weight.device))
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scale

    def merged(self) -> nn.Linear:
        merged = copy.deepcopy(self.base)
        merged.weight.data += (self.lora_b @ self.lora_a).to(merged.weight.dtype) * self.scale
        return merged


def add_lora(network: nn.Module, rank: int, alpha: float) -> None:
    """Freeze ``network`` and wrap every projection in a trainable ``LoRALinear``."""
    network.requires_grad_(False)
    for module in list(network.modules()):
        for name in LORA_TARGETS:
            child = getattr(module, name, None)
            if isinstance(child, nn.Linear):
                setattr(module, name, LoRALinear(child, rank, alpha))


def merge_lora(network: nn.Module) -> None:
    """Fold every adapter into its linear layer (for export: plain weights, no adapter ops)."""
    for module in list(network.modules()):
        for name in LORA_TARGETS:
            child = getattr(module, name, None)
            if isinstance(child, LoRALinear):
                setattr(module, name, child.merged())
