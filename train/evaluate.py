"""The paper's Table 1: relative perplexity change of the n-th token after the latents, against the frozen base.

Both numbers come from the *same* targets: for every sampled augmentation point ``p`` and offset ``k`` the
target is ``x[p+k]``; the frozen base predicts it from ``x[..p+k-1]`` (``baseline_logprobs``), the augmented
model from ``x[..p]``, the N_L latents and ``x[p+1..p+k-1]`` (``augmented_predictions``, the training pass).
Position 1 is the token right after the latents, position 32 the one predicted after 31 ahead tokens.

Controls come from the same code: no coprocessor is the frozen base itself (relative change 0); the Pause
control is a ``Coprocessor`` built with ``pause=True``; ``shuffle_latents`` hands every sequence the latents
of its neighbour in the batch, so a gain that survives it is not about *this* context (paper notes, 16c).

Packed text (documents joined by EOS): with ``eos_id`` set, both passes read the context within the target's
document only, exactly as training does with ``document_masking``; the baseline never sees more than the
augmented model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from latentcache.errors import LatentcacheError
from latentcache.model import Decoder
from latentcache.model.coprocessor import Coprocessor
from latentcache.model.layout import sample_points
from latentcache.train.objective import augmented_predictions, baseline_logprobs, check_positions, document_ids

POSITIONS = (1, 2, 4, 8, 16, 32)


@dataclass(frozen=True)
class PerplexityConfig:
    """What one Table-1 run measures. ``points=None`` augments after every eligible token, as the paper does."""

    positions: tuple[int, ...] = POSITIONS
    points: int | None = 16  # augmentation points per sequence (N_P)
    seed: int = 0  # seeds the point sampler: equal seeds on equal data give equal targets
    shuffle_latents: bool = False  # the shuffled-latents control (needs batches of >= 2 sequences)
    eos_id: int | None = None  # packed documents: no pass reads across this token (None: whole sequences)

    def __post_init__(self) -> None:
        positions = tuple(int(p) for p in self.positions)
        object.__setattr__(self, "positions", positions)
        if not positions or min(positions) < 1 or list(positions) != sorted(set(positions)):
            raise LatentcacheError(f"positions must be distinct, increasing and >= 1, got {list(positions)}")
        if self.points is not None and self.points < 1:
            raise LatentcacheError(f"points must be >= 1 (or None for every position), got {self.points}")

    @property
    def ahead(self) -> int:
        """Ahead tokens per group: enough to reach the furthest reported position."""
        return self.positions[-1]


@dataclass(frozen=True)
class PositionRow:
    """One row of Table 1: perplexities of the ``position``-th token after the augmentation point."""

    position: int
    baseline_ppl: float
    augmented_ppl: float
    relative_change_pct: float  # (augmented / baseline - 1) * 100; negative is better
    targets: int
    # 95% interval of relative_change_pct from a paired bootstrap over sequences: the noise of this slice
    ci95_low_pct: float = math.nan
    ci95_high_pct: float = math.nan


@dataclass(frozen=True)
class PerplexityResult:
    """One run (one coprocessor or control) over a validation set; ``to_dict`` is its JSON form."""

    rows: tuple[PositionRow, ...]
    config: PerplexityConfig
    num_latents: int  # 0: no augmentation
    pause: bool
    sequences: int

    def row(self, position: int) -> PositionRow:
        for row in self.rows:
            if row.position == position:
                return row
        raise KeyError(position)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PerplexityResult:
        config = PerplexityConfig(**{**data["config"], "positions": tuple(data["config"]["positions"])})
        rows = tuple(PositionRow(**row) for row in data["rows"])
        return cls(rows, config, data["num_latents"], data["pause"], data["sequences"])

    def to_markdown(self, label: str = "augmented") -> str:
        return markdown_table({label: self})


def roll_latents(latents: torch.Tensor) -> torch.Tensor:
    """Latents ``[batch, ...]`` of the previous sequence in the batch: the shuffled-latents control."""
    if latents.shape[0] < 2:
        raise LatentcacheError("shuffled latents need batches of at least 2 sequences; raise the eval batch size")
    return latents.roll(1, dims=0)


def _check_batch(tokens: torch.Tensor, config: PerplexityConfig, base: Decoder, num_latents: int) -> None:
    if tokens.dim() != 2 or tokens.is_floating_point() or tokens.is_complex():
        raise LatentcacheError(f"validation batches must be integer token ids [batch, length], got "
                               f"{tuple(tokens.shape)} {tokens.dtype}")
    check_positions(base.config, tokens.shape[1], num_latents, "use shorter validation sequences")
    needed = (config.points or 1) + config.ahead
    if tokens.shape[1] < needed:
        raise LatentcacheError(f"validation sequences of {tokens.shape[1]} tokens are too short for "
                               f"{config.points or 1} points and position {config.ahead}; need at least {needed} "
                               "(raise --seq-len or lower --points)")
    if config.shuffle_latents and tokens.shape[0] < 2:
        raise LatentcacheError("shuffled latents need batches of at least 2 sequences; raise the eval batch size")


def _nll_by_offset(logprobs: torch.Tensor, positions: Sequence[int]) -> torch.Tensor:
    """Negative log-likelihood per sequence and reported position, summed over points: float64 ``[batch, P]``."""
    offsets = torch.tensor([p - 1 for p in positions], device=logprobs.device)
    return -logprobs.index_select(-1, offsets).double().sum(dim=1).cpu()


def bootstrap_interval(base_nll: torch.Tensor, aug_nll: torch.Tensor, points_per_sequence: int,
                       resamples: int = 2000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """95% interval of the relative perplexity change (%) per position, resampling whole sequences.

    ``base_nll``/``aug_nll`` are ``[sequences, P]`` sums over equally many targets per sequence; the two
    columns are resampled together (the comparison is paired), so the interval is the noise of the *slice*.
    """
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, base_nll.shape[0], (resamples, base_nll.shape[0]), generator=generator)
    base_nll, aug_nll = base_nll.double(), aug_nll.double()  # a change of 1e-5 % must not drown in fp32 rounding
    change = torch.expm1((aug_nll[picks] - base_nll[picks]).sum(dim=1) / (base_nll.shape[0] * points_per_sequence))
    low, high = torch.quantile(change * 100.0, torch.tensor([0.025, 0.975], dtype=change.dtype), dim=0)
    return low, high


@torch.no_grad()
def evaluate_perplexity(
    base: Decoder,
    coprocessor: Coprocessor | None,
    sequences: Iterable[torch.Tensor],
    config: PerplexityConfig = PerplexityConfig(),
) -> PerplexityResult:
    """Table 1 for one run: baseline vs augmented perplexity per position on the same sampled targets.

    ``sequences`` yields token batches ``[batch, L]``; keep batches small, the baseline pass holds full
    ``[batch, L, vocab]`` logits. ``coprocessor=None`` is the no-augmentation control.
    """
    device = base.embed_tokens.weight.device
    generator = torch.Generator().manual_seed(config.seed)
    transform = roll_latents if config.shuffle_latents else None
    base_nll, aug_nll = [], []  # [batch, P] per batch: per-sequence sums feed the bootstrap interval
    targets, count = 0, 0
    num_latents = coprocessor.config.num_latents if coprocessor is not None else 1  # 1: the baseline's last slot
    for tokens in sequences:
        _check_batch(tokens, config, base, num_latents)
        batch, length = tokens.shape
        n_points = config.points or length - config.ahead
        points = sample_points(batch, length, n_points, config.ahead, generator).to(device)
        tokens = tokens.to(device, torch.long)
        docs = document_ids(tokens, config.eos_id)
        baseline = baseline_logprobs(base, tokens, points, config.ahead, docs)
        base_nll.append(_nll_by_offset(baseline, config.positions))
        if coprocessor is None:
            aug_nll.append(base_nll[-1])
        else:
            augmented = augmented_predictions(base, coprocessor, tokens, points, config.ahead, docs,
                                              latents_transform=transform).target_logprobs
            aug_nll.append(_nll_by_offset(augmented, config.positions))
        targets += batch * n_points
        count += batch
    if count == 0:
        raise LatentcacheError("the validation set is empty")
    return _result(torch.cat(base_nll), torch.cat(aug_nll), targets, count, coprocessor, config)


def _result(base_nll: torch.Tensor, aug_nll: torch.Tensor, targets: int, sequences: int,
            coprocessor: Coprocessor | None, config: PerplexityConfig) -> PerplexityResult:
    low, high = bootstrap_interval(base_nll, aug_nll, targets // sequences, seed=config.seed)
    base_total, aug_total = base_nll.sum(dim=0), aug_nll.sum(dim=0)
    rows = []
    for i, position in enumerate(config.positions):
        base_ppl = math.exp(base_total[i].item() / targets)
        aug_ppl = math.exp(aug_total[i].item() / targets)
        rows.append(PositionRow(position, base_ppl, aug_ppl, (aug_ppl / base_ppl - 1.0) * 100.0, targets,
                                low[i].item(), high[i].item()))
    num_latents = coprocessor.config.num_latents if coprocessor is not None else 0
    pause = coprocessor is not None and coprocessor.config.pause
    return PerplexityResult(tuple(rows), config, num_latents, pause, sequences)


def markdown_table(results: Mapping[str, PerplexityResult]) -> str:
    """Table 1 layout: one row per position, the baseline perplexity, then each run's relative change.

    Runs must share their targets (same data, seed and points); otherwise their columns are not comparable.
    """
    if not results:
        raise LatentcacheError("no runs to tabulate")
    first = next(iter(results.values()))
    for label, result in results.items():
        if result.config.positions != first.config.positions:
            raise LatentcacheError(f"run '{label}' reports other positions; tabulate runs of one evaluation")
        for mine, theirs in zip(result.rows, first.rows):
            if not math.isclose(mine.baseline_ppl, theirs.baseline_ppl, rel_tol=1e-6) or mine.targets != theirs.targets:
                raise LatentcacheError(f"run '{label}' was scored on other targets (baseline perplexity differs); "
                                       "use the same data, seed and points for every run")
    header = "| Position | Baseline ppl | " + " | ".join(results) + " |"
    rule = "|---|---|" + "---|" * len(results)
    lines = [header, rule]
    for i, row in enumerate(first.rows):
        cells = [_cell(r.rows[i]) for r in results.values()]
        lines.append(f"| {row.position} | {row.baseline_ppl:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(row: PositionRow) -> str:
    """``-1.23% [-1.60, -0.88] (10.60)``: change, its 95% bootstrap interval, augmented perplexity."""
    interval = "" if math.isnan(row.ci95_low_pct) else f" [{row.ci95_low_pct:+.2f}, {row.ci95_high_pct:+.2f}]"
    return f"{row.relative_change_pct:+.2f}%{interval} ({row.augmented_ppl:.2f})"


def plot_relative_change(results: Mapping[str, PerplexityResult], path: str | Path) -> Path:
    """PNG of relative perplexity change (%) vs position (log2 axis), one line per run (per N_L or control)."""
    try:
        import matplotlib
    except ImportError as exc:
        raise LatentcacheError("plotting needs matplotlib: pip install matplotlib") from exc
    matplotlib.use("Agg")  # files only; no display on training machines
    import matplotlib.pyplot as plt

    if not results:
        raise LatentcacheError("no runs to plot")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(6, 4))
    for label, result in results.items():
        positions = [row.position for row in result.rows]
        axes.plot(positions, [row.relative_change_pct for row in result.rows], marker="o", label=label)
    axes.axhline(0.0, color="grey", linewidth=0.8)
    axes.set_xscale("log", base=2)
    ticks = sorted({row.position for result in results.values() for row in result.rows})
    axes.set_xticks(ticks, [str(t) for t in ticks])
    axes.set_xlabel("position after the augmentation point")
    axes.set_ylabel("relative perplexity change (%)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
