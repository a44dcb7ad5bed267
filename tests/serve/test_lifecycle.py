"""Cancellation, deadlines, a full queue, adapters loaded and unloaded at run time, version
activation and rollback, and the drain on SIGTERM."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import subprocess
import sys
import time

import grpc
import pytest

from enclave.grpc_client import Client
from enclave.repository import Repository
from enclave.v1 import inference_pb2 as pb
from tests.serve.conftest import running, serve_config
from tests.serve.test_generate import PROMPTS, _scrape


def _wait(predicate, seconds=20.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _gauge(server, name, model) -> float:
    for line in _scrape(server).splitlines():
        if line.startswith(f'{name}{{model="{model}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return -1.0


def _slow(server_cfg_repo, **kw):
    # One slot, and a decode step slowed to 50 ms so a request is still running when the test acts.
    return serve_config(server_cfg_repo, scheduler__max_batch_size=1, **kw)


@pytest.fixture()
def slow_steps(monkeypatch):
    from serve.backends import ort

    step = ort.OrtBatch.step

    def slow(self, tokens):
        time.sleep(0.05)
        return step(self, tokens)

    monkeypatch.setattr(ort.OrtBatch, "step", slow)


def test_cancel_frees_the_slot_and_deadline_is_honoured(serve_repo, slow_steps):
    with (
        running(_slow(serve_repo, limits__max_new_tokens=2000, limits__default_new_tokens=100)) as server,
        Client(f"127.0.0.1:{server.port}") as client,
    ):
        stream = client.stream("The patient was given", max_tokens=100)
        next(stream), next(stream)
        assert _gauge(server, "enclave_num_requests_running", "tiny-onnx") == 1
        stream.cancel()
        assert _wait(lambda: _gauge(server, "enclave_num_requests_running", "tiny-onnx") == 0, 5)
        with pytest.raises(grpc.RpcError) as e:
            client.generate("The patient was given", max_tokens=100, timeout=0.5)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert _wait(lambda: _gauge(server, "enclave_num_requests_running", "tiny-onnx") == 0, 5)
        assert client.generate("Blood", max_tokens=3).usage.completion_tokens == 3
        assert 'code="CANCELLED"' in _scrape(server)


def test_full_queue_is_resource_exhausted_with_a_retry_hint(serve_repo, slow_steps):
    cfg = _slow(serve_repo, scheduler__max_queued=1, limits__max_new_tokens=2000, limits__default_new_tokens=100)
    with running(cfg) as server, Client(f"127.0.0.1:{server.port}") as client:
        first = client.stream("The patient was given", max_tokens=60)
        next(first)  # running
        second = client.stream("Blood", max_tokens=5)
        assert _wait(lambda: _gauge(server, "enclave_num_requests_waiting", "tiny-onnx") == 1, 5)
        with pytest.raises(grpc.RpcError) as e:
            client.generate("Habeas", max_tokens=5)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "scheduler.max_queued=1" in e.value.details()
        assert dict(e.value.trailing_metadata())["grpc-retry-pushback-ms"].isdigit()
        assert list(first)[-1].finish_reason == pb.FINISH_REASON_LENGTH  # the queued ones still finish
        assert list(second)[-1].finish_reason == pb.FINISH_REASON_LENGTH


def test_adapter_hot_load_mixed_batch_and_unload(server, client, serve_repo):
    base = [list(client.generate(p, model="tiny", max_tokens=12).token_ids) for p in PROMPTS[:4]]
    info = client.load_adapter("facts", model="tiny")
    assert info.adapter.name == "facts" and info.adapter.digest.startswith("sha256:") and info.load_seconds > 0
    models = {m.name: m for m in client.models().models}
    assert [a.name for a in models["tiny"].adapters] == ["facts"]
    tuned = [list(client.generate(p, model="tiny", adapter="facts", max_tokens=12).token_ids) for p in PROMPTS[:4]]
    assert tuned != base
    # The reference: transformers + PEFT on the same adapter, outside the server.
    from enclave.hf.generate import GenerateConfig, generate
    from enclave.hf.loader import load
    from enclave.store import resolve_model

    lm, tok = load(resolve_model(str(serve_repo / "models" / "tiny" / "1")), str(serve_repo / "adapters" / "facts"))
    ref = generate(lm, tok, PROMPTS[0], GenerateConfig(max_new_tokens=12, chat=False))
    assert ref.token_ids == tuned[0]
    # Base and adapter requests share decode steps and give what they give alone.
    jobs = [(p, a) for p in PROMPTS[:4] for a in ("", "facts")]
    with cf.ThreadPoolExecutor(len(jobs)) as pool:
        mixed = list(
            pool.map(lambda j: list(client.generate(j[0], model="tiny", adapter=j[1], max_tokens=12).token_ids), jobs)
        )
    assert mixed == [x for pair in zip(base, tuned) for x in pair]
    with pytest.raises(grpc.RpcError) as e:
        client.load_adapter("../etc", model="tiny")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        client.load_adapter("nope", model="tiny")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "facts" in e.value.details()
    # The onnxruntime engine runs the same adapter unmerged on the fp32 export: the same tokens.
    client.load_adapter("facts", model="tiny-onnx")
    ask = lambda p: list(client.generate(p, model="tiny-onnx", adapter="facts", max_tokens=12).token_ids)  # noqa: E731
    on_ort = [ask(p) for p in PROMPTS[:4]]
    assert on_ort == tuned
    client.unload_adapter("facts", model="tiny-onnx")
    client.unload_adapter("facts", model="tiny")
    with pytest.raises(grpc.RpcError) as e:
        client.generate("hi", model="tiny", adapter="facts")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert list(client.generate(PROMPTS[0], model="tiny", max_tokens=12).token_ids) == base[0]


def test_activate_and_rollback_while_serving(server, client, serve_repo):
    repo = Repository(serve_repo)
    v1 = client.generate(PROMPTS[0], model="tiny", max_tokens=30)
    stream = client.stream(PROMPTS[0], model="tiny", max_tokens=30)
    next(stream)
    repo.activate("tiny", "2")
    assert _wait(lambda: client.generate("hi", model="tiny", max_tokens=1).model_version == "2")
    rest = list(stream)  # the in-flight request finished on version 1
    assert rest[-1].usage.completion_tokens == 30
    v2 = client.generate(PROMPTS[0], model="tiny", max_tokens=30)
    assert v2.model_version == "2" and v2.token_ids != v1.token_ids
    assert [v.version for m in client.models().models if m.name == "tiny" for v in m.versions if v.active] == ["2"]
    assert repo.rollback("tiny") == "1"
    assert _wait(lambda: client.generate("hi", model="tiny", max_tokens=1).model_version == "1")
    assert client.generate(PROMPTS[0], model="tiny", max_tokens=30).token_ids == v1.token_ids


def test_sigterm_drains_in_flight_calls_and_exits_0(serve_repo, tmp_path):
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
            "default_model=tiny",
            "grace_seconds=30",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        assert "listening on" in line, proc.stderr.read()
        port = int(line.split(",")[0].rsplit(":", 1)[1])
        with Client(f"127.0.0.1:{port}") as client:
            assert client.health() == "SERVING"
            stream = client.stream(PROMPTS[0], max_tokens=100, temperature=0.0)
            next(stream)
            proc.send_signal(signal.SIGTERM)
            rest = list(stream)
            assert rest[-1].finish_reason == pb.FINISH_REASON_LENGTH and rest[-1].usage.completion_tokens == 100
            with pytest.raises(grpc.RpcError) as e:
                client.generate("hi", max_tokens=2, timeout=5)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert proc.wait(60) == 0
        err = proc.stderr.read()
        assert "draining" in err and "stopped" in err
    finally:
        proc.kill()


def test_not_serving_until_the_models_are_warm(serve_repo, monkeypatch):
    import asyncio
    import threading

    from serve.backends import ort

    loaded = threading.Event()
    init = ort.Backend.__init__

    def slow_init(self, *args, **kwargs):
        loaded.wait(30)  # the model "loads" until the test lets it
        init(self, *args, **kwargs)

    monkeypatch.setattr(ort.Backend, "__init__", slow_init)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        server = asyncio.run_coroutine_threadsafe(_make(serve_config(serve_repo)), loop).result(30)
        starting = asyncio.run_coroutine_threadsafe(server.start(), loop)
        with Client(f"127.0.0.1:{server.port}") as client:
            assert _wait(lambda: _health(client) == "NOT_SERVING", 10)
            assert client.health("liveness") == "SERVING"  # loading is not a reason to restart the process
            with pytest.raises(grpc.RpcError) as e:
                client.generate("hi", max_tokens=1)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            loaded.set()
            starting.result(60)
            assert client.health() == "SERVING" and client.generate("hi", max_tokens=1).usage.completion_tokens == 1
        asyncio.run_coroutine_threadsafe(server.stop(1), loop).result(30)
    finally:
        loaded.set()
        loop.call_soon_threadsafe(loop.stop)


async def _make(cfg):
    from serve.server import Server

    return Server(cfg)


def _health(client) -> str:
    try:
        return client.health()
    except grpc.RpcError:
        return "down"


def test_a_tampered_version_is_refused_and_the_old_one_keeps_serving(serve_repo, tmp_path, caplog):
    from enclave.errors import IntegrityError

    repo = Repository(tmp_path / "repo")
    repo.add(serve_repo / "models" / "tiny-onnx" / "1", "m", "1")
    repo.add(serve_repo / "models" / "tiny-onnx" / "1", "m", "2", activate=False)
    (repo.models_dir / "m" / "2" / "genai_config.json").write_text("{}")  # changed after it was added
    with running(serve_config(repo.root, default_model="m")) as server, Client(f"127.0.0.1:{server.port}") as client:
        repo.activate("m", "2")
        assert _wait(lambda: "could not switch to version 2" in caplog.text, 10)
        assert client.generate("hi", max_tokens=2).model_version == "1"
    (repo.models_dir / "m" / "1" / "genai_config.json").write_text("{}")
    with (
        pytest.raises(IntegrityError, match="failed verification"),
        running(serve_config(repo.root, default_model="m")),
    ):
        pass


def test_concurrent_calls_per_caller_are_limited(serve_repo, slow_steps):
    cfg = serve_config(
        serve_repo, limits__max_streams_per_token=1, limits__max_new_tokens=2000, limits__default_new_tokens=100
    )
    with running(cfg) as server, Client(f"127.0.0.1:{server.port}") as client:
        stream = client.stream("The patient was given", max_tokens=40)
        next(stream)
        with pytest.raises(grpc.RpcError) as e:
            client.generate("Blood", max_tokens=2)
        assert (
            e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "limits.max_streams_per_token" in e.value.details()
        )
        assert list(stream)[-1].finish_reason == pb.FINISH_REASON_LENGTH
        assert client.generate("Blood", max_tokens=2).usage.completion_tokens == 2  # the slot is back
