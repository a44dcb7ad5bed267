"""The sampler: greedy, top-k, top-p, repetition penalty and seeds, on hand-made logits."""

from __future__ import annotations

import numpy as np
import pytest

from serve.job import Sampling
from serve.sampling import Sampler

LOGITS = np.array([1.0, 3.0, 2.0, 0.5, -1.0])


def test_greedy_and_repetition_penalty():
    assert Sampler(Sampling(max_tokens=1))(LOGITS, np.array([], np.int64)) == 1
    # CTRL penalty: 3.0 / 2 = 1.5 < 2.0, so the seen token 1 loses to token 2.
    assert Sampler(Sampling(max_tokens=1, repetition_penalty=2.0))(LOGITS, np.array([1])) == 2


def test_top_k_and_top_p_restrict_the_draw():
    draws = {
        Sampler(Sampling(max_tokens=1, temperature=5.0, top_k=2, seed=s))(LOGITS, np.array([])) for s in range(200)
    }
    assert draws == {1, 2}
    probs = np.exp(LOGITS) / np.exp(LOGITS).sum()  # 0.63 (token 1), 0.23 (2): top_p 0.7 keeps two tokens
    assert probs[1] < 0.7 < probs[1] + probs[2]
    draws = {
        Sampler(Sampling(max_tokens=1, temperature=1.0, top_p=0.7, seed=s))(LOGITS, np.array([])) for s in range(200)
    }
    assert draws == {1, 2}


def test_seed_gives_the_same_sequence():
    def draw(seed):
        s = Sampler(Sampling(max_tokens=1, temperature=1.0, seed=seed))
        return [s(LOGITS, np.array([])) for _ in range(30)]

    assert draw(3) == draw(3) and draw(3) != draw(4)


def test_banned_tokens_are_never_drawn_and_min_tokens_bans_eos_until_reached():
    from types import SimpleNamespace

    from serve.engine.tracker import Tracker
    from serve.job import Job

    assert Sampler(Sampling(max_tokens=1))(LOGITS, [], banned=(1,)) == 2
    draws = {Sampler(Sampling(max_tokens=1, temperature=5.0, seed=s))(LOGITS, [], banned=(1, 2)) for s in range(200)}
    assert draws == {0, 3, 4}
    tokenizer = SimpleNamespace(eos_ids={1}, decode=lambda ids: "x" * len(ids))
    tracker = Tracker(Job("r", [0], Sampling(max_tokens=5, min_tokens=2)), tokenizer, 64)
    assert tracker.banned() == (1,)
    tracker.accept(3)
    assert tracker.banned() == (1,)
    tracker.accept(3)
    assert tracker.banned() == ()


def test_presence_and_frequency_penalties_count_the_output_only():
    # seen = prompt [1] + output [2, 2]: token 2 loses 0.5 + 2 * 0.3 = 1.1 -> 0.9; token 1 (prompt) keeps 3.0
    sampler = Sampler(Sampling(max_tokens=1, presence_penalty=0.5, frequency_penalty=0.3), prompt_length=1)
    assert sampler(np.array([1.0, 3.0, 2.0]), [1, 2, 2]) == 1
    # output [1]: 3.0 - 2.0 = 1.0 < 2.0, so token 2 wins under a presence penalty alone
    assert Sampler(Sampling(max_tokens=1, presence_penalty=2.0), prompt_length=1)(LOGITS, [0, 1]) == 2
    # negative penalties favour repeating: token 4 gets -1.0 + 2.0 + 2 * 2.0 = 5.0 > 3.0
    assert Sampler(Sampling(max_tokens=1, presence_penalty=-2.0, frequency_penalty=-2.0))(LOGITS, [4, 4]) == 4


def test_min_p_drops_the_unlikely_tail():
    probs = np.exp(LOGITS) / np.exp(LOGITS).sum()  # 0.63, 0.23, 0.09 ...: min_p 0.3 keeps tokens 1 and 2
    assert probs[2] > 0.3 * probs[1] > probs[0]
    draws = {
        Sampler(Sampling(max_tokens=1, temperature=1.0, min_p=0.3, seed=s))(LOGITS, np.array([])) for s in range(300)
    }
    assert draws == {1, 2}


def test_logprobs_come_from_the_distribution_drawn_from():
    from serve.sampling import FLOOR

    expected = LOGITS - np.log(np.exp(LOGITS).sum())
    sampler = Sampler(Sampling(max_tokens=1, logprobs=2))
    assert sampler(LOGITS, []) == 1
    assert sampler.last.token_id == 1 and sampler.last.logprob == pytest.approx(expected[1])
    assert [i for i, _ in sampler.last.top] == [1, 2] and sampler.last.top[1][1] == pytest.approx(expected[2])
    # temperature 2: the scaled distribution, before top-k truncates it
    scaled = LOGITS / 2 - np.log(np.exp(LOGITS / 2).sum())
    sampler = Sampler(Sampling(max_tokens=1, temperature=2.0, top_k=1, seed=0, logprobs=0))
    assert sampler(LOGITS, []) == 1 and sampler.last.logprob == pytest.approx(scaled[1]) and sampler.last.top == ()
    # a banned token is reported at OpenAI's floor, not -inf
    sampler = Sampler(Sampling(max_tokens=1, logprobs=5))
    sampler(LOGITS, [], banned=(1,))
    assert dict(sampler.last.top)[1] == FLOOR
    assert Sampler(Sampling(max_tokens=1))(LOGITS, []) == 1  # off: nothing kept
