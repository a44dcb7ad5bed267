"""One request's generated tokens, whatever the backend: text deltas, stop strings, and when to
finish (end-of-sequence, a stop string, max_tokens, or the model's context)."""

from __future__ import annotations

import time

from serve.job import Event, Job, TokenLogprob
from serve.textstream import TextStream


class Tracker:
    """One request's generated tokens: text deltas, stop strings, and when to finish (any backend)."""

    def __init__(self, job: Job, tokenizer, context_length: int) -> None:
        self.job, self.eos, self.context_length = job, tokenizer.eos_ids, context_length
        self.stream = TextStream(tokenizer.decode, job.sampling.stop)
        self.length = len(job.prompt_ids)  # tokens in the model's context so far
        self.seen = list(job.prompt_ids)
        self.last = -1

    def banned(self) -> tuple[int, ...]:
        """Tokens the sampler may not pick now: end-of-sequence until min_tokens are out."""
        return tuple(self.eos) if self.job.generated < self.job.sampling.min_tokens else ()

    def accept(self, token: int, logprob: TokenLogprob | None = None) -> bool:
        """Send one new token (and its log-probability, if asked for) to the caller; False when the
        request is finished."""
        job = self.job
        if job.first_token is None:
            job.first_token = time.monotonic()
        if token in self.eos or token in job.sampling.stop_token_ids:
            job.emit(Event([], self.stream.flush(), finish="stop"))
            return False
        job.generated += 1
        self.length += 1
        self.seen.append(token)
        self.last = token
        delta = self.stream.push(token)
        lp = None if logprob is None else [logprob]
        if self.stream.stopped:
            job.emit(Event([token], delta, finish="stop_sequence", logprobs=lp))
        elif job.generated >= job.sampling.max_tokens:
            job.emit(Event([token], delta + self.stream.flush(), finish="length", logprobs=lp))
        elif self.length >= self.context_length:
            job.emit(Event([token], delta + self.stream.flush(), finish="context_limit", logprobs=lp))
        else:
            job.emit(Event([token], delta, logprobs=lp))
            return True
        return False
