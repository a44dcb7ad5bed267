"""Choosing the next token from logits, per request, in numpy (every backend shares it).

Order as in vLLM's sampler: the penalties (repetition over prompt and output, CTRL's; presence
and frequency over the output, OpenAI's), temperature, top-k, min-p, top-p. Each request has its
own random generator, so a seed gives the same output whatever else shares the batch.
"""

from __future__ import annotations

import numpy as np

from serve.job import Sampling, TokenLogprob

FLOOR = -9999.0  # the log-probability reported for a token that could not be drawn (OpenAI's value)


class Sampler:
    """Picks tokens for one request."""

    def __init__(self, params: Sampling, prompt_length: int = 0, constraint=None) -> None:
        self.params = params
        self.constraint = constraint  # serve.structured.Constraint: tokens the output's grammar allows
        self.prompt_length = prompt_length  # ``seen`` starts with the prompt: its output follows
        self.rng = np.random.default_rng(params.seed)
        self.penalized = params.repetition_penalty != 1.0 or params.presence_penalty or params.frequency_penalty
        self.last: TokenLogprob | None = None  # the last token's log-probability, when the request asks for them

    def __call__(self, logits: np.ndarray, seen, banned=()) -> int:
        """The next token, given this row's logits (V,), the ids seen so far (prompt + generated)
        and ids that may not come next (end-of-sequence before ``min_tokens``)."""
        p = self.params
        if self.constraint is not None:
            logits = self.constraint.mask(logits)
            if banned and not np.isfinite(np.delete(logits, list(banned))).any():
                banned = ()  # the grammar is complete: its end wins over min_tokens
        if p.logprobs is not None:
            token, self.last = self._draw(logits, seen, banned, report=True)
        else:
            token = self._draw(logits, seen, banned)[0]
        if self.constraint is not None:
            self.constraint.accept(token)
        return token

    def _logprob(self, logits: np.ndarray, token: int) -> TokenLogprob:
        """``token``'s log-probability under ``logits`` and the ``logprobs`` likeliest tokens'."""
        shifted = logits - logits.max()
        lp = shifted - np.log(np.exp(shifted).sum())
        k = self.params.logprobs
        top = np.argpartition(-lp, k - 1)[:k] if 0 < k < lp.size else np.arange(lp.size if k else 0)
        top = top[np.argsort(-lp[top], kind="stable")]
        lp = np.maximum(lp, FLOOR)  # a banned token's -inf, as OpenAI reports it
        return TokenLogprob(token, float(lp[token]), tuple((int(i), float(lp[i])) for i in top))

    def _draw(self, logits: np.ndarray, seen, banned, report: bool = False) -> tuple[int, TokenLogprob | None]:
        p = self.params
        if p.temperature < 1e-5 and not self.penalized and not report:  # greedy: no copy unless a ban hits
            best = int(np.argmax(logits))
            if best not in banned:
                return best, None
        logits = logits.astype(np.float64, copy=True)
        if banned:
            logits[list(banned)] = -np.inf
        if p.repetition_penalty != 1.0 and len(seen):
            # CTRL (Keskar et al. 2019): divide positive logits, multiply negative ones.
            ids = np.unique(np.asarray(seen))
            vals = logits[ids]
            logits[ids] = np.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if (p.presence_penalty or p.frequency_penalty) and len(seen) > self.prompt_length:
            ids, counts = np.unique(np.asarray(seen[self.prompt_length :]), return_counts=True)
            logits[ids] -= p.presence_penalty + p.frequency_penalty * counts
        if p.temperature < 1e-5:  # 0 is greedy; a smaller positive one is greedy in all but overflow
            best = int(np.argmax(logits))
            return best, self._logprob(logits, best) if report else None
        logits /= p.temperature
        scaled = logits.copy() if report else None  # the distribution log-probabilities are reported from
        if p.top_k and p.top_k < logits.size:
            kth = np.partition(logits, -p.top_k)[-p.top_k]
            logits[logits < kth] = -np.inf
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        if p.min_p > 0.0:
            probs[probs < p.min_p * probs.max()] = 0.0
            probs /= probs.sum()
        if p.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            cum = np.cumsum(probs[order])
            keep = order[: int(np.searchsorted(cum, p.top_p)) + 1]
            mask = np.zeros_like(probs)
            mask[keep] = probs[keep]
            probs = mask / mask.sum()
        token = int(self.rng.choice(probs.size, p=probs))
        return token, self._logprob(scaled, token) if report else None
