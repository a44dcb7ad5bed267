"""serve.backends.vllm without vLLM: vLLM's per-position log-probabilities into the proto's shape
(the engine itself runs in tests/integration/test_serve_smollm2.py, in .venv-vllm)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from serve.backends.vllm import token_logprob
from serve.sampling import FLOOR


@dataclass
class Logprob:  # vllm.logprobs.Logprob's fields
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


def test_the_k_likeliest_in_rank_order_and_the_sampled_token_outside_them():
    position = {7: Logprob(-3.5, 5), 2: Logprob(-0.2, 1), 9: Logprob(-1.9, 2)}
    lp = token_logprob(7, position, 2)
    assert lp.token_id == 7 and lp.logprob == -3.5
    assert lp.top == ((2, -0.2), (9, -1.9))


def test_a_sampled_token_among_the_likeliest_is_listed_once():
    position = {2: Logprob(-0.2, 1), 9: Logprob(-1.9, 2)}
    assert token_logprob(9, position, 2).top == ((2, -0.2), (9, -1.9))
    assert token_logprob(2, position, 0).top == ()  # logprobs=0: the sampled token's only


def test_truncated_tokens_report_the_floor_not_minus_infinity():
    """vLLM's processed log-probabilities are -inf outside top-k/top-p/min-p; JSON cannot carry that."""
    position = {4: Logprob(-math.inf, 30), 1: Logprob(-0.01, 1)}
    lp = token_logprob(4, position, 1)
    assert lp.logprob == FLOOR and lp.top == ((1, -0.01),)
