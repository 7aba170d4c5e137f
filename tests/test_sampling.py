"""The one sampler (``latentcache/sampling.py``): the penalties against their definitions (transformers'
repetition penalty, OpenAI's presence and frequency penalties), in greedy and sampled modes, and validation."""

from __future__ import annotations

import numpy as np
import pytest

from latentcache.errors import LatentcacheError
from latentcache.sampling import Sampling, penalize, sample

VOCAB = 50


def logits_and_history(seed: int = 0):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((3, VOCAB)) * 3).astype(np.float32)
    history = [[1, 4, 4, 7, 30], [], [2, 2, 2, 49, 0]]
    return logits, history


@pytest.mark.parametrize("penalty", [1.3, 2.0, 0.5])
def test_repetition_penalty_is_transformers(penalty):
    import torch
    from transformers import RepetitionPenaltyLogitsProcessor

    logits, history = logits_and_history()
    rows = [row for row in history if row]  # transformers needs a rectangular input_ids
    width = max(map(len, rows))
    ids = torch.tensor([row + [row[-1]] * (width - len(row)) for row in rows])  # repeats change nothing
    expected = RepetitionPenaltyLogitsProcessor(penalty)(ids, torch.from_numpy(logits[[0, 2]].copy())).numpy()
    got = penalize(logits, Sampling(repetition_penalty=penalty), history)
    np.testing.assert_array_equal(got[[0, 2]], expected)
    np.testing.assert_array_equal(got[1], logits[1])  # no history, no change


def test_presence_and_frequency_penalties_are_openai():
    logits, history = logits_and_history(1)
    sampling = Sampling(presence_penalty=0.5, frequency_penalty=0.25)
    got = penalize(logits, sampling, history)
    expected = logits.astype(np.float64).copy()
    for row, seen in enumerate(history):
        counts = np.bincount(np.asarray(seen, dtype=np.int64), minlength=VOCAB)
        expected[row] -= 0.25 * counts + 0.5 * (counts > 0)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert got.dtype == logits.dtype


def test_penalties_change_the_greedy_choice_and_leave_the_input_alone():
    logits = np.array([[0.0, 5.0, 4.9, -1.0]], dtype=np.float32)
    original = logits.copy()
    rng = np.random.default_rng(0)
    assert sample(logits, Sampling(), rng, [[1]]).tolist() == [1]
    assert sample(logits, Sampling(repetition_penalty=1.1), rng, [[1]]).tolist() == [2]
    assert sample(logits, Sampling(presence_penalty=0.2), rng, [[1]]).tolist() == [2]
    assert sample(logits, Sampling(frequency_penalty=0.06), rng, [[1, 1]]).tolist() == [2]
    assert sample(logits, Sampling(frequency_penalty=0.06), rng, [[1]]).tolist() == [1]  # one count: not enough
    assert sample(logits, Sampling(presence_penalty=-2.0), rng, [[3]]).tolist() == [1]  # negative: encourages
    np.testing.assert_array_equal(logits, original)


def test_a_negative_logit_is_multiplied_by_the_repetition_penalty():
    logits = np.array([[-2.0, 3.0, -0.5]], dtype=np.float32)
    got = penalize(logits, Sampling(repetition_penalty=2.0), [[0, 1]])
    np.testing.assert_array_equal(got, [[-4.0, 1.5, -0.5]])


def test_penalties_apply_before_sampling():
    """A token seen in the history is drawn less often at temperature 1 (seeded, so exact counts)."""
    logits = np.zeros((1, 4), dtype=np.float32)
    draws = {name: [int(sample(logits, sampling, rng, [[0]])[0]) for _ in range(400)]
             for name, sampling, rng in [("plain", Sampling(temperature=1.0), np.random.default_rng(3)),
                                         ("penalized", Sampling(temperature=1.0, frequency_penalty=2.0),
                                          np.random.default_rng(3))]}
    assert draws["penalized"].count(0) < draws["plain"].count(0) / 3


def test_penalties_without_history_are_refused():
    logits, _ = logits_and_history()
    with pytest.raises(LatentcacheError, match="pass history"):
        sample(logits, Sampling(repetition_penalty=1.2), np.random.default_rng(0))
    with pytest.raises(LatentcacheError, match="pass history"):
        sample(logits, Sampling(presence_penalty=0.1), np.random.default_rng(0), [[1]])  # one row for three
    assert sample(logits, Sampling(), np.random.default_rng(0)).shape == (3,)  # no penalty: history optional


@pytest.mark.parametrize("options, message", [
    ({"repetition_penalty": 0.0}, "--repetition-penalty must be > 0 (1 is off), got 0.0"),
    ({"repetition_penalty": -1.5}, "--repetition-penalty must be > 0"),
    ({"repetition_penalty": float("nan")}, "--repetition-penalty must be a finite number, got nan"),
    ({"presence_penalty": 2.5}, "--presence-penalty must be in [-2, 2] (0 is off), got 2.5"),
    ({"frequency_penalty": -3}, "--frequency-penalty must be in [-2, 2]"),
    ({"frequency_penalty": float("inf")}, "--frequency-penalty must be a finite number"),
    ({"presence_penalty": True}, "--presence-penalty must be a finite number"),
])
def test_bad_penalties_are_one_line_errors(options, message):
    with pytest.raises(LatentcacheError) as error:
        Sampling(**options)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_penalized_flag():
    assert not Sampling().penalized and not Sampling(temperature=1.0, top_k=3).penalized
    assert all(Sampling(**{name: value}).penalized for name, value in
               (("repetition_penalty", 1.01), ("presence_penalty", -0.1), ("frequency_penalty", 0.1)))
