"""Continuous batching for step-by-step backends (onnxruntime, torch).

One thread owns the model. Each iteration it admits waiting requests into free slots, prefills
up to ``max_batched_tokens`` prompt tokens, then runs one decode step for every running sequence.
A request joins the batch once its prompt is done and leaves it as soon as it finishes, is
cancelled or passes its deadline, so its slot is free for the next one (Orca, Yu et al. OSDI 2022).

On a backend that prefills in chunks (onnxruntime: ``begin`` and ``prefill_chunk``) a long prompt
runs a chunk at a time between decode steps, so one arriving 2,000-token prompt delays each of
the running streams' tokens by a chunk instead of freezing them for its whole prefill
(Sarathi-Serve's chunked prefill, vLLM's ``enable_chunked_prefill``); prompts admitted together
share a chunk. While streams decode, each chunk is sized from the last one's measured time to
take ``prefill_stall`` decode steps (a feedback loop: the cost per token grows as a prompt's past
does); with none decoding it is ``max_batched_tokens``. Other backends prefill each admitted prompt whole.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from serve.config import SchedulerSettings
from serve.engine.interface import StepModel
from serve.engine.tracker import Tracker
from serve.errors import DeadlineExceeded, ResourceExhausted
from serve.job import Event, Job, Outbox
from serve.sampling import Sampler
from serve.structured import Constraint

log = logging.getLogger("enclave.serve.engine")


MIN_CHUNK = 8  # prompt tokens: fewer would cost more in fixed overhead than they save in stall
EMA = 0.3  # weight of the newest timing in the running averages


@dataclass
class _Prefill:
    """A request whose prompt is being prefilled; ``state`` is the backend's (``begin``)."""

    job: Job
    state: object


@dataclass
class _Seq:
    job: Job
    sampler: Sampler
    tracker: Tracker
    alive: bool = True

    def advance(self, logits: np.ndarray) -> bool:
        token = self.sampler(logits, self.tracker.seen, self.tracker.banned())
        return self.tracker.accept(token, self.sampler.last)


class StepEngine:
    """Schedules jobs onto one StepModel; thread-safe ``submit`` and ``cancel``. Implements ``Engine``."""

    bundled: dict = {}  # adapters that came inside the artifact: none for these backends

    def __init__(self, model: StepModel, tokenizer, settings: SchedulerSettings, name: str, gauges=None) -> None:
        self.model, self.tokenizer, self.settings, self.name = model, tokenizer, settings, name
        self.gauges = gauges  # serve.metrics.EngineGauges or None
        self.waiting: deque[Job] = deque()
        self.queued_tokens = 0
        self.running: list[_Seq] = []
        self.prefilling: list[_Prefill] = []  # admitted, prompt not done yet (chunked backends)
        self.chunked = hasattr(model, "prefill_chunk")
        self.step_adapters = 0  # distinct adapters in the last decode step, for the gauges
        self.step_seconds: float | None = None  # running average of a decode step
        # prompt tokens per chunk beside decoding streams, sized as they run; the first is the smallest
        # (a first guess of 64 took 3 decode steps here, and every running stream waited for it)
        self.chunk = MIN_CHUNK
        self.batch = model.new_batch()
        self.outbox = Outbox()
        self.cv = threading.Condition()
        self.closing = False
        self.calls: list[tuple] = []  # (fn, future, ready) run on the model thread between steps
        self.thread = threading.Thread(target=self._loop, name=f"engine-{name}", daemon=True)

    @property
    def backend(self) -> str:
        return self.model.backend

    def start(self) -> None:
        self.thread.start()

    def submit(self, job: Job) -> None:
        """Queue a job, or raise ResourceExhausted when the queue is full."""
        s = self.settings
        with self.cv:
            if self.closing:
                raise ResourceExhausted(f"model {self.name} is shutting down", retry_ms=1000)
            # Both bounds hold at every moment, not only once the batch is full: a burst that arrives
            # between two steps waits in ``waiting`` before the model thread admits any of it.
            full = self._active() + len(self.waiting) >= s.max_batch_size + s.max_queued
            heavy = self.waiting and self.queued_tokens + len(job.prompt_ids) > s.max_queued_tokens
            if full or heavy:
                raise ResourceExhausted(
                    f"model {self.name} is busy: {len(self.running)} running, {len(self.waiting)} queued "
                    f"({self.queued_tokens} prompt tokens; limits scheduler.max_queued={s.max_queued}, "
                    f"scheduler.max_queued_tokens={s.max_queued_tokens})",
                    retry_ms=self._retry_ms(),
                )
            self.waiting.append(job)
            self.queued_tokens += len(job.prompt_ids)
            self._update_gauges()
            self.cv.notify()

    def _retry_ms(self) -> int:
        # A rough hint: the queue ahead, at the batch's pace of about one request per slot.
        return int(min(60_000, 250 * (1 + len(self.waiting) // max(1, self.settings.max_batch_size))))

    def _active(self) -> int:
        """Requests holding a slot: decoding, or with their prompt being prefilled."""
        return len(self.running) + len(self.prefilling)

    def cancel(self, job: Job) -> None:
        """Drop a job; its slot is freed at the next step."""
        job.cancelled = True
        with self.cv:
            self.cv.notify()

    @property
    def context_length(self) -> int:
        return self.model.context_length

    def call(self, fn, ready=lambda: True) -> Future:
        """Run ``fn()`` on the model thread between two steps, once ``ready()`` holds."""
        future: Future = Future()
        with self.cv:
            self.calls.append((fn, future, ready))
            self.cv.notify()
        return future

    async def load_adapter(self, name: str, path) -> None:
        await asyncio.wrap_future(self.call(lambda: self.model.load_adapter(name, path)))

    async def unload_adapter(self, name: str) -> None:
        """Unload once no queued or running request uses the adapter (the caller stops new ones first)."""

        def unused() -> bool:
            jobs = [*self.waiting, *(s.job for s in self.running), *(p.job for p in self.prefilling)]
            return all(j.adapter != name for j in jobs)

        await asyncio.wrap_future(self.call(lambda: self.model.unload_adapter(name), unused))

    def load(self) -> int:
        """Requests running or queued."""
        with self.cv:
            return self._active() + len(self.waiting)

    def close(self, wait: bool = True) -> None:
        """Finish what runs and what is queued, then stop the thread."""
        with self.cv:
            self.closing = True
            self.cv.notify()
        if wait and self.thread.is_alive():
            self.thread.join()

    # --- the model thread -------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self.cv:
                while not self.closing and not self.waiting and not self._active() and not self.calls:
                    self.cv.wait()
                if self.closing and not self.waiting and not self._active():
                    self._run_calls()
                    return
                calls = [c for c in self.calls if c[2]()]
                self.calls = [c for c in self.calls if c not in calls]
                admitted = self._admit()
            for call in calls:
                self._run_call(*call)
            try:
                self._iteration(admitted)
            except Exception as exc:  # a backend failure: fail these requests, keep serving
                every = [*(s.job for s in self.running), *(p.job for p in self.prefilling), *admitted]
                jobs = {id(j): j for j in every}
                log.exception("model %s: step failed; failing %d requests", self.name, len(jobs))
                for job in jobs.values():
                    if job.finished is None:
                        job.emit(Event([], error=exc))
                self.running, self.prefilling, self.batch = [], [], self.model.new_batch()
            self.outbox.flush()
            with self.cv:
                self._update_gauges(stepped=True)

    def _run_call(self, fn, future: Future, _ready=None) -> None:
        try:
            future.set_result(fn())
        except Exception as exc:
            future.set_exception(exc)

    def _run_calls(self) -> None:
        calls, self.calls = self.calls, []
        for call in calls:
            self._run_call(*call)

    def _admit(self) -> list[Job]:
        """Waiting jobs that get a slot now (whole-prompt backends: at most ``max_batched_tokens`` of prompt)."""
        out, budget = [], self.settings.max_batched_tokens
        while self.waiting and self._active() + len(out) < self.settings.max_batch_size:
            job = self.waiting[0]
            if out and not self.chunked and len(job.prompt_ids) > budget:
                break
            self.waiting.popleft()
            job.outbox = self.outbox
            self.queued_tokens -= len(job.prompt_ids)
            budget -= len(job.prompt_ids)
            out.append(job)
        return out

    def _iteration(self, admitted: list[Job]) -> None:
        self._drop_gone()
        if self.chunked:
            for job in admitted:
                if not self._gone(job):
                    job.started = time.monotonic()
                    self.prefilling.append(_Prefill(job, self.model.begin(job.prompt_ids, job.adapter)))
            self._prefill_chunk()
        else:
            for job in admitted:
                if self._gone(job):
                    continue
                job.started = time.monotonic()
                self._join(job, *self.model.prefill(job.prompt_ids, job.adapter))
                self.outbox.flush()  # its first token goes out now, not after the other prefills and the step
        if not self.running:
            return
        self.step_adapters = len({s.job.adapter or "" for s in self.running})  # the base counts as one
        started = time.perf_counter()
        logits = self.batch.step([s.tracker.last for s in self.running])  # (rows, vocab)
        self.step_seconds = _average(self.step_seconds, time.perf_counter() - started)
        for seq, row in zip(self.running, logits):
            seq.alive = self._advance(seq, row)
        self._compact()

    def chunk_tokens(self) -> int:
        """Prompt tokens to prefill this iteration: ``max_batched_tokens``, or while streams decode,
        the chunk the controller has sized to take ``prefill_stall`` decode steps."""
        cap, stall = self.settings.max_batched_tokens, self.settings.prefill_stall
        if not self.running or not stall:
            return cap
        return min(cap, self.chunk)

    def _resize_chunk(self, tokens: int, seconds: float) -> None:
        """After a chunk run beside decoding streams: scale the next chunk towards ``prefill_stall``
        decode steps' time (at most halved or doubled at once; a chunk's cost grows with the prompt
        it continues, so the size follows it down)."""
        if self.step_seconds is None or seconds <= 0:
            return
        target = self.settings.prefill_stall * self.step_seconds
        scale = min(2.0, max(0.5, target / seconds))
        self.chunk = max(MIN_CHUNK, min(self.settings.max_batched_tokens, int(tokens * scale)))

    def _prefill_chunk(self) -> None:
        """One chunk of prompt tokens, oldest prompts first; finished prompts join the batch."""
        size = self.chunk_tokens()
        budget, chosen = size, []
        for p in self.prefilling:
            need = min(p.state.remaining, size)
            if chosen and need > budget:
                break
            chosen.append(p)
            budget -= need
        if not chosen:
            return
        started = time.perf_counter()
        results = self.model.prefill_chunk([p.state for p in chosen], size)
        if self.running and self.settings.prefill_stall and size - budget == size:  # a full chunk: a fair sample
            self._resize_chunk(size, time.perf_counter() - started)
        for p, result in zip(chosen, results):
            if result is not None:
                self.prefilling.remove(p)
                self._join(p.job, *result)
        self.outbox.flush()  # first tokens go out now, before the decode step

    def _join(self, job: Job, logits: np.ndarray, row) -> None:
        """A prompt is done: sample its first token, and decode it with the batch unless that ended it."""
        tracker = Tracker(job, self.tokenizer, self.model.context_length)
        constraint = Constraint(self.tokenizer, job.sampling.grammar) if job.sampling.grammar else None
        seq = _Seq(job, Sampler(job.sampling, len(job.prompt_ids), constraint), tracker)
        if self._advance(seq, logits):
            self.batch.add(row)
            self.running.append(seq)

    def _advance(self, seq: _Seq, logits: np.ndarray) -> bool:
        """One sequence's next token; a failure here ends that request only, not the batch."""
        try:
            return seq.advance(logits)
        except Exception as exc:
            log.exception("model %s: request %s failed while sampling", self.name, seq.job.request_id)
            seq.job.emit(Event([], error=exc))
            return False

    def _gone(self, job: Job) -> bool:
        if job.cancelled:
            return True
        if job.deadline is not None and time.monotonic() > job.deadline:
            job.emit(Event([], error=DeadlineExceeded("the call's deadline passed before generation finished")))
            return True
        return False

    def _drop_gone(self) -> None:
        self.prefilling = [p for p in self.prefilling if not self._gone(p.job)]
        for seq in self.running:
            if self._gone(seq.job):
                seq.alive = False
        self._compact()

    def _compact(self) -> None:
        keep = [i for i, s in enumerate(self.running) if s.alive]
        if len(keep) != len(self.running):
            self.batch.keep(keep)
            self.running = [self.running[i] for i in keep]

    def _update_gauges(self, stepped: bool = False) -> None:
        if self.gauges is not None:
            adapters, self.step_adapters = self.step_adapters, 0
            self.gauges.update(self._active(), len(self.waiting), self.settings.max_batch_size, stepped, adapters)
            cache = getattr(self.model, "prefix_cache", None)  # backends that cache prefixes (onnxruntime)
            if cache is not None:
                self.gauges.prefix(cache)


def _average(old: float | None, new: float) -> float:
    return new if old is None else (1 - EMA) * old + EMA * new
