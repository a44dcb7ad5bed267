"""Availability under hostile load: huge prompts never stall the event loop, queue bounds hold at
every moment, quotas are per caller (per address without tokens), Tokenize counts, refused calls
cannot flood the audit log, and one connection holds a bounded number of streams."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import threading
import time

import grpc
import pytest

from enclave.grpc_client import Client
from tests.serve.conftest import running, serve_config, status_of

# 20 hostile calls from another process (as from another machine): Generate and CountTokens with
# about 4 MB of text, and with text just under the byte bound, which the server must tokenize.
HOSTILE = """
import concurrent.futures as cf, json, sys, time
import grpc
from enclave.grpc_client import Client
target, near = sys.argv[1], "x" * int(sys.argv[2])
huge = "lorem ipsum dolor sit amet " * 150_000
def hostile(i):
    with Client(target, timeout=60) as c:
        text = huge if i % 2 else near
        call = c.count_tokens if i % 4 < 2 else (lambda t: c.generate(t, max_tokens=2))
        try:
            call(text)
            return ["OK", ""]
        except grpc.RpcError as e:
            return [e.code().name, e.details()]
with cf.ThreadPoolExecutor(20) as pool:
    started = time.monotonic()
    results = list(pool.map(hostile, range(20)))
    print(json.dumps({"results": results, "window": [started, time.monotonic()]}))
"""


def test_huge_prompts_leave_health_answering_within_100ms(serve_repo):
    """Three processes, as in production: `enclave serve`, a hostile client, and the health probe (this test)."""
    import os
    import subprocess
    import sys

    from serve.requests import max_token_bytes
    from serve.tokenizer import ServeTokenizer

    tokenizer = ServeTokenizer(serve_repo / "models" / "tiny-onnx" / "1")
    near = (
        4096 * max_token_bytes(tokenizer) - 1
    )  # just under the bound of the default max_prompt_tokens: tokenized, then refused
    server = subprocess.Popen(
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
            "limits.max_message_bytes=8388608",
            "limits.max_streams_per_token=32",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    try:
        line = server.stdout.readline()
        assert "listening on" in line, server.stderr.read()
        target = f"127.0.0.1:{line.split(',')[0].rsplit(':', 1)[1]}"
        samples, stop = [], threading.Event()

        def probe():
            with Client(target, timeout=5) as c:
                c.health()
                while not stop.is_set():
                    started = time.monotonic()  # CLOCK_MONOTONIC: one clock for both processes
                    assert c.health() == "SERVING"
                    samples.append((started, time.monotonic() - started))
                    time.sleep(0.005)

        watcher = threading.Thread(target=probe)
        watcher.start()
        out = subprocess.run(
            [sys.executable, "-c", HOSTILE, target, str(near)], capture_output=True, text=True, timeout=300
        )
        stop.set()
        watcher.join()
        report = json.loads(out.stdout)
        results, (first, last) = report["results"], report["window"]
        assert {code for code, _ in results} == {"OUT_OF_RANGE"}, out.stderr
        assert any("characters cannot fit" in d for _, d in results) and any("characters" not in d for _, d in results)
        during = [took for at, took in samples if first <= at <= last]
        # the probe answered while the refusals ran (however fast they were), and every answer was quick
        assert len(during) >= 3, f"{len(during)} health probes in the {last - first:.3f} s of refusals"
        # Every probe answers within 100 ms but one, which may take up to 200 ms: the probe thread
        # shares 2 cores with the server and the hostile client, and one scheduling hiccup (103 ms
        # in a CI-like run) is not a stall; a stalled event loop (seconds, before tokenizing moved
        # off it) fails both bounds.
        slowest = sorted((took for _, took in samples), reverse=True)
        assert slowest[0] < 0.2 and (len(slowest) < 2 or slowest[1] < 0.1), (
            f"health took {slowest[0] * 1000:.0f} ms and {slowest[1] * 1000:.0f} ms while 20 huge prompts were refused"
        )
        with Client(target, timeout=30) as c:
            assert c.generate("Blood", max_tokens=3).usage.completion_tokens == 3
    finally:
        server.terminate()
        server.wait(60)


def test_queue_bounds_hold_before_the_batch_is_full(server):
    """A burst between two engine steps: 500 submissions, the bounds say 8 running + 4 queued."""
    from serve.config import SchedulerSettings
    from serve.errors import ResourceExhausted
    from serve.job import Job, Sampling

    engine = server.models.active["tiny-onnx"].engine
    saved = engine.settings
    engine.settings = SchedulerSettings(max_batch_size=8, max_queued=4, max_queued_tokens=100)
    accepted, refused = [], 0
    try:
        with engine.cv:  # the model thread cannot admit anything while we hold its lock: a burst arrives at once
            for i in range(500):
                job = Job(f"burst-{i}", [1, 2, 3], Sampling(max_tokens=1))
                try:
                    engine.submit(job)
                    accepted.append(job)
                except ResourceExhausted:
                    refused += 1
            assert len(accepted) == 12 and refused == 488
            engine.waiting.clear()
            engine.queued_tokens = 0
        engine.settings = SchedulerSettings(max_batch_size=8, max_queued=64, max_queued_tokens=10)
        with engine.cv:
            engine.submit(Job("long-1", list(range(8)), Sampling(max_tokens=1)))  # an empty queue takes any prompt
            with pytest.raises(ResourceExhausted, match="max_queued_tokens=10"):
                engine.submit(Job("long-2", list(range(8)), Sampling(max_tokens=1)))
            engine.waiting.clear()
            engine.queued_tokens = 0
    finally:
        engine.settings = saved


class _Context:
    """The two things the gate reads from a grpc context."""

    def __init__(self, peer: str, metadata=()) -> None:
        self._peer, self._metadata = peer, metadata

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self):
        return self._metadata


def test_without_tokens_each_client_address_has_its_own_quota(serve_repo):
    from serve.errors import ResourceExhausted
    from serve.gate import Gate

    gate = Gate(serve_config(serve_repo, limits__max_streams_per_token=2))
    gate.accepting = True
    a1, a2, b = (gate.caller(_Context(p)) for p in ("ipv4:10.0.0.7:5000", "ipv4:10.0.0.7:5001", "ipv6:[fd00::9]:443"))
    gate.enter(a1)
    gate.enter(a2)  # another connection from the same address: the same quota
    with pytest.raises(ResourceExhausted, match="client address"):
        gate.enter(a1)
    gate.enter(b)  # a second client is not starved by the first
    for c in (a1, a2, b):
        gate.leave(c)
    assert not gate.open  # no entry left behind per address
    assert not a1.admin and a1.id == "anonymous"


@contextlib.contextmanager
def _model_thread_held(server, model: str = "tiny-onnx"):
    """The model thread waits until the block ends: admitted calls hold their slots however fast the
    tiny model is (it streams 80 tokens in about 19 ms, so a stream's slot could be free again before
    the next call of a test)."""
    held = threading.Event()
    server.models.active[model].engine.call(held.wait)
    try:
        yield held
    finally:
        held.set()


def _until_open(server, calls: int) -> None:
    """Until the server counts ``calls`` open calls (all callers together)."""
    deadline = time.monotonic() + 10
    while sum(server.gate.open.values()) < calls:
        assert time.monotonic() < deadline, f"fewer than {calls} calls were admitted: {dict(server.gate.open)}"
        time.sleep(0.01)


def test_one_client_cannot_starve_another_over_the_network(serve_repo):
    """Over real sockets: IPv4 and IPv6 loopback are two client addresses on a dual-stack listener."""
    cfg = serve_config(serve_repo, host="::", insecure=True, limits__max_streams_per_token=2)
    with running(cfg) as server, _model_thread_held(server) as held:
        with Client(f"127.0.0.1:{server.port}", timeout=60) as greedy:
            streams = [greedy.stream("The patient was given", max_tokens=8) for _ in range(2)]
            _until_open(server, 2)
            assert status_of(lambda: greedy.generate("hi", max_tokens=2))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
            with Client(f"[::1]:{server.port}", timeout=60) as other, cf.ThreadPoolExecutor(1) as pool:
                answer = pool.submit(other.generate, "hi", max_tokens=2)
                try:
                    _until_open(server, 3)  # admitted while the greedy address holds both of its slots
                finally:
                    held.set()  # (before the pool waits for the answer, which needs the model thread)
                assert answer.result().usage.completion_tokens == 2
            for s in streams:
                assert list(s)[-1].finish_reason


def test_tokenize_and_count_tokens_count_against_the_limit(serve_repo):
    with running(serve_config(serve_repo, limits__max_streams_per_token=1)) as server:
        with _model_thread_held(server) as held, Client(f"127.0.0.1:{server.port}", timeout=60) as c:
            stream = c.stream("The patient was given", max_tokens=8)
            _until_open(server, 1)  # admitted: its slot is taken before its first token
            for call in (c.count_tokens, c.tokenize):
                code, details = status_of(lambda: call("Blood pressure"))  # noqa: B023 (called here)
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_streams_per_token" in details
            held.set()
            assert list(stream)[-1].finish_reason
            assert c.count_tokens("Blood pressure").count > 0


def test_refused_calls_without_a_token_cannot_flood_the_audit_log(serve_repo, tmp_path):
    from tests.serve.conftest import admin_tokens

    tokens, admin = admin_tokens(tmp_path)
    audit = tmp_path / "audit.jsonl"
    with running(serve_config(serve_repo, auth__tokens_file=str(tokens), audit_log=str(audit))) as server:
        started = time.monotonic()
        with Client(f"127.0.0.1:{server.port}", timeout=30) as anonymous:
            for i in range(300):
                status_of(lambda: anonymous.generate("hi", max_tokens=1, request_id=f"flood-{i}"))  # noqa: B023 (called here)
        elapsed = time.monotonic() - started
        with Client(f"127.0.0.1:{server.port}", timeout=30, token=admin) as ops:
            ops.generate("hi", max_tokens=1, request_id="ops-1")
    lines = [json.loads(x) for x in audit.read_text().splitlines()]
    refused = [x for x in lines if x.get("status") == "UNAUTHENTICATED"]
    assert len(refused) <= 50 + 10 * elapsed + 2 < 300
    assert any(x.get("suppressed_before") for x in refused)  # what was dropped is counted
    assert "flood-" not in audit.read_text()  # the id an unauthenticated caller chose is not trusted
    assert any(x.get("request_id") == "ops-1" for x in lines)  # an authenticated caller's id is kept


def test_a_connection_holds_at_most_max_concurrent_streams(serve_repo):
    with running(serve_config(serve_repo, connections__max_concurrent_streams=1)) as server:
        with Client(f"127.0.0.1:{server.port}", timeout=60) as c:
            stream = c.stream("The patient was given", max_tokens=60, min_tokens=60)
            next(stream)
            # A second call on the same connection waits for a stream: it cannot start within its deadline.
            assert (
                status_of(lambda: c.generate("hi", max_tokens=2, timeout=1.5))[0] == grpc.StatusCode.DEADLINE_EXCEEDED
            )
            list(stream)
            assert c.generate("hi", max_tokens=2).usage.completion_tokens == 2
