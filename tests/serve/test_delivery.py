"""How events reach a call: one wake-up per engine phase (Outbox), and queued events sent as
one message when the reader is behind."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from serve.call import Call
from serve.job import Event, Job, Outbox, Sampling
from serve.metrics import Metrics


def test_outbox_delivers_a_phase_in_order_with_one_wakeup():
    async def main():
        loop = asyncio.get_running_loop()
        jobs = [Job(f"r{i}", [1], Sampling(max_tokens=4), loop=loop, queue=asyncio.Queue()) for i in range(3)]
        outbox = Outbox()
        for job in jobs:
            job.outbox = outbox
        wakeups = []
        real = loop.call_soon_threadsafe
        loop.call_soon_threadsafe = lambda *a: (wakeups.append(a), real(*a))[1]
        for step in range(2):
            for job in jobs:
                job.emit(Event([step]))
        assert all(job.queue.empty() for job in jobs)  # nothing is delivered before the flush
        outbox.flush()
        await asyncio.sleep(0)
        assert len(wakeups) == 1 and outbox.items == []
        assert [[job.queue.get_nowait().token_ids for _ in range(2)] for job in jobs] == [[[0], [1]]] * 3

    asyncio.run(main())


def test_events_queued_behind_a_slow_reader_go_out_as_one():
    async def main():
        job = Job("r", [1], Sampling(max_tokens=8), loop=asyncio.get_running_loop(), queue=asyncio.Queue())
        gate = SimpleNamespace(enter=lambda c: None, leave=lambda c: None)
        feedback = SimpleNamespace(remember=lambda *a: None)  # no feedback store
        admission = SimpleNamespace(gate=gate, metrics=Metrics(), feedback=feedback)
        served = SimpleNamespace(engine=SimpleNamespace(submit=lambda j: None, cancel=lambda j: None), name="m")
        call = Call(admission, served, caller=None, request_id="r")
        call.job = job
        for i, text in enumerate("abc"):
            job.queue.put_nowait(Event([i], text))
        job.queue.put_nowait(Event([3], "d", finish="length"))
        job.queue.put_nowait(Event([9], "not read"))  # after the finish: never merged in
        out = [(e.token_ids, e.text, e.finish) async for e in call.events()]
        assert out == [([0, 1, 2, 3], "abcd", "length")]
        assert job.queue.qsize() == 1

    asyncio.run(main())
