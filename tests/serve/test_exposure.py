"""Fail closed: no network listener without TLS and tokens unless `insecure: true`, no admin without a
token, /metrics on its own loopback address with a connection cap, reflection off by default, and
the shipped container config secure."""

from __future__ import annotations

import logging
import socket
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml

from enclave.errors import EnclaveError
from enclave.grpc_client import Client
from tests.serve.conftest import admin_tokens, running, serve_config, status_of

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    from serve.certs import create_certificates

    return create_certificates(tmp_path_factory.mktemp("certs"), ["localhost", "127.0.0.1"])


def test_a_network_address_needs_tls_and_tokens(serve_repo, certs, tmp_path):
    from serve.server import Server

    tokens, _ = admin_tokens(tmp_path)
    tls = {"tls__cert": str(certs.cert), "tls__key": str(certs.key)}
    for host, extra, missing in (
        ("0.0.0.0", {}, "no TLS (tls.cert and tls.key) and no tokens (auth.tokens_file)"),
        ("::", tls, "no tokens"),
        ("10.1.2.3", {"auth__tokens_file": str(tokens)}, "no TLS"),
        ("enclave.hospital.local", {}, "no TLS"),
    ):
        with pytest.raises(EnclaveError) as e:
            Server(serve_config(serve_repo, host=host, **extra))
        assert f"host: {host} is reachable from the network" in str(e.value) and missing in str(e.value)
        assert "insecure: true" in str(e.value) and "enclave serve token create" in str(e.value)
    # Loopback needs neither; TLS and tokens together open any address.
    from serve.tls import check_exposure

    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert check_exposure(serve_config(serve_repo, host=host)) is False
    with running(serve_config(serve_repo, host="0.0.0.0", auth__tokens_file=str(tokens), **tls)) as server:
        assert server.insecure is False
        with Client(f"localhost:{server.port}", ca=str(certs.ca), timeout=10) as c:
            assert status_of(lambda: c.generate("hi", max_tokens=2))[0] == grpc.StatusCode.UNAUTHENTICATED


def test_insecure_mode_is_explicit_loud_and_exported(serve_repo, caplog, monkeypatch):
    import serve.server

    monkeypatch.setattr(serve.server, "INSECURE_WARNING_SECONDS", 0.2)
    caplog.set_level(logging.WARNING, logger="enclave.serve")
    with running(serve_config(serve_repo, host="0.0.0.0", insecure=True)) as server:
        time.sleep(0.7)
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
        assert "enclave_insecure_mode 1.0" in text
    warnings = [r for r in caplog.records if "insecure: true" in r.getMessage()]
    assert len(warnings) >= 3  # at start, then once every interval
    with running(serve_config(serve_repo)) as server:
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
        assert "enclave_insecure_mode 0.0" in text


def test_nobody_is_admin_without_tokens(serve_repo):
    with running(serve_config(serve_repo)) as server, Client(f"127.0.0.1:{server.port}", timeout=30) as c:
        assert c.generate("hi", max_tokens=2).usage.completion_tokens == 2  # loopback, no tokens: Inference works
        code, details = status_of(lambda: c.load_adapter("facts", model="tiny"))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "enclave serve token create --role admin" in details
        assert status_of(lambda: c.unload_adapter("facts", model="tiny"))[0] == grpc.StatusCode.PERMISSION_DENIED


def test_reflection_is_off_unless_configured(serve_repo):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    def services(port):
        with Client(f"127.0.0.1:{port}", timeout=10) as c:
            stub = reflection_pb2_grpc.ServerReflectionStub(c.channel)
            reply = next(
                stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
            )
            return {s.name for s in reply.list_services_response.service}

    with running(serve_config(serve_repo)) as server:
        with pytest.raises(grpc.RpcError) as e:
            services(server.port)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with running(serve_config(serve_repo, reflection=True)) as server:
        assert "enclave.v1.Inference" in services(server.port)


def _threads() -> int:
    return threading.active_count()


def test_metrics_bind_their_own_host_with_a_connection_cap(serve_repo):
    cfg = serve_config(
        serve_repo, host="0.0.0.0", insecure=True, metrics_max_connections=4, metrics_timeout_seconds=0.5
    )
    with running(cfg) as server:
        assert server.metrics.http.httpd.server_address[0] == "127.0.0.1"  # the default metrics_host, not the gRPC host
        before = _threads()
        idle = [socket.create_connection(("127.0.0.1", server.metrics_port)) for _ in range(300)]
        time.sleep(0.3)
        assert _threads() - before <= 4  # 300 idle sockets: at most the cap in threads (was one thread each)
        time.sleep(0.8)  # past metrics_timeout_seconds: the idle ones are closed, their threads gone
        assert _threads() - before <= 0
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
        assert "enclave_requests_total" in text
        for s in idle:
            s.close()


def test_the_shipped_configs_are_secure(serve_repo):
    """The container/compose/systemd config and the Kubernetes ConfigMap listen on the network with TLS and tokens."""
    from serve.config import ServeConfig
    from serve.tls import check_exposure

    container = yaml.safe_load((ROOT / "deploy/config/serve.yaml").read_text())
    configmap = yaml.safe_load(
        yaml.safe_load((ROOT / "deploy/kubernetes/configmap.yaml").read_text())["data"]["serve.yaml"]
    )
    for data in (container, configmap):
        cfg = ServeConfig.model_validate(data)
        assert cfg.host == "0.0.0.0" and not cfg.insecure and cfg.tls.cert and cfg.tls.key and cfg.auth.tokens_file
        assert check_exposure(cfg) is False
        stripped = ServeConfig.model_validate({**data, "tls": {}})
        with pytest.raises(EnclaveError, match="no TLS"):
            check_exposure(stripped)
    text = (ROOT / "deploy/config/serve.yaml").read_text()
    assert "enclave serve token create" in text and "enclave serve cert create" in text
