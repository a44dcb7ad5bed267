"""Faults while serving: streams cancelled at random points and calls past their deadline leave
no running or waiting request, no batch row and no cache behind, and the server keeps serving."""

from __future__ import annotations

import concurrent.futures as cf
import random
import time

import grpc
import pytest

from tests.reliability.conftest import gauge, profile
from tests.serve.conftest import running, serve_config
from tests.serve.test_generate import _scrape

pytestmark = pytest.mark.reliability

CANCELLED = profile(60, 200)
DEADLINES = profile(40, 200)


def batch_rows(batch) -> int:
    """Rows held by a backend's batch (onnxruntime: one length each; torch: one adapter each)."""
    return len(batch.lengths) if hasattr(batch, "lengths") else len(batch.adapters)


def settled(server, models=("tiny-onnx", "tiny"), timeout: float = 10.0) -> dict:
    """Wait until every engine is idle; its gauges, rows and cache then."""
    deadline = time.monotonic() + timeout
    while True:
        engines = {m: server.models.active[m].engine for m in models}
        idle = all(not e.running and not e.waiting for e in engines.values())
        text = _scrape(server)
        gauges = {
            m: (gauge(text, "enclave_num_requests_running", m), gauge(text, "enclave_num_requests_waiting", m))
            for m in models
        }
        if (idle and all(g == (0, 0) for g in gauges.values())) or time.monotonic() > deadline:
            return {
                m: {
                    "running": len(e.running),
                    "waiting": len(e.waiting),
                    "gauges": gauges[m],
                    "rows": batch_rows(e.batch),
                    "cache": bool(e.batch.kv),
                }
                for m, e in engines.items()
            }
        time.sleep(0.1)


def test_streams_cancelled_at_random_points_leak_nothing(serve_repo, record):
    from enclave.grpc_client import Client

    rng = random.Random(1)
    cancel_after = [rng.randint(0, 20) for _ in range(CANCELLED)]
    with running(serve_config(serve_repo, scheduler__max_batch_size=8, limits__max_streams_per_token=64)) as server:

        def one(i: int) -> str:
            model = ("tiny-onnx", "tiny")[i % 2]
            with Client(f"127.0.0.1:{server.port}", timeout=60) as c:
                call = c.stream("The patient was given", model=model, max_tokens=64)
                try:
                    for n, _ in enumerate(call):
                        if n >= cancel_after[i]:
                            call.cancel()
                    return "finished"
                except grpc.RpcError as e:
                    return e.code().name

        with cf.ThreadPoolExecutor(32) as pool:
            codes = list(pool.map(one, range(CANCELLED)))
        state = settled(server)
        after = Client(f"127.0.0.1:{server.port}", timeout=30).generate("Blood", max_tokens=4)
        text = _scrape(server)
    counts = {c: codes.count(c) for c in set(codes)}
    record(
        {
            "cancelled_streams": CANCELLED,
            "client_outcomes": counts,
            "after": state,
            "server_counted_cancelled": sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("enclave_requests_total{") and 'code="CANCELLED"' in line
            ),
        }
    )
    assert set(codes) <= {"CANCELLED", "finished"} and counts.get("CANCELLED", 0) > CANCELLED // 2
    for model, s in state.items():
        assert s["running"] == 0 and s["waiting"] == 0 and s["gauges"] == (0.0, 0.0), (model, s)
        assert s["rows"] == 0 and not s["cache"], (model, s)  # no slot and no KV cache left behind
    assert len(after.token_ids) == 4  # still serving


def test_expired_deadlines_are_deadline_exceeded_and_free_their_slot(serve_repo, record, monkeypatch):
    from enclave.grpc_client import Client
    from serve.backends import ort

    step = ort.OrtBatch.step

    def slow(self, tokens):  # each step takes 20 ms, so a 0.1-0.3 s deadline expires mid-generation
        time.sleep(0.02)
        return step(self, tokens)

    monkeypatch.setattr(ort.OrtBatch, "step", slow)
    rng = random.Random(2)
    with running(serve_config(serve_repo, scheduler__max_batch_size=4, limits__max_streams_per_token=64)) as server:

        def one(i: int) -> str:
            with Client(f"127.0.0.1:{server.port}") as c:
                try:
                    c.generate(
                        "The court granted the motion to",
                        model="tiny-onnx",
                        max_tokens=200,
                        timeout=rng.uniform(0.1, 0.3),
                    )
                    return "OK"
                except grpc.RpcError as e:
                    return e.code().name

        with cf.ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(one, range(DEADLINES)))
        state = settled(server, models=("tiny-onnx",))
        after = Client(f"127.0.0.1:{server.port}", timeout=30).generate("Blood", model="tiny-onnx", max_tokens=4)
    counts = {c: codes.count(c) for c in set(codes)}
    record({"calls": DEADLINES, "outcomes": counts, "after": state})
    assert set(codes) == {"DEADLINE_EXCEEDED"}
    s = state["tiny-onnx"]
    assert s["running"] == 0 and s["waiting"] == 0 and s["gauges"] == (0.0, 0.0) and s["rows"] == 0 and not s["cache"]
    assert len(after.token_ids) == 4
