"""A real server on port 0 in a background thread, on the session's ``serve_repo`` (tests/conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path

import pytest

pytest.importorskip("grpc")
pytest.importorskip("onnxruntime")


def status_of(call) -> tuple:
    """(grpc status code, details) of a call that must fail."""
    import grpc

    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code(), e.value.details()


def serve_config(repo: Path, **overrides):
    from serve.config import ServeConfig

    data = {
        "repo": str(repo),
        "port": 0,
        "metrics_port": 0,
        "default_model": "tiny-onnx",
        "threads": 1,
        "watch_seconds": 0.2,
        "grace_seconds": 10,
    }
    for key, value in overrides.items():
        node = data
        *path, last = key.split("__")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return ServeConfig.model_validate(data)


@contextlib.contextmanager
def running(cfg):
    """A started serve.server.Server in its own event loop thread; stopped (drained) on exit."""
    from serve.server import Server

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def call(coro, timeout=120):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    async def make():
        return Server(cfg)

    server = call(make())
    try:
        call(server.start())
        server.call = call
        yield server
    finally:
        with contextlib.suppress(Exception):
            call(server.stop(grace=5))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def admin_tokens(directory: Path) -> tuple[Path, str]:
    """A tokens file with one admin token (made as `enclave serve token create --role admin` makes it)."""
    from serve.auth import add_token

    path = Path(directory) / "tokens.yaml"
    return path, add_token(path, "ops", "admin")


@pytest.fixture(scope="module")
def server(serve_repo, tmp_path_factory):
    """The shared test server: loopback, an admin token (the Admin service needs one), reflection on."""
    path, token = admin_tokens(tmp_path_factory.mktemp("tokens"))
    with running(
        serve_config(serve_repo, scheduler__max_batch_size=8, reflection=True, auth__tokens_file=str(path))
    ) as s:
        s.token = token
        yield s


@pytest.fixture()
def client(server):
    from enclave.grpc_client import Client

    with Client(f"127.0.0.1:{server.port}", timeout=60, token=server.token) as c:
        yield c
