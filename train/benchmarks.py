"""Benchmark mode (paper §3): the coprocessor runs once, at the end of the prompt; then ordinary scoring/decoding.

One code path serves the frozen baseline and the augmented model:

1. ``prefill``: the base runs over the prompt into a static ``KVCache`` (slots = positions ``0..P-1``);
2. ``augment``: with a coprocessor, its N_L latents for the point ``P - 1`` are absorbed by one base pass
   (``group_mask``/``group_positions``, exactly ``predict_groups`` for one group) that *writes* them to slots
   ``P..P+N_L-1``; without one, nothing happens;
3. scoring or greedy decoding continues from the first free slot.

Continuations only ever write slots after the prompt, so one prefill serves every run and every choice (each
pass writes its own rows before reading them, and ``augment`` rewrites its latents each time).

Tasks: ARC-Easy/Challenge (0-shot) and MMLU (k-shot from dev, 5 as in the paper) by log-likelihood, reporting
both raw-sum and length-normalised accuracy (per character of the choice, lm-evaluation-harness's ``acc_norm``);
GSM8K (k-shot from train, 8 as in the paper) by greedy decoding and exact match of the final number.
Text goes through two callables, ``encode: str -> list[int]`` (no special tokens: it also encodes the choices)
and ``decode: list[int] -> str``; this module knows nothing else about tokenizers.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from latentcache.errors import LatentcacheError
from latentcache.train.data import shared_dir
from latentcache.model import Decoder, KVCache
from latentcache.model.masks import causal_mask
from latentcache.train.coprocessor import Coprocessor
from latentcache.train.layout import group_mask, group_positions

Encode = Callable[[str], list[int]]
Decode = Callable[[Sequence[int]], str]

TASKS = ("arc-easy", "arc-challenge", "mmlu", "gsm8k")
MMLU_HEADER = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]
LETTERS = "ABCDEFGHIJ"
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


# ---- where the data lives ---------------------------------------------------------------------------------
def data_root(root: str | Path | None = None) -> Path:
    """The folder holding ``arc/``, ``mmlu/`` and ``gsm8k/``: ``root`` if given, else ``shared_dir()/data``."""
    return Path(root) if root is not None else shared_dir() / "data"


def _require_file(path: Path) -> Path:
    if not path.is_file():
        raise LatentcacheError(f"{path}: no such file; pass the data root or set LATENTCACHE_SHARED")
    return path


def _jsonl(path: Path) -> Iterable[tuple[int, dict]]:
    with _require_file(path).open(encoding="utf-8") as handle:
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
    path = data_root(root) / "arc" / f"ARC-{subset}-{split}.jsonl"
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
    folder = data_root(root) / "mmlu" / split
    files = sorted(folder.glob(f"*_{split}.csv"))
    if not files:
        raise LatentcacheError(f"{folder}: no *_{split}.csv files; pass the data root or set LATENTCACHE_SHARED")
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
    path = data_root(root) / "gsm8k" / f"{split}.jsonl"
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


# ---- one code path: prefill, augment (or not), then score or decode ------------------------------------------
@dataclass(frozen=True)
class PromptState:
    """A prompt in ``cache`` slots ``0..next_slot-1`` (slot = position) and the hidden state predicting what follows."""

    cache: KVCache
    next_slot: int
    hidden: torch.Tensor  # [1, hidden]


def prefill(base: Decoder, ids: Sequence[int], capacity: int) -> PromptState:
    """The base over ``ids`` into a fresh cache of ``capacity`` slots."""
    device = base.embed_tokens.weight.device
    length = len(ids)
    cache = KVCache(base.config, 1, capacity, base.embed_tokens.weight.dtype, device)
    mask = causal_mask(torch.ones(1, length, dtype=torch.bool, device=device), torch.arange(length, device=device))
    positions = torch.arange(length, device=device)[None]
    hidden = base(torch.tensor([list(ids)], device=device), position_ids=positions, attention_mask=mask, cache=cache)
    return PromptState(cache, length, hidden[:, -1])


def augment(base: Decoder, coprocessor: Coprocessor | None, state: PromptState) -> PromptState:
    """Latents for the point at the prompt's last token, absorbed into slots after it; None leaves ``state``."""
    if coprocessor is None:
        return state
    length = state.next_slot
    points = torch.tensor([[length - 1]], device=state.hidden.device)
    latents = coprocessor(state.cache, points, context_len=length).to(state.hidden.dtype)
    n_latents = latents.shape[1]
    hidden = base(inputs_embeds=latents, position_ids=group_positions(points, n_latents),
                  attention_mask=group_mask(points, length, n_latents), cache=state.cache, write_index=length)
    return PromptState(state.cache, length + n_latents, hidden[:, -1])


def extend(base: Decoder, state: PromptState, ids: Sequence[int]) -> torch.Tensor:
    """Hidden states ``[1, len(ids), hidden]`` of ``ids`` written at the slots after ``state``."""
    device = state.hidden.device
    start, count = state.next_slot, len(ids)
    slots = torch.arange(start, start + count, device=device)
    mask = causal_mask(torch.ones(1, start + count, dtype=torch.bool, device=device), slots)
    return base(torch.tensor([list(ids)], device=device), position_ids=slots[None], attention_mask=mask,
                cache=state.cache, write_index=start)


def continuation_logprobs(base: Decoder, state: PromptState, ids: Sequence[int]) -> torch.Tensor:
    """Log-probabilities ``[len(ids)]`` of ``ids`` following the (possibly augmented) prompt."""
    hidden = state.hidden[:, None]
    if len(ids) > 1:
        hidden = torch.cat((hidden, extend(base, state, ids[:-1])), dim=1)
    logprobs = F.log_softmax(base.logits(hidden[0]).float(), dim=-1)
    return logprobs.gather(-1, torch.tensor(list(ids), device=logprobs.device)[:, None]).squeeze(-1)


def greedy_tokens(base: Decoder, state: PromptState, max_new_tokens: int, stop_ids: Iterable[int] = (),
                  stop: Callable[[list[int]], bool] | None = None) -> list[int]:
    """Greedy continuation of ``state``: ends before a stop id, after ``stop(tokens)`` is true, or at the limit."""
    stop_ids = set(stop_ids)
    tokens: list[int] = []
    hidden, slot = state.hidden, state.next_slot
    for step in range(max_new_tokens):
        token = int(base.logits(hidden).argmax(-1)[0])
        if token in stop_ids:
            break
        tokens.append(token)
        if (stop is not None and stop(tokens)) or step == max_new_tokens - 1:
            break
        hidden = extend(base, PromptState(state.cache, slot, hidden), [token])[:, -1]
        slot += 1
    return tokens


# ---- tasks -----------------------------------------------------------------------------------------------
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


class _Runner:
    """Encodes prompts, fits them to the base's positions, and runs baseline and augmented on one prefill."""

    def __init__(self, base: Decoder, coprocessor: Coprocessor | None, encode: Encode, add_bos: bool) -> None:
        self.base, self.encode = base, encode
        self.runs: dict[str, Coprocessor | None] = {"baseline": None}
        if coprocessor is not None:
            self.runs["augmented"] = coprocessor
        self.latents = coprocessor.config.num_latents if coprocessor is not None else 0
        bos = base.config.bos_token_id
        if add_bos and bos is None:
            raise LatentcacheError("add_bos is set but the base model's config has no bos_token_id")
        self.bos = [bos] if add_bos else []
        self.truncated = 0

    def each_run(self, prompt: str, room: int) -> Iterator[tuple[str, PromptState]]:
        """One prefill of ``prompt`` leaving ``room`` slots after the latents, then ``(run, state)`` per run.

        The runs share the cache after the prompt: a state is valid only until the next one is yielded.
        """
        ids = self.encode(prompt)
        limit = self.base.config.max_position_embeddings - self.latents - room - len(self.bos)
        if limit < 1:
            raise LatentcacheError(f"{room} continuation tokens and {self.latents} latents leave no room for a prompt "
                                   f"in the base's {self.base.config.max_position_embeddings} positions")
        if len(ids) > limit:
            ids, self.truncated = ids[-limit:], self.truncated + 1
        ids = self.bos + ids
        prompt_state = prefill(self.base, ids, len(ids) + self.latents + room)
        for name, coprocessor in self.runs.items():
            yield name, augment(self.base, coprocessor, prompt_state)


@torch.no_grad()
def score_choices(base: Decoder, coprocessor: Coprocessor | None, prompt: ChoicePrompt, encode: Encode,
                  add_bos: bool = False) -> dict[str, ChoiceScores]:
    """Scores of every continuation, per run (``baseline``, and ``augmented`` when a coprocessor is given)."""
    return _score(_Runner(base, coprocessor, encode, add_bos), prompt)


def _score(runner: _Runner, prompt: ChoicePrompt) -> dict[str, ChoiceScores]:
    continuations = [runner.encode(c) for c in prompt.continuations]
    if not all(continuations):
        raise LatentcacheError(f"a choice encodes to no tokens: {prompt.continuations}")
    chars = tuple(len(c) for c in prompt.continuations)
    scores = {}
    for name, state in runner.each_run(prompt.prompt, max(len(c) for c in continuations) - 1):
        scores[name] = ChoiceScores(
            tuple(continuation_logprobs(runner.base, state, c).sum().item() for c in continuations), chars)
    return scores


@torch.no_grad()
def evaluate_choices(base: Decoder, coprocessor: Coprocessor | None, prompts: Sequence[ChoicePrompt],
                     encode: Encode, task: str, shots: int = 0, add_bos: bool = False) -> TaskResult:
    """Raw-sum and length-normalised accuracy of baseline (and augmented) over ``prompts``."""
    runner = _Runner(base, coprocessor, encode, add_bos)
    right: dict[str, dict[str, list[bool]]] = {name: {"accuracy": [], "accuracy_norm": []} for name in runner.runs}
    for prompt in prompts:
        for name, scores in _score(runner, prompt).items():
            right[name]["accuracy"].append(scores.predicted == prompt.answer)
            right[name]["accuracy_norm"].append(scores.predicted_norm == prompt.answer)
    n = len(prompts)
    metrics = {name: {metric: sum(hits) / max(n, 1) for metric, hits in by_metric.items()}
               for name, by_metric in right.items()}
    flips = None
    if "augmented" in right:
        flips = {metric: [sum(a and not b for a, b in zip(right["augmented"][metric], right["baseline"][metric])),
                          sum(b and not a for a, b in zip(right["augmented"][metric], right["baseline"][metric]))]
                 for metric in right["baseline"]}
    return TaskResult(task, n, shots, runner.latents, metrics["baseline"], metrics.get("augmented"), runner.truncated,
                      flips)


@torch.no_grad()
def evaluate_gsm8k(base: Decoder, coprocessor: Coprocessor | None, items: Sequence[MathItem],
                   shots: Sequence[MathItem], encode: Encode, decode: Decode, max_new_tokens: int = 256,
                   add_bos: bool = False) -> TaskResult:
    """Greedy answers after the (optionally augmented) k-shot prompt; exact match of the final number."""
    runner = _Runner(base, coprocessor, encode, add_bos)
    stop_ids = base.config.eos_token_ids

    def finished(tokens: list[int]) -> bool:
        text = decode(tokens)
        return "\n\n" in text or "Question:" in text

    correct = dict.fromkeys(runner.runs, 0)
    for item in items:
        for name, state in runner.each_run(gsm8k_prompt(item, shots), max_new_tokens):
            tokens = greedy_tokens(base, state, max_new_tokens, stop_ids, finished)
            correct[name] += extract_answer(decode(tokens)) == item.answer
    n = len(items)
    metrics = {name: {"exact_match": hits / max(n, 1)} for name, hits in correct.items()}
    return TaskResult("gsm8k", n, len(shots), runner.latents, metrics["baseline"], metrics.get("augmented"),
                      runner.truncated)


def _spread(items: Sequence[ChoiceItem], limit: int | None) -> list[ChoiceItem]:
    """The first ``limit`` items taken round-robin over subjects, so a small MMLU limit still covers them."""
    if limit is None:
        return list(items)
    by_subject: dict[str, list[ChoiceItem]] = {}
    for item in items:
        by_subject.setdefault(item.subject, []).append(item)
    queues = list(by_subject.values())
    picked = [queue[i] for i in range(max(map(len, queues), default=0)) for queue in queues if i < len(queue)]
    return picked[:limit]


def run_benchmarks(
    base: Decoder,
    coprocessor: Coprocessor | None,
    encode: Encode,
    decode: Decode | None = None,
    config: BenchmarkConfig = BenchmarkConfig(),
    root: str | Path | None = None,
) -> dict[str, TaskResult]:
    """Every task in ``config.tasks`` on the shared eval sets under ``root`` (see ``data_root``)."""
    if "gsm8k" in config.tasks and decode is None:
        raise LatentcacheError("gsm8k needs a decode function (token ids -> text) to read the answers")
    results = {}
    for task in config.tasks:
        if task.startswith("arc-"):
            items = _spread(read_arc(root, task.split("-")[1].capitalize(), config.arc_split), config.limit)
            results[task] = evaluate_choices(base, coprocessor, [arc_prompt(i) for i in items], encode, task, 0,
                                             config.add_bos)
        elif task == "mmlu":
            dev = read_mmlu(root, "dev")
            items = _spread(read_mmlu(root, "test"), config.limit)
            prompts = [mmlu_prompt(i, [d for d in dev if d.subject == i.subject][: config.mmlu_shots],
                                   config.mmlu_style) for i in items]
            results[task] = evaluate_choices(base, coprocessor, prompts, encode, task, config.mmlu_shots,
                                             config.add_bos)
        else:
            items = read_gsm8k(root, "test")[: config.limit]
            shots = read_gsm8k(root, "train")[: config.gsm8k_shots]
            results[task] = evaluate_gsm8k(base, coprocessor, items, shots, encode, decode, config.max_new_tokens,
                                           config.add_bos)
    return results


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


def tokenizer_functions(tokenizer) -> tuple[Encode, Decode]:
    """``encode``/``decode`` for a Hugging Face tokenizer: no special tokens added, special tokens not printed."""
    return (lambda text: list(tokenizer.encode(text, add_special_tokens=False)),
            lambda ids: tokenizer.decode(list(ids), skip_special_tokens=True))
