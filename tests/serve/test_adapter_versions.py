"""Versions of an adapter on a running server: the active one answers, a canary share goes to a
new version (by request id, so a retried id lands on the same one), promote and roll back, all
followed without a restart; responses and metrics name NAME@VERSION."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest
from prometheus_client import generate_latest

from enclave.errors import EnclaveError
from enclave.grpc_client import Client
from enclave.repository import Repository
from tests.serve.conftest import admin_tokens, running, serve_config


def _cli(*args):
    done = subprocess.run([sys.executable, "-m", "enclave", "serve", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture()
def versioned(serve_repo, tmp_path, monkeypatch):
    """A copy of the test repository whose adapter `facts` has versions 1 (the shared one) and 2
    (tuned again with another seed)."""
    from enclave.config import load_config
    from tests.conftest import fact_rows, write_jsonl
    from tests.tune.conftest import tiny_overrides
    from tune.config import TuneConfig
    from tune.run import run as tune

    home = tmp_path / "home"
    shutil.copytree(serve_repo.parent / "home" / "models", home / "models")
    monkeypatch.setenv("ENCLAVE_HOME", str(home))
    repo = tmp_path / "repo"
    shutil.copytree(serve_repo / "models", repo / "models")
    data = write_jsonl(tmp_path / "facts.jsonl", fact_rows())
    extra = {"train.max_steps": 4, "train.seed": 1, "output": str(tmp_path / "facts-2")}
    second = tune(load_config(TuneConfig, None, tiny_overrides("chatty", data, name="facts", **extra)))
    _cli("add-adapter", str(serve_repo / "adapters" / "facts"), "--version", "1", "--repo", str(repo))
    out = _cli("add-adapter", str(second), "--version", "2", "--repo", str(repo))
    assert "not active (version 1 is)" in out
    return repo


def _versions(c: Client, n: int, prefix: str) -> list[str]:
    return [
        c.generate("Name a fact.", adapter="facts", max_tokens=2, request_id=f"{prefix}-{i}").adapter for i in range(n)
    ]


def _until(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def test_canary_promote_and_rollback_while_serving(versioned, tmp_path):
    tokens, token = admin_tokens(tmp_path)  # callers with a token choose their request ids
    cfg = serve_config(versioned, adapters={"tiny-onnx": ["facts"]}, auth__tokens_file=str(tokens))
    with running(cfg) as server, Client(f"127.0.0.1:{server.port}", timeout=60, token=token) as c:
        assert set(_versions(c, 4, "a")) == {"facts@1"}
        _cli("canary", "facts", "--version", "2", "--share", "0.5", "--repo", str(versioned))
        assert _until(lambda: "facts@2" in _versions(c, 8, "probe"))
        seen = _versions(c, 40, "b")
        assert 8 <= seen.count("facts@2") <= 32, seen  # about half, by request id
        assert _versions(c, 40, "b") == seen  # the same ids land on the same versions
        text = generate_latest(server.metrics.registry).decode()
        assert 'adapter="facts@2"' in text and 'adapter="facts@1"' in text
        _cli("promote", "facts", "--repo", str(versioned))
        assert _until(lambda: set(_versions(c, 8, "c")) == {"facts@2"})
        assert [m.adapters for m in c.models().models if m.name == "tiny-onnx"][0][0].name == "facts"
        _cli("rollback", "--adapter", "facts", "--repo", str(versioned))
        assert _until(lambda: set(_versions(c, 8, "d")) == {"facts@1"})
        engine = server.models.active["tiny-onnx"]
        assert _until(lambda: set(engine.loaded["facts"]) == {"1"})  # version 2 unloaded once unused


def test_release_commands_check_what_they_name(versioned):
    repo = Repository(versioned)
    with pytest.raises(EnclaveError, match="no version '3'.*it has: 1, 2"):
        repo.canary("facts", "3", 0.1)
    with pytest.raises(EnclaveError, match="already the active one"):
        repo.canary("facts", "1", 0.1)
    with pytest.raises(EnclaveError, match="no canary to promote"):
        repo.promote("facts")
    with pytest.raises(EnclaveError, match="no earlier active version"):
        repo.rollback_adapter("facts")
    with pytest.raises(EnclaveError, match="not a share"):
        repo.canary("facts", "2", 1.5)


def test_a_request_routed_to_a_version_just_unloaded_runs_on_the_release_now(versioned, tmp_path):
    """Admission routes a request to facts@1; before the engine takes it, a promotion unloads
    version 1. The request is submitted on the release's route then (facts@2), not on a version the
    engine no longer has."""
    import asyncio

    from serve.auth import Caller
    from serve.call import Call
    from serve.job import Job, Sampling

    cfg = serve_config(versioned, adapters={"tiny-onnx": ["facts"]})
    with running(cfg) as server:
        served = server.models.active["tiny-onnx"]

        async def admitted() -> Call:
            call = Call(server.admission, served, Caller("t", "test"), "r-1")
            adapter = server.models.route(served, "facts", "r-1")
            call.job = Job("r-1", [1, 2, 3], Sampling(max_tokens=2), adapter, None, asyncio.get_running_loop())
            call.job.queue = asyncio.Queue()
            return call

        call = server.call(admitted())
        assert call.job.adapter == "facts@1"
        _cli("promote", "facts", "--version", "2", "--repo", str(versioned))
        assert _until(lambda: set(served.loaded["facts"]) == {"2"})
        lora = served.engine.model.lora  # the onnxruntime backend's adapter slots

        def unloaded() -> bool:
            try:
                lora.slot("facts@1")
            except KeyError:
                return True
            return False

        assert _until(unloaded)  # the engine has dropped version 1

        async def drain() -> list:
            return [event async for event in call.events()]

        events = server.call(drain())
        assert events[-1].finish and call.job.adapter == "facts@2"
