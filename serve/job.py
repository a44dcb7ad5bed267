"""The server's core types: a request's checked decoding settings (Sampling), the job an engine
runs for it (Job), and what the job produces (Event).

Admission (``serve.admission``) makes the ``Job`` from a checked request; engines
(``serve.engine``) and backends (``serve.backends``) see only ``Job``, ``Sampling`` and ``Event``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sampling:
    """Decoding settings of one request, already validated."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    min_tokens: int = 0  # the end-of-sequence token is banned until this many are generated
    presence_penalty: float = 0.0  # OpenAI's: subtracted from the logit of every token generated so far
    frequency_penalty: float = 0.0  # OpenAI's: subtracted once per time a token was generated so far
    min_p: float = 0.0  # tokens less likely than min_p times the likeliest are dropped (after temperature)
    logprobs: int | None = None  # None: off; k: each token's log-probability and the k likeliest (at most 20)
    stop_token_ids: tuple[int, ...] = ()  # ids that end the output as end-of-sequence does
    grammar: str | None = None  # llguidance grammar the output must follow (serve.structured); None: free text
    schema: str | None = None  # the JSON schema that grammar came from (the vllm backend compiles its own)


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability and the likeliest alternatives, from the distribution
    the sampler drew from (after penalties and temperature, before top-k, top-p and min-p)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token id, log-probability), likeliest first


@dataclass
class Event:
    """New tokens of a job; the last event has ``finish`` set ("stop", "length", "stop_sequence",
    "context_limit") or ``error`` (an exception for the caller, e.g. deadline exceeded).
    ``logprobs`` (when the request asked for them) has one entry per token id."""

    token_ids: list[int]
    text: str = ""
    finish: str | None = None
    error: Exception | None = None
    logprobs: list[TokenLogprob] | None = None


@dataclass
class Job:
    """One generation request inside the server. Events go to ``queue`` on ``loop``."""

    request_id: str
    prompt_ids: list[int]
    sampling: Sampling
    adapter: str | None = None
    deadline: float | None = None  # time.monotonic() after which the job is dropped
    loop: asyncio.AbstractEventLoop | None = None
    queue: asyncio.Queue | None = None
    arrived: float = field(default_factory=time.monotonic)
    started: float | None = None  # first model step
    first_token: float | None = None
    finished: float | None = None
    generated: int = 0
    cancelled: bool = False
    outbox: Outbox | None = None  # set by an engine that delivers a whole step's events at once

    def emit(self, event: Event) -> None:
        """Hand an event to the caller's coroutine (thread-safe)."""
        if event.finish or event.error:
            self.finished = time.monotonic()
        if self.outbox is not None:
            self.outbox.items.append((self, event))
        elif self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)


class Outbox:
    """Events of one engine phase, handed to the callers' event loop in one wake-up instead of
    one per request (the loop thread competes with the model's threads for the same cores)."""

    def __init__(self) -> None:
        self.items: list[tuple[Job, Event]] = []

    def flush(self) -> None:
        items, self.items = self.items, []
        by_loop: dict = {}
        for job, event in items:
            if job.loop is not None:
                by_loop.setdefault(job.loop, []).append((job.queue, event))
        for loop, batch in by_loop.items():
            if not loop.is_closed():
                loop.call_soon_threadsafe(_deliver, batch)


def _deliver(batch: list) -> None:
    for queue, event in batch:
        queue.put_nowait(event)
