"""The deploy kit's tests: the tools they run (promtool, Prometheus, systemd-analyze) and a live
server's /metrics text, which every query in the kit must be answered from."""

from __future__ import annotations

import shutil
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "deploy"
TOOLS = ROOT / ".tools" / "prometheus" / "usr" / "bin"


def tool(name: str) -> str:
    """A binary from `make tools` (.tools/) or PATH; a missing one fails the test with the fix."""
    local = TOOLS / name
    found = str(local) if local.is_file() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found in {TOOLS} or on PATH: run `make tools` (Debian package prometheus)")
    return found


@pytest.fixture(scope="session")
def promtool() -> str:
    return tool("promtool")


@pytest.fixture(scope="session")
def prometheus() -> str:
    return tool("prometheus")


@pytest.fixture(scope="module")
def live(serve_repo):
    """A running server that has answered calls on both models, one with an adapter, and one refused call."""
    pytest.importorskip("grpc")
    import grpc

    from enclave.grpc_client import Client
    from tests.serve.conftest import running, serve_config

    with running(serve_config(serve_repo, adapters={"tiny": ["facts"]}, health_port=0)) as server:
        with Client(f"127.0.0.1:{server.port}") as client:
            client.generate("hello", max_tokens=4)
            client.generate("hello", model="tiny", adapter="facts", max_tokens=4)
            for _piece in client.stream("hi", max_tokens=3):
                pass
            with pytest.raises(grpc.RpcError):
                client.generate("hello", model="no-such-model")
        yield server


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


@pytest.fixture(scope="module")
def metrics_text(live) -> str:
    return scrape(live.metrics_port)


@pytest.fixture(scope="module")
def exported(metrics_text) -> set[str]:
    """Every sample name the server exports (counters with _total, histograms with _bucket/_sum/_count)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {s.name for family in text_string_to_metric_families(metrics_text) for s in family.samples}
