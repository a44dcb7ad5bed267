"""Continuous batching for step-by-step backends (onnxruntime, torch).

One thread owns the model. Each iteration it admits waiting requests into free slots (prefill,
bounded by ``max_batched_tokens``), then runs one decode step for every running sequence. A
request joins at the next step and leaves the batch as soon as it finishes, is cancelled or
passes its deadline, so its slot is free for the next one (Orca, Yu et al. OSDI 2022).
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

log = logging.getLogger("enclave.serve.engine")


@dataclass
class _Seq:
    job: Job
    sampler: Sampler
    tracker: Tracker
    alive: bool = True

    def advance(self, logits: np.ndarray) -> bool:
        return self.tracker.accept(self.sampler(logits, self.tracker.seen, self.tracker.banned()))


class StepEngine:
    """Schedules jobs onto one StepModel; thread-safe ``submit`` and ``cancel``. Implements ``Engine``."""

    bundled: dict = {}  # adapters that came inside the artifact: none for these backends

    def __init__(self, model: StepModel, tokenizer, settings: SchedulerSettings, name: str, gauges=None) -> None:
        self.model, self.tokenizer, self.settings, self.name = model, tokenizer, settings, name
        self.gauges = gauges  # serve.metrics.EngineGauges or None
        self.waiting: deque[Job] = deque()
        self.queued_tokens = 0
        self.running: list[_Seq] = []
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
            full = len(self.running) + len(self.waiting) >= s.max_batch_size + s.max_queued
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
            return all(j.adapter != name for j in self.waiting) and all(s.job.adapter != name for s in self.running)

        await asyncio.wrap_future(self.call(lambda: self.model.unload_adapter(name), unused))

    def load(self) -> int:
        """Requests running or queued."""
        with self.cv:
            return len(self.running) + len(self.waiting)

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
                while not self.closing and not self.waiting and not self.running and not self.calls:
                    self.cv.wait()
                if self.closing and not self.waiting and not self.running:
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
                log.exception(
                    "model %s: step failed; failing %d requests", self.name, len(self.running) + len(admitted)
                )
                for seq in self.running:
                    seq.job.emit(Event([], error=exc))
                for job in admitted:
                    if job.finished is None:
                        job.emit(Event([], error=exc))
                self.running, self.batch = [], self.model.new_batch()
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
        out, budget = [], self.settings.max_batched_tokens
        while self.waiting and len(self.running) + len(out) < self.settings.max_batch_size:
            job = self.waiting[0]
            if out and len(job.prompt_ids) > budget:
                break
            self.waiting.popleft()
            job.outbox = self.outbox
            self.queued_tokens -= len(job.prompt_ids)
            budget -= len(job.prompt_ids)
            out.append(job)
        return out

    def _iteration(self, admitted: list[Job]) -> None:
        self._drop_gone()
        for job in admitted:
            if self._gone(job):
                continue
            job.started = time.monotonic()
            logits, row = self.model.prefill(job.prompt_ids, job.adapter)
            seq = _Seq(job, Sampler(job.sampling), Tracker(job, self.tokenizer, self.model.context_length))
            if self._advance(seq, logits):
                self.batch.add(row)
                self.running.append(seq)
            self.outbox.flush()  # its first token goes out now, not after the other prefills and the step
        if not self.running:
            return
        logits = self.batch.step([s.tracker.last for s in self.running])  # (rows, vocab)
        for seq, row in zip(self.running, logits):
            seq.alive = self._advance(seq, row)
        self._compact()

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
            self.gauges.update(len(self.running), len(self.waiting), self.settings.max_batch_size, stepped)
            cache = getattr(self.model, "prefix_cache", None)  # backends that cache prefixes (onnxruntime)
            if cache is not None:
                self.gauges.prefix(cache)
