"""Benchmark tasks as text, with no model: the ARC/MMLU/GSM8K readers, prompt formats and answer scoring.

ARC-Easy/Challenge (0-shot) and MMLU (k-shot from dev, 5 as in the paper) are scored by log-likelihood of
each choice, raw-sum and length-normalised (per character, lm-evaluation-harness's ``acc_norm``); GSM8K
(k-shot from train, 8 as in the paper) by greedy decoding and exact match of the final number. The torch
evaluation (``latentcache eval``, ``train/benchmarks.py``) and the runtime examples both read these, so the
examples run on a runtime-only install.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from latentcache import paths
from latentcache.catalog import MMLU_HEADER, locate
from latentcache.errors import LatentcacheError

Encode = Callable[[str], list[int]]
Decode = Callable[[Sequence[int]], str]

TASKS = ("arc-easy", "arc-challenge", "mmlu", "gsm8k")
LETTERS = "ABCDEFGHIJ"
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


# ---- where the data lives ---------------------------------------------------------------------------------
def data_root(root: str | Path | None = None) -> Path:
    """The folder holding ``arc/``, ``mmlu/`` and ``gsm8k/``: ``root`` if given, else ``paths.data_root()``."""
    return paths.data_root(root)


def task_files(config: BenchmarkConfig) -> tuple[str, ...]:
    """The data-root paths the tasks of ``config`` read (see ``run_benchmarks``), in task order."""
    needed = {"arc-easy": (f"arc/ARC-Easy-{config.arc_split}.jsonl",),
              "arc-challenge": (f"arc/ARC-Challenge-{config.arc_split}.jsonl",),
              "mmlu": ("mmlu/dev", "mmlu/test"),
              "gsm8k": ("gsm8k/test.jsonl", "gsm8k/train.jsonl")}
    return tuple(path for task in config.tasks for path in needed[task])


def require_task_data(config: BenchmarkConfig, root: str | Path | None = None) -> None:
    """Fail with one line if any file of ``config.tasks`` is missing (or load it, with the Hub loader on),
    before a model is loaded or a first task has run."""
    for relative in task_files(config):
        locate(relative, root)


def _jsonl(path: Path) -> Iterable[tuple[int, dict]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise LatentcacheError(f"{path}:{number}: not JSON ({exc.msg})") from exc


# ---- readers ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChoiceItem:
    """A multiple-choice question; ``answer`` indexes ``choices``."""

    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str = ""

    def __post_init__(self) -> None:
        if len(self.choices) < 2 or not 0 <= self.answer < len(self.choices):
            raise LatentcacheError(
                f"answer {self.answer} does not index {len(self.choices)} choices: {self.question[:60]}")


@dataclass(frozen=True)
class MathItem:
    """A GSM8K problem: the worked ``solution`` (for exemplars) and its normalised final ``answer``."""

    question: str
    solution: str
    answer: str


def read_arc(root: str | Path | None = None, subset: str = "Easy", split: str = "Test") -> list[ChoiceItem]:
    """``arc/ARC-{subset}-{split}.jsonl``; labels are usually A-D, a few items use 1-4 or 3/5 choices."""
    path = locate(f"arc/ARC-{subset}-{split}.jsonl", root)
    items = []
    for number, row in _jsonl(path):
        try:
            choices = row["question"]["choices"]
            labels = [c["label"] for c in choices]
            items.append(ChoiceItem(row["question"]["stem"], tuple(c["text"] for c in choices),
                                    labels.index(row["answerKey"])))
        except (KeyError, ValueError, TypeError) as exc:
            raise LatentcacheError(f"{path}:{number}: not an ARC item ({exc})") from exc
    return items


def read_mmlu(root: str | Path | None = None, split: str = "test") -> list[ChoiceItem]:
    """``mmlu/{split}/<subject>_{split}.csv`` (header row, answer = index 0-3), subjects in file-name order."""
    folder = locate(f"mmlu/{split}", root)
    files = sorted(folder.glob(f"*_{split}.csv"))
    if not files:
        raise LatentcacheError(f"{folder}: no *_{split}.csv files; the MMLU folder of this data root is incomplete")
    return [item for path in files for item in _read_mmlu_file(path, path.stem[: -len(f"_{split}")])]


def _read_mmlu_file(path: Path, subject: str) -> list[ChoiceItem]:
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or rows[0] != MMLU_HEADER:
        raise LatentcacheError(f"{path}: expected the header {','.join(MMLU_HEADER)}")
    items = []
    for number, row in enumerate(rows[1:], 2):
        try:
            items.append(ChoiceItem(row[0], tuple(row[1:5]), int(row[5]), subject))
        except (IndexError, ValueError) as exc:
            raise LatentcacheError(f"{path}:{number}: not an MMLU row ({exc})") from exc
    return items


def read_gsm8k(root: str | Path | None = None, split: str = "test") -> list[MathItem]:
    """``gsm8k/{split}.jsonl``: the final answer follows ``####`` in the solution."""
    path = locate(f"gsm8k/{split}.jsonl", root)
    items = []
    for number, row in _jsonl(path):
        solution = row.get("answer", "")
        answer = normalize_number(solution.rpartition("####")[2]) if "####" in solution else None
        if not row.get("question") or answer is None:
            raise LatentcacheError(f"{path}:{number}: not a GSM8K item (needs a question and '#### <number>')")
        items.append(MathItem(row["question"], solution, answer))
    return items


def normalize_number(text: str) -> str | None:
    """The first number in ``text`` in canonical form (``"1,000.00"`` -> ``"1000"``), or None."""
    match = NUMBER.search(text)
    if match is None:
        return None
    try:
        value = Decimal(match.group().replace(",", ""))
    except InvalidOperation:
        return None
    return str(int(value)) if value == value.to_integral_value() else str(value.normalize())


def extract_answer(generated: str) -> str | None:
    """The number after ``####``, else the last number, in the generated answer (cut before a next question)."""
    answer = re.split(r"\n\n|Question:", generated)[0]
    if "####" in answer:
        return normalize_number(answer.rpartition("####")[2])
    numbers = NUMBER.findall(answer)
    return normalize_number(numbers[-1]) if numbers else None


# ---- prompts ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChoicePrompt:
    """What the model scores: ``prompt`` followed by each continuation; ``answer`` indexes the right one."""

    prompt: str
    continuations: tuple[str, ...]
    answer: int


def arc_prompt(item: ChoiceItem) -> ChoicePrompt:
    """Zero-shot cloze: ``Question: ...\\nAnswer:`` continued by `` <choice text>``."""
    return ChoicePrompt(f"Question: {item.question}\nAnswer:", tuple(f" {c}" for c in item.choices), item.answer)


def arc_question(item: ChoiceItem) -> str:
    """An ARC item as a question that asks for the option letter (for generated, not scored, answers)."""
    options = "".join(f"\n{LETTERS[i]}. {choice}" for i, choice in enumerate(item.choices))
    return f"{item.question}{options}\nAnswer with the letter of the correct option."


def arc_choice(answer: str, item: ChoiceItem) -> int | None:
    """The first option letter in the answer ("B." / "B)" before a bare "B", so that an article "A" loses), else
    the first option whose text it contains."""
    letters = LETTERS[: len(item.choices)]
    for pattern in (rf"\b([{letters}])[.):]", rf"\b([{letters}])\b"):
        match = re.search(pattern, answer)
        if match:
            return letters.index(match.group(1))
    lowered = answer.lower()
    hits = [(lowered.find(c.lower()), i) for i, c in enumerate(item.choices) if c.strip() and c.lower() in lowered]
    return min(hits)[1] if hits else None


def _mmlu_block(item: ChoiceItem, letters: bool) -> str:
    if not letters:
        return f"Question: {item.question}\nAnswer:"
    options = "".join(f"\n{LETTERS[i]}. {choice}" for i, choice in enumerate(item.choices))
    return f"{item.question}{options}\nAnswer:"


def mmlu_prompt(item: ChoiceItem, shots: Sequence[ChoiceItem], style: str = "letters") -> ChoicePrompt:
    """Hendrycks' k-shot format; ``letters`` scores `` A``..`` D``, ``text`` scores the choice texts (cloze)."""
    letters = style == "letters"
    subject = item.subject.replace("_", " ")
    header = f"The following are multiple choice questions (with answers) about {subject}.\n\n"

    def target(choice_item: ChoiceItem, index: int) -> str:
        return f" {LETTERS[index]}" if letters else f" {choice_item.choices[index]}"

    examples = "".join(f"{_mmlu_block(s, letters)}{target(s, s.answer)}\n\n" for s in shots)
    continuations = tuple(target(item, i) for i in range(len(item.choices)))
    return ChoicePrompt(header + examples + _mmlu_block(item, letters), continuations, item.answer)


def gsm8k_prompt(item: MathItem, shots: Sequence[MathItem]) -> str:
    """k-shot ``Question: ...\\nAnswer: <worked solution> #### n`` blocks (calculator annotations removed)."""
    examples = "".join(f"Question: {s.question}\nAnswer: {re.sub(r'<<[^>]*>>', '', s.solution)}\n\n" for s in shots)
    return f"{examples}Question: {item.question}\nAnswer:"


# ---- configuration and results -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BenchmarkConfig:
    tasks: tuple[str, ...] = TASKS
    limit: int | None = None  # items per task (MMLU: spread over subjects); None: all
    mmlu_shots: int = 5
    mmlu_style: str = "letters"  # "letters" (Hendrycks) | "text" (cloze over the choice texts)
    gsm8k_shots: int = 8
    arc_split: str = "Test"  # "Train" | "Dev" | "Test"
    max_new_tokens: int = 256  # GSM8K answer budget
    add_bos: bool = False  # prepend the base's BOS to every prompt (Gemma needs it)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))
        problems = [f"unknown task '{t}' (choose from {', '.join(TASKS)})" for t in self.tasks if t not in TASKS]
        if self.limit is not None and self.limit < 1:
            problems.append(f"limit must be >= 1, got {self.limit}")
        if not 0 <= self.mmlu_shots <= 5:
            problems.append(f"mmlu_shots must be in 0..5 (the dev split has 5 per subject), got {self.mmlu_shots}")
        if self.gsm8k_shots < 0 or self.max_new_tokens < 1:
            problems.append("gsm8k_shots must be >= 0 and max_new_tokens >= 1")
        if self.mmlu_style not in ("letters", "text"):
            problems.append(f"mmlu_style must be 'letters' or 'text', not '{self.mmlu_style}'")
        if self.arc_split not in ("Train", "Dev", "Test"):
            problems.append(f"arc_split must be Train, Dev or Test, not '{self.arc_split}'")
        if problems:
            raise LatentcacheError("invalid benchmark config: " + "; ".join(problems))


@dataclass(frozen=True)
class TaskResult:
    """Baseline vs augmented scores of one task; ``to_dict`` is its JSON form."""

    task: str
    n: int
    shots: int
    num_latents: int  # 0: no coprocessor
    baseline: dict[str, float]
    augmented: dict[str, float] | None
    truncated: int = 0  # prompts cut from the left to fit the base's positions
    # per metric [items only the augmented run got right, items only the baseline got right]: the paired
    # evidence behind a difference of a few points (a sign test needs these, not the two accuracies)
    flips: dict[str, list[int]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ChoiceScores:
    """Summed log-probability and character count of every continuation of one prompt."""

    logprobs: tuple[float, ...]
    chars: tuple[int, ...]

    @property
    def predicted(self) -> int:
        return max(range(len(self.logprobs)), key=lambda i: self.logprobs[i])

    @property
    def predicted_norm(self) -> int:
        return max(range(len(self.logprobs)), key=lambda i: self.logprobs[i] / max(self.chars[i], 1))


def spread(items: Sequence[ChoiceItem], limit: int | None) -> list[ChoiceItem]:
    """The first ``limit`` items taken round-robin over subjects, so a small MMLU limit still covers them."""
    if limit is None:
        return list(items)
    by_subject: dict[str, list[ChoiceItem]] = {}
    for item in items:
        by_subject.setdefault(item.subject, []).append(item)
    queues = list(by_subject.values())
    picked = [queue[i] for i in range(max(map(len, queues), default=0)) for queue in queues if i < len(queue)]
    return picked[:limit]


def benchmark_markdown(results: Mapping[str, TaskResult]) -> str:
    """One row per task and metric: n, baseline, augmented and the difference in points."""
    lines = ["| Task | Metric | n | Baseline | Augmented | Δ (points) | gained / lost |", "|---|---|---|---|---|---|---|"]
    for task, result in results.items():
        for metric, value in result.baseline.items():
            if result.augmented is None:
                lines.append(f"| {task} | {metric} | {result.n} | {100 * value:.2f} | – | – | – |")
                continue
            augmented = result.augmented[metric]
            flips = " / ".join(map(str, result.flips[metric])) if result.flips and metric in result.flips else "–"
            lines.append(f"| {task} | {metric} | {result.n} | {100 * value:.2f} | {100 * augmented:.2f} | "
                         f"{100 * (augmented - value):+.2f} | {flips} |")
    return "\n".join(lines) + "\n"
