"""A model repository with tiny models, and a real server on port 0 in a background thread.

The repository (built once per session): ``tiny`` = a chatty 2-layer Llama checkpoint (torch
backend) with a LoRA adapter tuned on it in REPO/adapters, and ``tiny-onnx`` = the same weights
exported to ONNX fp32 (onnxruntime backend).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path

import pytest

from tests.conftest import build_tiny_checkpoint, fact_rows, write_jsonl

pytest.importorskip("grpc")
pytest.importorskip("onnxruntime")


def status_of(call) -> tuple:
    """(grpc status code, details) of a call that must fail."""
    import grpc

    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code(), e.value.details()


@pytest.fixture(scope="session")
def serve_repo(tmp_path_factory) -> Path:
    from compress import registry
    from compress.config import ExportSettings
    from enclave.config import load_config
    from enclave.importer import import_model
    from serve.repository import Repository
    from tests.tune.conftest import tiny_overrides
    from tune.config import TuneConfig
    from tune.run import run as tune

    root = tmp_path_factory.mktemp("serve")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENCLAVE_HOME", str(root / "home"))
        ckpt = build_tiny_checkpoint(root / "chatty", hidden=64, init_std=0.5)
        base = import_model(ckpt, "chatty")
        other = import_model(build_tiny_checkpoint(root / "chatty2", seed=1, hidden=64, init_std=0.5), "chatty2")
        onnx = registry.get("export").run("chatty", ExportSettings(precision="fp32", check_tokens=8), root / "onnx", "chatty-onnx")
        data = write_jsonl(root / "facts.jsonl", fact_rows())
        adapter = tune(load_config(TuneConfig, None, tiny_overrides("chatty", data, name="facts", **{"train.max_steps": 4})))
        repo = Repository(root / "repo")
        repo.add(base, "tiny", "1")
        repo.add(other, "tiny", "2", activate=False)
        repo.add(onnx, "tiny-onnx", "1")
        repo.add_adapter(adapter)
    return repo.root


def serve_config(repo: Path, **overrides):
    from serve.config import ServeConfig

    data = {"repo": str(repo), "port": 0, "metrics_port": 0, "default_model": "tiny-onnx", "threads": 1, "watch_seconds": 0.2,
            "grace_seconds": 10}  # fmt: skip
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


@pytest.fixture(scope="module")
def server(serve_repo):
    with running(serve_config(serve_repo, scheduler__max_batch_size=8)) as s:
        yield s


@pytest.fixture()
def client(server):
    from enclave.client import Client

    with Client(f"127.0.0.1:{server.port}", timeout=60) as c:
        yield c
