"""Drain: SIGTERM to a real `enclave serve` process under load (every call running and streaming
when the signal comes). Every call in flight finishes with all its tokens, new calls are refused
(UNAVAILABLE), and the process exits 0 within the grace period."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import subprocess
import sys
import time

import grpc
import pytest

from tests.reliability.conftest import profile

pytestmark = pytest.mark.reliability

IN_FLIGHT = profile(16, 48)
GRACE = 60


def test_sigterm_under_load_finishes_in_flight_calls_and_exits_0(serve_repo, record):
    from enclave.grpc_client import Client
    from enclave.v1 import inference_pb2 as pb

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "enclave",
            "serve",
            "--repo",
            str(serve_repo),
            "--port",
            "0",
            "--metrics-port",
            "0",
            "default_model=tiny-onnx",
            f"grace_seconds={GRACE}",
            f"scheduler.max_batch_size={IN_FLIGHT}",
            f"limits.max_streams_per_token={IN_FLIGHT + 8}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        assert "listening on" in line, proc.stderr.read()
        target = f"127.0.0.1:{line.split(',')[0].rsplit(':', 1)[1]}"
        started = []

        def one(i: int):
            with Client(target, timeout=120) as c:
                stream = c.stream(
                    "The court granted the motion to",
                    model=("tiny-onnx", "tiny")[i % 2],
                    max_tokens=100,
                    min_tokens=100,
                )
                first = next(stream)
                started.append(i)
                rest = list(stream)
                return len(first.token_ids) + sum(len(p.token_ids) for p in rest), rest[-1].finish_reason

        with cf.ThreadPoolExecutor(IN_FLIGHT) as pool:
            futures = [pool.submit(one, i) for i in range(IN_FLIGHT)]
            deadline = time.monotonic() + 60
            while len(started) < IN_FLIGHT and time.monotonic() < deadline:  # every call running and streaming
                time.sleep(0.01)
            assert len(started) == IN_FLIGHT
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            with Client(target) as c:
                with pytest.raises(grpc.RpcError) as refused:
                    c.generate("hi", max_tokens=2, timeout=5)
            results = [f.result() for f in futures]
        code = proc.wait(GRACE + 10)
        exited = time.monotonic() - signalled
    finally:
        proc.kill()
    record(
        {
            "in_flight": IN_FLIGHT,
            "completed": sum(1 for n, f in results if n == 100 and f == pb.FINISH_REASON_LENGTH),
            "new_call": refused.value.code().name,
            "exit_code": code,
            "seconds_to_exit": round(exited, 2),
            "grace_seconds": GRACE,
        }
    )
    assert all(n == 100 and f == pb.FINISH_REASON_LENGTH for n, f in results), results
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert code == 0 and exited < GRACE
