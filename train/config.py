"""The training run's typed configuration: a YAML file plus command-line overrides, validated at once.

Every problem is collected and reported in one line, so a bad config costs one attempt, not five.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from latentcache.errors import LatentcacheError
from latentcache.model.coprocessor import DEFAULT_GATE_INIT
from latentcache.model.layout import VARIANTS

LEGACY_VARIANT = "paper"  # what a run saved before the variants existed trained

# Fields a resumed run may change: they do not alter the optimisation path up to the resumed step. The base
# is checked by its weights' fingerprint instead of its path, so a moved copy still resumes.
# The data is checked by the contents' fingerprint (train/data/cache.py), so a moved or re-mounted corpus resumes.
RESUMABLE_CHANGES = {"max_steps", "log_every", "eval_every", "save_every", "eval_batches", "out", "base", "data",
                     "attention"}  # the attention kernel computes the same function


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class ConfigError(LatentcacheError):
    """A training configuration that cannot run."""


@dataclass(frozen=True)
class TrainConfig:
    base: str
    out: str
    data: tuple[str, ...] = ()  # empty: the Gutenberg corpus from shared/data
    num_latents: int = 16  # N_L
    ahead: int = 16  # N_A
    points: int = 0  # N_P per sequence; 0: the paper's 128 per 2048 tokens, scaled to seq_len
    seq_len: int = 1024
    batch_size: int = 8
    grad_accum: int = 1
    max_steps: int = 1000
    lr: float = 1e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    init: str = "base"  # "base" | "random"
    lora_rank: int = 0  # 0: full fine-tuning
    pause: bool = False  # the Pause-token control
    val_fraction: float = 0.02
    eval_every: int = 100
    eval_batches: int = 4
    save_every: int = 100
    log_every: int = 10
    seed: int = 0
    precision: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on CPU) | "fp32" | "bf16"
    device: str = "auto"
    document_masking: bool = True  # groups never read across an end-of-sequence boundary
    variant: str = "gated"  # how the base reads the latents: gated | refeed | paper (latentcache.model.layout)
    gate_init: float = DEFAULT_GATE_INIT  # gated: the latent gate's initial logit bias (closed: the base as it was)
    gate_lr: float = 0.05  # gated: the gate's own learning rate (a logit bias moves ~lr per Adam step)
    attention: str = "auto"  # "auto" (SDPA) | "sdpa" | "flex" (FlexAttention block masks, CUDA only)

    def __post_init__(self) -> None:
        if not self.points:
            object.__setattr__(self, "points", max(1, round(128 * self.seq_len / 2048)))
        object.__setattr__(self, "data", tuple(str(d) for d in self.data))
        problems = self._problems()
        if problems:
            raise ConfigError("invalid training config: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        problems = []
        positive = ("num_latents", "ahead", "seq_len", "batch_size", "grad_accum", "max_steps", "eval_every",
                    "save_every", "log_every", "eval_batches")
        problems += [f"{name} must be >= 1" for name in positive if getattr(self, name) < 1]
        if self.ahead + 1 > self.seq_len:
            problems.append(f"ahead {self.ahead} leaves no context in a sequence of {self.seq_len}; lower --ahead "
                            "or raise --seq-len")
        elif self.points > self.seq_len - self.ahead:
            problems.append(
                f"{self.points} points with {self.ahead} ahead tokens do not fit a sequence of {self.seq_len}; "
                "lower --points or --ahead, or raise --seq-len"
            )
        if not 0 <= self.val_fraction < 1:
            problems.append("val_fraction must be in [0, 1)")
        floats = ("lr", "min_lr_ratio", "weight_decay", "grad_clip", "val_fraction")
        problems += [f"{name} must be a finite number, got {getattr(self, name)!r}" for name in floats
                     if not _finite(getattr(self, name))]
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            problems.append("lr must be > 0 and min_lr_ratio in [0, 1]")
        if self.weight_decay < 0 or self.grad_clip <= 0:
            problems.append("weight_decay must be >= 0 and grad_clip > 0")
        if self.seed < 0 or self.lora_rank < 0 or self.warmup_steps < 0:
            problems.append("seed, lora_rank and warmup_steps must be >= 0")
        if self.init not in ("base", "random"):
            problems.append(f"init must be 'base' or 'random', not '{self.init}'")
        if self.precision not in ("auto", "fp32", "bf16"):
            problems.append(f"precision must be auto, fp32 or bf16, not '{self.precision}'")
        if self.pause and (self.lora_rank or self.init != "base"):
            problems.append("the pause control has no network: drop lora_rank and init")
        if self.attention not in ("auto", "flex", "sdpa"):
            problems.append(f"attention must be auto, flex or sdpa, not '{self.attention}'")
        if self.variant not in VARIANTS:
            problems.append(f"variant must be one of {', '.join(VARIANTS)}, not '{self.variant}'")
        if not _finite(self.gate_init) or not -1e4 < self.gate_init <= 0:
            problems.append(f"gate_init must be a finite logit bias <= 0, got {self.gate_init!r}")
        if not _finite(self.gate_lr) or self.gate_lr <= 0:
            problems.append(f"gate_lr must be a finite number > 0, got {self.gate_lr!r}")
        return problems

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["data"] = list(self.data)
        return data

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """A config as ``to_dict`` wrote it, also from checkpoints and YAML written before N_L was spelled
        ``num_latents`` everywhere (they said ``latents``)."""
        values = dict(values)
        if "latents" in values and "num_latents" not in values:
            values["num_latents"] = values.pop("latents")
        values.setdefault("variant", LEGACY_VARIANT)  # written before the variants existed
        if "data" in values:
            values["data"] = tuple(values["data"])
        return cls(**values)

    @classmethod
    def from_sources(cls, yaml_path: Path | None, overrides: dict[str, Any]) -> TrainConfig:
        """YAML values, then the command line's (``None`` = not given) on top."""
        values: dict[str, Any] = {}
        if yaml_path is not None:
            values.update(_read_yaml(Path(yaml_path)))
            if "latents" in values and "num_latents" not in values:
                values["num_latents"] = values.pop("latents")  # the key before N_L had one name
        values.update({k: v for k, v in overrides.items() if v is not None and v != ()})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown training config keys: {', '.join(unknown)}")
        missing = [name for name in ("base", "out") if name not in values]
        if missing:
            raise ConfigError(f"missing required config: {', '.join(missing)} (give --{missing[0]})")
        return cls(**values)

    def diff(self, other: TrainConfig) -> list[str]:
        """Fields that differ from ``other`` and would change the run if resumed."""
        mine, theirs = self.to_dict(), other.to_dict()
        return sorted(k for k in mine if k not in RESUMABLE_CHANGES and mine[k] != theirs.get(k))


@dataclass(frozen=True)
class EvalConfig:
    """`latentcache eval`: Table-1 perplexity by position (and benchmarks) of coprocessors against the base."""

    base: Path
    json_out: Path
    coprocessors: tuple[Path, ...] = ()
    data: tuple[str, ...] = ()  # empty: held-out Gutenberg books + WikiText-2 test
    seq_len: int = 1024
    sequences: int = 32  # per validation set
    batch_size: int = 2  # >= 2: the shuffled-latents control rolls latents across the batch
    points: int = 16  # augmentation points per sequence
    shuffled: bool = True  # also run the shuffled-latents control
    tasks: tuple[str, ...] = ()  # benchmarks, the coprocessor called once at the end of the prompt
    limit: int | None = None  # items per benchmark task
    device: str = "auto"  # auto: CUDA when there is one

    def __post_init__(self) -> None:
        for name in ("coprocessors", "data", "tasks"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "base", Path(self.base))
        object.__setattr__(self, "json_out", Path(self.json_out))
        problems = [f"{name} must be >= 1" for name in ("sequences", "points") if getattr(self, name) < 1]
        if self.batch_size < 2:
            problems.append("batch_size must be >= 2 (the shuffled control rolls latents across the batch)")
        if self.limit is not None and self.limit < 1:
            problems.append("limit must be >= 1")
        if problems:
            raise ConfigError("invalid eval config: " + "; ".join(problems))


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys")
    return loaded
