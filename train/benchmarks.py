"""Benchmark mode (paper §3) on the torch model: the coprocessor runs once, at the end of the prompt; then
ordinary scoring or greedy decoding.

One code path serves the frozen baseline and the augmented model (``latentcache.model.generate``):
``prefill`` the prompt into a static cache, ``augment`` it with the coprocessor's N_L latents for the point
at the prompt's last token (or not), then score each choice (``extend``) or decode greedily. Continuations
only ever write slots after the prompt, so one prefill serves every run and every choice (each pass writes
its own rows before reading them, and ``augment`` rewrites its latents each time).

The tasks themselves (readers, prompts, answer scoring) are text only and live in ``latentcache.tasks``.
Text goes through two callables, ``encode: str -> list[int]`` (no special tokens: it also encodes the
choices) and ``decode: list[int] -> str``; this module knows nothing else about tokenizers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from latentcache.errors import LatentcacheError
from latentcache.model.coprocessor import Coprocessor
from latentcache.model.decoder import Decoder
from latentcache.model.generate import (
    PromptState,
    augment,
    augmentation_slots,
    extend,
    greedy_tokens,
    prefill,
)
from latentcache.tasks import (
    BenchmarkConfig,
    ChoicePrompt,
    ChoiceScores,
    Decode,
    Encode,
    MathItem,
    TaskResult,
    arc_prompt,
    extract_answer,
    gsm8k_prompt,
    mmlu_prompt,
    read_arc,
    read_gsm8k,
    read_mmlu,
    require_task_data,
    spread,
)


def continuation_logprobs(base: Decoder, state: PromptState, ids: Sequence[int]) -> torch.Tensor:
    """Log-probabilities ``[len(ids)]`` of ``ids`` following the (possibly augmented) prompt."""
    hidden = state.hidden[:, None]
    if len(ids) > 1:
        hidden = torch.cat((hidden, extend(base, state, ids[:-1])), dim=1)
    logprobs = F.log_softmax(base.logits(hidden[0]).float(), dim=-1)
    return logprobs.gather(-1, torch.tensor(list(ids), device=logprobs.device)[:, None]).squeeze(-1)


class _Runner:
    """Encodes prompts, fits them to the base's positions, and runs baseline and augmented on one prefill."""

    def __init__(self, base: Decoder, coprocessor: Coprocessor | None, encode: Encode, add_bos: bool) -> None:
        self.base, self.encode = base, encode
        self.runs: dict[str, Coprocessor | None] = {"baseline": None}
        if coprocessor is not None:
            self.runs["augmented"] = coprocessor
        self.num_latents = coprocessor.config.num_latents if coprocessor is not None else 0
        self.slots = augmentation_slots(coprocessor)  # the latents and a re-fed token
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
        limit = self.base.config.max_position_embeddings - self.slots - room - len(self.bos)
        if limit < 1:
            raise LatentcacheError(f"{room} continuation tokens and {self.num_latents} latents leave no room for a prompt "
                                   f"in the base's {self.base.config.max_position_embeddings} positions")
        if len(ids) > limit:
            ids, self.truncated = ids[-limit:], self.truncated + 1
        ids = self.bos + ids
        prompt_state = prefill(self.base, ids, len(ids) + self.slots + room)
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
    return TaskResult(task, n, shots, runner.num_latents, metrics["baseline"], metrics.get("augmented"), runner.truncated,
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
    return TaskResult("gsm8k", n, len(shots), runner.num_latents, metrics["baseline"], metrics.get("augmented"),
                      runner.truncated)


def run_benchmarks(
    base: Decoder,
    coprocessor: Coprocessor | None,
    encode: Encode,
    decode: Decode | None = None,
    config: BenchmarkConfig | None = None,
    root: str | Path | None = None,
) -> dict[str, TaskResult]:
    """Every task in ``config.tasks`` on the eval sets under the data root ``root`` (``latentcache.paths.data_root``
    when None); every task's files are checked first, so a missing one fails before the first task runs."""
    config = config if config is not None else BenchmarkConfig()
    if "gsm8k" in config.tasks and decode is None:
        raise LatentcacheError("gsm8k needs a decode function (token ids -> text) to read the answers")
    require_task_data(config, root)
    results = {}
    for task in config.tasks:
        if task.startswith("arc-"):
            items = spread(read_arc(root, task.split("-")[1].capitalize(), config.arc_split), config.limit)
            results[task] = evaluate_choices(base, coprocessor, [arc_prompt(i) for i in items], encode, task, 0,
                                             config.add_bos)
        elif task == "mmlu":
            dev = read_mmlu(root, "dev")
            items = spread(read_mmlu(root, "test"), config.limit)
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


def tokenizer_functions(tokenizer) -> tuple[Encode, Decode]:
    """``encode``/``decode`` for a Hugging Face tokenizer: no special tokens added, special tokens not printed."""
    return (lambda text: list(tokenizer.encode(text, add_special_tokens=False)),
            lambda ids: tokenizer.decode(list(ids), skip_special_tokens=True))
