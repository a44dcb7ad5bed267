"""Bearer tokens, admin role, TLS and mutual TLS (certificates made here), the audit line, and no
prompt or completion text in logs."""

from __future__ import annotations

import datetime as dt
import json
import logging

import grpc
import pytest

from enclave.client import Client
from tests.serve.conftest import running, serve_config, status_of as _code

ADMIN, READER, ONNX_ONLY = "admin-token-0123456789", "reader-token-0123456789", "onnx-only-token-0123456789"



@pytest.fixture(scope="module")
def secured(serve_repo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("auth")
    tokens = tmp / "tokens.yaml"
    tokens.write_text(f"- {{name: ops, token: {ADMIN}, admin: true}}\n- {{name: ehr, token: {READER}}}\n"
                      f"- {{name: lab, token: {ONNX_ONLY}, models: [tiny-onnx]}}\n")  # fmt: skip
    cfg = serve_config(serve_repo, auth__tokens_file=str(tokens), audit_log=str(tmp / "audit.jsonl"))
    with running(cfg) as server:
        yield server, tmp / "audit.jsonl"


def test_tokens_roles_and_audit(secured, caplog):
    server, audit = secured
    target = f"127.0.0.1:{server.port}"
    with Client(target) as anonymous:
        assert anonymous.health() == "SERVING"  # probes need no token
        code, details = _code(lambda: anonymous.generate("hi", max_tokens=2))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in details
    with Client(target, token="wrong-token-0123456789") as wrong:
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
    assert any(x.get("admin") == "LoadAdapter" for x in lines)


def _certs(tmp):
    """A CA, a server certificate for localhost, and a client certificate, all signed by the CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(subject, key, issuer, issuer_key, ca=False, san=None):
        b = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer)).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
             .not_valid_after(now + dt.timedelta(days=1)).add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))  # fmt: skip
        if san:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    def write(stem, c, key):
        (tmp / f"{stem}.pem").write_bytes(c.public_bytes(serialization.Encoding.PEM))
        (tmp / f"{stem}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))  # fmt: skip

    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = cert("enclave test CA", ca_key, "enclave test CA", ca_key, ca=True)
    write("ca", ca, ca_key)
    write("server", cert("localhost", server_key, "enclave test CA", ca_key, san="localhost"), server_key)
    write("client", cert("ehr-gateway", client_key, "enclave test CA", ca_key), client_key)
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
    mtls = serve_config(serve_repo, tls__cert=str(c / "server.pem"), tls__key=str(c / "server.key"), tls__client_ca=str(c / "ca.pem"),
                        health_port=0)  # fmt: skip
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
    from serve.server import credentials

    with pytest.raises(EnclaveError, match="cert and key go together"):
        credentials(serve_config(serve_repo, tls__cert="x.pem"))
    with pytest.raises(EnclaveError, match="tls.cert: cannot read"):
        credentials(serve_config(serve_repo, tls__cert=str(tmp_path / "missing.pem"), tls__key=str(tmp_path / "k")))


def test_tokens_file_errors(tmp_path):
    from enclave.errors import ConfigError
    from serve.auth import Tokens

    bad = tmp_path / "t.yaml"
    bad.write_text("- {name: a, token: short}\n- {name: b, token: long-enough-token-123, role: admin}\n")
    with pytest.raises(ConfigError) as e:
        Tokens(bad)
    assert "0.token" in str(e.value) and "1.role: unknown key" in str(e.value)
    bad.write_text("token: x\n")
    with pytest.raises(ConfigError, match="expected a list"):
        Tokens(bad)
