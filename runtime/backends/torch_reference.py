"""The PyTorch reference as a backend: the graph modules export traces, run eagerly on the original weights.

It is the one place in the runtime that reaches the model core's torch code (lazily, so the runtime still
imports without torch): the base and coprocessor are loaded from the paths the manifest records under
``sources``, so it serves development machines and parity checks, not edge devices. Same contract, same
cache layout, same roles as every other backend.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from latentcache.contract import manifest as contract
from latentcache.contract.dtypes import to_short
from latentcache.runtime.backend import Backend, BackendUnavailable


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, artifacts: Path, manifest: contract.Manifest, device: str | None = None) -> None:
        super().__init__(artifacts, manifest)
        try:
            import torch
        except ImportError:
            raise BackendUnavailable("the torch backend needs PyTorch: pip install 'latentcache[train]'") from None
        from latentcache.model.checkpoint import load_models
        from latentcache.model.graph_steps import CoprocessorStep, base_steps
        from latentcache.model.kv_update import portable_update

        sources = manifest.sources
        base_dir = Path(sources.get("base") or "")
        if not (base_dir / "config.json").is_file():
            raise BackendUnavailable(
                f"the torch backend loads the original checkpoint, and {base_dir} (recorded at export) is not there"
            )
        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        checkpoint = Path(sources["coprocessor"]) if sources.get("coprocessor") else None
        base, coprocessor = load_models(base_dir, checkpoint, to_short(manifest.dtype))
        self.dtype = getattr(torch, manifest.dtype)
        self.steps = {name: step.to(self.device) for name, step in base_steps(base, portable_update, coprocessor).items()}
        if coprocessor is not None:
            self.steps["coprocessor"] = CoprocessorStep(coprocessor).to(self.device)
        kv = manifest.kv
        self.cache = [torch.zeros(kv.shape(), dtype=self.dtype, device=self.device) for _ in range(2 * kv.num_layers)]

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        tensors = {role: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for role, v in feeds.items()}
        with torch.no_grad():
            if graph == "coprocessor":
                latents = self.steps[graph](tensors[contract.POSITION_IDS], tensors[contract.ATTENTION_MASK], self.cache)
                return {contract.LATENTS: latents.float().cpu().numpy()}
            extra = {}
            if graph == "prefill":
                extra = {"inputs_embeds": tensors[contract.INPUTS_EMBEDS].to(self.dtype),
                         "embeds_mask": tensors[contract.EMBEDS_MASK]}
            logits, *self.cache = self.steps[graph](
                tensors[contract.INPUT_IDS], tensors[contract.POSITION_IDS], tensors[contract.WRITE_INDEX],
                tensors[contract.ATTENTION_MASK], self.cache, **extra)
        return {contract.LOGITS: logits.cpu().numpy()}

    def reset(self) -> None:
        for tensor in self.cache:
            tensor.zero_()

    def read_cache(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        return self.cache[2 * layer].float().cpu().numpy(), self.cache[2 * layer + 1].float().cpu().numpy()
