"""One admitted generation call: its job, its events, and its accounting (metrics, one audit line).

``serve.admission.Admission.open`` makes a ``Call``; the API layer iterates ``accounted(events())``
and builds its replies from the events and ``usage()``. Nothing here knows the wire format.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import grpc

from serve.auth import Caller
from serve.errors import ServeError
from serve.job import Event, Job
from serve.models import Models, Served


@dataclass(frozen=True)
class Usage:
    """Token counts and timings of a finished (or ended) call."""

    prompt_tokens: int
    completion_tokens: int
    queue_seconds: float
    time_to_first_token_seconds: float
    total_seconds: float
    decode_tokens_per_second: float


def merge(a: Event, b: Event) -> Event:
    """Two consecutive events of one request as one."""
    logprobs = None if a.logprobs is None and b.logprobs is None else (a.logprobs or []) + (b.logprobs or [])
    return Event(a.token_ids + b.token_ids, a.text + b.text, finish=b.finish, error=b.error, logprobs=logprobs)


class Call:
    """One generation call between admission and the end of its stream.

    ``admission`` gives the caller's slot back (``admission.gate.leave``) and holds the metrics and
    the audit log; ``served`` is the model the call runs on.
    """

    def __init__(self, admission, served: Served, caller: Caller, request_id: str, api: str = "grpc") -> None:
        self.admission, self.served, self.caller, self.request_id = admission, served, caller, request_id
        self.api = api  # "grpc" or "http" (the OpenAI API): a label of enclave_requests_total
        self.user = ""  # the end user's id (audited as a keyed hash only)
        self.job: Job | None = None
        self.entered = False
        self.finish: str | None = None
        self.last_token: float | None = None
        self.prompt: list[dict] | str | None = None  # set when the model's text is captured for reviewers
        self.text: list[str] = []  # the answer so far, only then

    def release(self) -> None:
        """Give the caller's slot back (once)."""
        if self.entered:
            self.entered = False
            self.admission.gate.leave(self.caller)

    async def events(self):
        """Submit the job and yield its events; a cancelled or failed call frees its slot."""
        engine = self.served.engine
        try:
            # Routed at admission; a release change since may have unloaded that version (serve.models).
            self.job.adapter = Models.reroute(self.served, self.job.adapter, self.request_id)
            engine.submit(self.job)
            while True:
                event: Event = await self.job.queue.get()
                while not self.job.queue.empty() and event.finish is None and event.error is None:
                    event = merge(event, self.job.queue.get_nowait())  # a slow reader gets fewer, larger messages
                if event.error is not None:
                    raise event.error
                self._timing(event)
                if self.prompt is not None:
                    self.text.append(event.text)
                if event.finish:
                    self.finish = event.finish
                    # before the last message leaves: a rating sent the moment it arrives finds the answer
                    answer = "".join(self.text) if self.prompt is not None else None
                    self.admission.feedback.remember(self, self.prompt, answer)
                yield event
                if event.finish:
                    return
        finally:
            self.release()
            if self.finish is None:
                engine.cancel(self.job)

    async def accounted(self, body):
        """Yield from ``body``; when it ends, however it ends, record the call under its status code."""
        code = grpc.StatusCode.OK
        try:
            async for item in body:
                yield item
        except ServeError as exc:
            code = exc.code
            raise
        except asyncio.CancelledError:  # the caller went away, or its deadline passed
            late = self.job.deadline is not None and time.monotonic() >= self.job.deadline
            code = grpc.StatusCode.DEADLINE_EXCEEDED if late else grpc.StatusCode.CANCELLED
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            raise
        finally:
            self.record(code)

    def _timing(self, event: Event) -> None:
        if not event.token_ids:
            return
        now = time.monotonic()
        m, labels = self.admission.metrics, (self.served.name, self.job.adapter or "")
        if self.last_token is None:
            m.ttft.labels(*labels).observe(now - self.job.arrived)
            if self.job.started is not None:
                m.queue.labels(*labels).observe(self.job.started - self.job.arrived)
            self.itl = m.itl.labels(*labels)
        else:
            self.itl.observe((now - self.last_token) / len(event.token_ids))
        self.last_token = now

    def usage(self) -> Usage:
        """Token counts and timings so far (final once the last event is out)."""
        job, end = self.job, self.job.finished or time.monotonic()
        first = job.first_token or end
        decode = end - first
        return Usage(
            prompt_tokens=len(job.prompt_ids),
            completion_tokens=job.generated,
            queue_seconds=(job.started or end) - job.arrived,
            time_to_first_token_seconds=first - job.arrived,
            total_seconds=end - job.arrived,
            decode_tokens_per_second=job.generated / decode if decode > 0 else 0.0,
        )

    def record(self, code: grpc.StatusCode) -> None:
        """Count the call in the metrics and write its one audit line (counts and names, never text)."""
        job, m = self.job, self.admission.metrics
        labels = (self.served.name, job.adapter or "")
        m.requests.labels(*labels, code.name, self.finish or "", self.api).inc()
        m.prompt_tokens.labels(*labels).inc(len(job.prompt_ids))
        m.generation_tokens.labels(*labels).inc(job.generated)
        m.prompt_len.labels(*labels).observe(len(job.prompt_ids))
        if self.finish:
            m.output_len.labels(*labels).observe(job.generated)
            if self.finish == "context_limit":
                m.context_limit.labels(*labels).inc()
            m.e2e.labels(*labels).observe((job.finished or time.monotonic()) - job.arrived)
        self.admission.audit.record(
            request_id=self.request_id,
            token=self.caller.id,
            model=self.served.name,
            version=self.served.version.version,
            adapter=job.adapter or "",
            prompt_tokens=len(job.prompt_ids),
            completion_tokens=job.generated,
            status=code.name,
            finish=self.finish or "",
            latency_seconds=round(time.monotonic() - job.arrived, 4),
            **({"user": self.admission.audit.pseudonym(self.user)} if self.user else {}),
        )
