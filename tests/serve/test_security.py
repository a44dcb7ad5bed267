"""Bearer tokens, admin role, TLS and mutual TLS (certificates made here), the audit line, and no
prompt or completion text in logs."""

from __future__ import annotations

import json
import logging

import grpc
import pytest

from enclave.grpc_client import Client
from tests.serve.conftest import running, serve_config
from tests.serve.conftest import status_of as _code


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    """A tokens file made as an operator makes one: three tokens, printed once, stored as hashes."""
    from serve.auth import add_token

    path = tmp_path_factory.mktemp("auth") / "tokens.yaml"
    made = {
        "admin": add_token(path, "ops", "admin"),
        "reader": add_token(path, "ehr", "reader"),
        "onnx_only": add_token(path, "lab", "reader", ["tiny-onnx"]),
    }
    return path, made


@pytest.fixture(scope="module")
def secured(serve_repo, tokens, tmp_path_factory):
    path, made = tokens
    audit = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    cfg = serve_config(serve_repo, auth__tokens_file=str(path), audit_log=str(audit))
    with running(cfg) as server:
        yield server, audit, made


def test_tokens_roles_and_audit(secured, tokens, caplog):
    server, audit, made = secured
    ADMIN, READER, ONNX_ONLY = made["admin"], made["reader"], made["onnx_only"]
    stored = tokens[0].read_text()
    assert all(t not in stored for t in made.values()) and stored.count("sha256:") == 3  # hashes only, at rest
    assert tokens[0].stat().st_mode & 0o077 == 0
    target = f"127.0.0.1:{server.port}"
    with Client(target) as anonymous:
        assert anonymous.health() == "SERVING"  # probes need no token
        code, details = _code(lambda: anonymous.generate("hi", max_tokens=2))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in details
    with Client(target, token="enclave_" + "x" * 43) as wrong:
        assert _code(lambda: wrong.models())[0] == grpc.StatusCode.UNAUTHENTICATED
    with Client(target, token=ONNX_ONLY) as lab:
        assert [m.name for m in lab.models().models] == ["tiny-onnx"]
        code, details = _code(lambda: lab.generate("hi", model="tiny", max_tokens=2))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "tiny-onnx" in details
    with Client(target, token=READER) as reader:
        caplog.set_level(logging.DEBUG)
        secret = "Patient Zoltan Quibblewick, MRN 991"
        reply = reader.generate(secret, max_tokens=6, request_id="req-42")
        assert _code(lambda: reader.load_adapter("facts", model="tiny"))[0] == grpc.StatusCode.PERMISSION_DENIED
    with Client(target, token=ADMIN) as ops:
        assert ops.load_adapter("facts", model="tiny").adapter.digest.startswith("sha256:")
        ops.unload_adapter("facts", model="tiny")
    assert "Zoltan" not in caplog.text
    if len(reply.text.strip()) >= 4:
        assert reply.text.strip() not in caplog.text
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    line = next(x for x in lines if x.get("request_id") == "req-42")
    assert line["token"].startswith("sha256:") and READER not in audit.read_text()
    assert line["status"] == "OK" and line["model"] == "tiny-onnx" and line["completion_tokens"] == 6
    assert {"time", "prompt_tokens", "latency_seconds", "adapter", "version"} <= set(line)
    assert "Zoltan" not in audit.read_text()
    assert any(x.get("status") == "UNAUTHENTICATED" for x in lines)  # refused calls are audited too
    assert any(x.get("admin") == "LoadAdapter" and x.get("status") is None for x in lines)
    denied = [x for x in lines if x.get("admin") == "LoadAdapter" and x.get("status") == "PERMISSION_DENIED"]
    assert len(denied) == 1 and denied[0]["token"].startswith(
        "sha256:"
    )  # a reader's attempt at an admin rpc is on record


def _certs(tmp):
    """A CA, a server certificate for localhost and a client certificate, as `enclave serve cert create` makes them."""
    from serve.certs import create_certificates

    issued = create_certificates(tmp, ["localhost", "127.0.0.1"], client="ehr-gateway")
    assert issued.key.stat().st_mode & 0o777 == 0o600 and issued.client_key.stat().st_mode & 0o777 == 0o600
    (tmp / "client.pem").write_bytes(issued.client_cert.read_bytes())
    return tmp


def test_tls_and_mutual_tls(serve_repo, tmp_path):
    c = _certs(tmp_path)
    tls = serve_config(serve_repo, tls__cert=str(c / "server.pem"), tls__key=str(c / "server.key"))
    with running(tls) as server:
        target = f"localhost:{server.port}"
        with Client(target, ca=str(c / "ca.pem")) as secure:
            assert secure.generate("hi", max_tokens=3).usage.completion_tokens == 3
        with Client(target, timeout=5) as plain:
            assert _code(lambda: plain.models())[0] == grpc.StatusCode.UNAVAILABLE
    mtls = serve_config(
        serve_repo,
        tls__cert=str(c / "server.pem"),
        tls__key=str(c / "server.key"),
        tls__client_ca=str(c / "ca.pem"),
        health_port=0,
    )
    with running(mtls) as server:
        target = f"localhost:{server.port}"
        with Client(target, ca=str(c / "ca.pem"), cert=str(c / "client.pem"), key=str(c / "client.key")) as ok:
            assert ok.generate("hi", max_tokens=3).usage.completion_tokens == 3
        with Client(target, ca=str(c / "ca.pem"), timeout=5) as no_cert:
            assert _code(lambda: no_cert.models())[0] == grpc.StatusCode.UNAVAILABLE
        # The probe port: plaintext health for Kubernetes probes, and nothing else.
        with Client(f"127.0.0.1:{server.health_port}", timeout=5) as probe:
            assert probe.health() == "SERVING" and probe.health("liveness") == "SERVING"
            assert _code(lambda: probe.models())[0] == grpc.StatusCode.UNIMPLEMENTED


def test_tls_settings_errors(serve_repo, tmp_path):
    from enclave.errors import EnclaveError
    from serve.tls import ReloadingCredentials

    with pytest.raises(EnclaveError, match="cert and key go together"):
        ReloadingCredentials(serve_config(serve_repo, tls__cert="x.pem"))
    with pytest.raises(EnclaveError, match="tls.cert: cannot read"):
        ReloadingCredentials(
            serve_config(serve_repo, tls__cert=str(tmp_path / "missing.pem"), tls__key=str(tmp_path / "k"))
        )
    a, b = _certs(tmp_path / "a"), _certs(tmp_path / "b")
    with pytest.raises(EnclaveError, match="tls.key: does not belong to tls.cert") as e:
        ReloadingCredentials(serve_config(serve_repo, tls__cert=str(a / "server.pem"), tls__key=str(b / "server.key")))
    assert "PRIVATE KEY" not in str(e.value)


def test_tokens_file_errors(tmp_path):
    from enclave.errors import ConfigError
    from serve.auth import Tokens

    bad = tmp_path / "t.yaml"
    bad.write_text("- {name: a, sha256: abc, role: reader}\n- {name: b, sha256: " + "a" * 64 + ", role: root}\n")
    with pytest.raises(ConfigError) as e:
        Tokens(bad)
    assert "[0].sha256" in str(e.value) and "[1].role" in str(e.value) and "abc" not in str(e.value)
    bad.write_text("token: x\n")
    with pytest.raises(ConfigError, match="expected a list"):
        Tokens(bad)
