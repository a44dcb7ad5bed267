"""Perplexity, defined once: exp(mean negative log-likelihood of the scored tokens).

Two ways to choose the scored tokens, each used by every stage:

- ``text_perplexity``: raw held-out text, cut into non-overlapping windows of ``window`` tokens
  (each window starts with an empty context), every token after a window's first scored.
- ``answer_perplexity``: reference answers given their prompts, only the answer tokens scored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from enclave.evaluation.lm import LanguageModel


def windows(ids: Sequence[int], window: int, max_tokens: int | None = None) -> list[list[int]]:
    """The non-overlapping windows text perplexity scores: each of ``window + 1`` ids (its last
    shared with the next window's first), over the first ``max_tokens + 1`` ids."""
    ids = list(ids[: max_tokens + 1] if max_tokens else ids)
    out = []
    for i in range(0, len(ids) - 1, window):
        chunk = ids[i : i + window + 1]
        if len(chunk) >= 2:
            out.append(chunk)
    return out


def text_perplexity(lm: LanguageModel, ids: Sequence[int], window: int = 512, max_tokens: int | None = None) -> float:
    """Perplexity of held-out text (token ids) in non-overlapping windows (capped at the model's context).

    Args:
        lm: the model.
        ids: the text's token ids (no special tokens added).
        window: tokens per window.
        max_tokens: score at most this many tokens (None: all).

    Returns:
        exp(mean NLL); ``nan`` when there is nothing to score.
    """
    total, count = 0.0, 0
    for chunk in windows(ids, min(window, lm.context_length - 1), max_tokens):
        logprobs = lm.token_logprobs(chunk)
        total -= float(logprobs.sum())
        count += len(logprobs)
    return math.exp(total / count) if count else float("nan")


def answer_perplexity(lm: LanguageModel, pairs: Sequence[tuple[list[int], list[int]]]) -> float:
    """Perplexity of reference answers given their prompts: only the answer tokens are scored.

    Args:
        lm: the model.
        pairs: (prompt ids, answer ids) per example; the answer includes its end-of-turn token.

    Returns:
        exp(mean NLL over every answer token); ``nan`` when there is none.
    """
    pairs = [(list(prompt), list(answer)) for prompt, answer in pairs if answer]
    total, count = 0.0, 0
    for (prompt, _), logprobs in zip(pairs, lm.token_logprobs_many([prompt + answer for prompt, answer in pairs])):
        scored = logprobs[len(prompt) - 1 :]
        total -= float(scored.sum())
        count += len(scored)
    return math.exp(total / count) if count else float("nan")
