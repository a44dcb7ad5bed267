"""Tokens at rest as hashes, weak and placeholder tokens refused, and tokens files and TLS certificates
that reload without a restart while calls in flight go on."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from enclave.errors import ConfigError, EnclaveError
from enclave.grpc_client import Client
from tests.serve.conftest import running, serve_config, status_of

ROOT = Path(__file__).resolve().parents[2]


def _enclave(*args, stdin: str | None = None, env_home: Path | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "ENCLAVE_HOME": str(env_home or ROOT / ".nonexistent")}
    return subprocess.run(
        [sys.executable, "-m", "enclave", *args], capture_output=True, text=True, input=stdin, env=env, timeout=120
    )


def test_token_create_prints_the_token_once_and_stores_its_hash(tmp_path):
    from serve.auth import Tokens, entropy_bits, token_hash

    path = tmp_path / "tokens.yaml"
    made = _enclave(
        "serve",
        "token",
        "create",
        "--name",
        "ehr",
        "--role",
        "reader",
        "--models",
        "tiny-onnx",
        "--tokens-file",
        str(path),
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert len(made.stdout.splitlines()) == 1 and entropy_bits(token) >= 200  # only the answer on stdout
    stored = path.read_text()
    assert token not in stored and token_hash(token) in stored and path.stat().st_mode & 0o777 == 0o600
    admin = _enclave(
        "serve", "token", "create", "--name", "ops", "--role", "admin", "--tokens-file", str(path)
    ).stdout.strip()
    again = _enclave("serve", "token", "create", "--name", "ops", "--role", "admin", "--tokens-file", str(path))
    assert again.returncode != 0 and "already in" in again.stderr
    entries = {c.name: c for _, c in Tokens(path).entries}
    assert entries["ehr"].role == "reader" and entries["ehr"].models == {"tiny-onnx"} and entries["ops"].admin
    assert admin not in path.read_text()
    # A site's own token, from its secret store on stdin: accepted when strong, refused when weak.
    strong = _enclave(
        "serve",
        "token",
        "add",
        "--name",
        "vault",
        "--tokens-file",
        str(path),
        stdin="Zq8" + "x7Kp2Lm9Rt4Vb6Nw" * 2 + "\n",
    )
    assert strong.returncode == 0 and strong.stdout == "", strong.stderr
    for weak, why in (("hunter2hunter2", "bits of entropy"), ("change-me-please-0123456789abcdefghij", "placeholder")):
        out = _enclave("serve", "token", "add", "--name", "weak", "--tokens-file", str(path), stdin=weak + "\n")
        assert out.returncode != 0 and why in out.stderr and weak not in out.stderr + out.stdout
    revoked = _enclave("serve", "token", "revoke", "--name", "ehr", "--tokens-file", str(path))
    assert revoked.returncode == 0 and "ehr" not in {c.name for _, c in Tokens(path).entries}


@pytest.mark.parametrize(
    "example", ["serve/configs/tokens.example.yaml", "deploy/kubernetes/secret-tokens.example.yaml"]
)
def test_example_placeholders_are_refused(example, tmp_path):
    import yaml

    from serve.auth import Tokens

    text = (ROOT / example).read_text()
    if example.endswith("secret-tokens.example.yaml"):
        text = yaml.safe_load(text)["stringData"]["tokens.yaml"]
    path = tmp_path / "tokens.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="placeholder"):
        Tokens(path)


def test_tokens_in_clear_are_refused_without_echoing_them(tmp_path):
    from serve.auth import Tokens

    path = tmp_path / "tokens.yaml"
    weak, strong = "letmein-2024", "Hq3xV9tLm2Pz7Rw4Kc8Ny5Bd1Fg6Js0A"
    path.write_text(f"- {{name: a, token: {weak}}}\n- {{name: b, token: {strong}, admin: true}}\n")
    with pytest.raises(ConfigError) as e:
        Tokens(path)
    text = str(e.value)
    assert "[0] (a): holds a token in clear text" in text and "bits of entropy" in text
    assert "[1] (b): holds a token in clear text" in text and "`admin: true` is now `role: admin`" in text
    assert weak not in text and strong not in text and "enclave serve token create" in text


def test_tokens_file_reloads_on_change_and_on_sighup(serve_repo, tmp_path):
    from serve.auth import add_token, revoke_token

    path = tmp_path / "tokens.yaml"
    first = add_token(path, "first", "reader")
    with running(serve_config(serve_repo, auth__tokens_file=str(path), watch_seconds=0.2)) as server:
        target = f"127.0.0.1:{server.port}"
        with Client(target, token=first, timeout=60) as c1:
            stream = c1.stream("The patient was given", max_tokens=60, min_tokens=60)
            first_part = len(next(stream).token_ids)  # a call in flight across the reloads below
            second = add_token(path, "second", "admin")
            time.sleep(0.8)
            with Client(target, token=second, timeout=30) as c2:
                assert c2.load_adapter("facts", model="tiny").adapter.digest.startswith("sha256:")
            revoke_token(path, "first")
            time.sleep(0.8)
            assert status_of(lambda: c1.generate("hi", max_tokens=2))[0] == grpc.StatusCode.UNAUTHENTICATED
            assert (
                first_part + sum(len(m.token_ids) for m in stream) == 60
            )  # the revoked caller's call in flight finished
            # An invalid file is logged and the previous tokens stay.
            path.write_text("- {name: broken}\n")
            time.sleep(0.8)
            with Client(target, token=second, timeout=30) as c2:
                assert c2.models().models
        text = (
            __import__("urllib.request")
            .request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10)
            .read()
            .decode()
        )
        assert 'enclave_credentials_reloads_total{result="ok",what="tokens"}' in text
        assert 'enclave_credentials_reloads_total{result="error",what="tokens"}' in text


def test_sighup_reloads_the_tokens_file(serve_repo, tmp_path):
    """A real `enclave serve` process that would not notice the change for 10 minutes: SIGHUP makes it read the file."""
    import os
    import signal

    from serve.auth import add_token

    path = tmp_path / "tokens.yaml"
    add_token(path, "first", "reader")
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
            f"auth.tokens_file={path}",
            "watch_seconds=600",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    try:
        line = proc.stdout.readline()
        assert "listening on" in line, proc.stderr.read()
        target = f"127.0.0.1:{line.split(',')[0].rsplit(':', 1)[1]}"
        second = add_token(path, "second", "reader")
        with Client(target, token=second, timeout=30) as c:
            assert status_of(lambda: c.models())[0] == grpc.StatusCode.UNAUTHENTICATED
            proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    assert c.generate("hi", max_tokens=2).usage.completion_tokens == 2
                    break
                except grpc.RpcError:
                    time.sleep(0.1)
            else:
                pytest.fail("the token added before SIGHUP was not accepted")
    finally:
        proc.terminate()
        proc.wait(60)


def test_tls_certificate_reloads_without_dropping_calls(serve_repo, tmp_path):
    from serve.certs import create_certificates

    old = create_certificates(tmp_path / "old", ["localhost"])
    new = create_certificates(tmp_path / "new", ["localhost"])
    live = tmp_path / "live"
    live.mkdir()
    (live / "server.pem").write_bytes(old.cert.read_bytes())
    (live / "server.key").write_bytes(old.key.read_bytes())
    cfg = serve_config(serve_repo, tls__cert=str(live / "server.pem"), tls__key=str(live / "server.key"))
    with running(cfg) as server:
        target = f"localhost:{server.port}"
        with Client(target, ca=str(old.ca), timeout=60) as before:
            stream = before.stream("The patient was given", max_tokens=60, min_tokens=60)
            first_part = len(next(stream).token_ids)
            with Client(target, ca=str(new.ca), timeout=5) as early:
                assert status_of(lambda: early.models())[0] == grpc.StatusCode.UNAVAILABLE  # not trusted yet
            # Rotate: the new key first, then the certificate (a half-written pair is kept out by the key check).
            (live / "server.key").write_bytes(new.key.read_bytes())
            (live / "server.pem").write_bytes(new.cert.read_bytes())
            with Client(target, ca=str(new.ca), timeout=10) as after:
                assert after.generate("hi", max_tokens=2).usage.completion_tokens == 2
            assert first_part + sum(len(m.token_ids) for m in stream) == 60  # the call on the old session finished
        with Client(target, ca=str(old.ca), timeout=5) as stale:
            assert status_of(lambda: stale.models())[0] == grpc.StatusCode.UNAVAILABLE
        # A broken certificate file is refused and the current one kept.
        (live / "server.pem").write_text("not a certificate")
        with Client(target, ca=str(new.ca), timeout=10) as still:
            assert still.models().models


def test_weak_token_checks():
    from serve.auth import new_token, weakness

    assert weakness(new_token()) is None
    assert "bits of entropy" in weakness("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
    assert "bits of entropy" in weakness("0123abcd0123abcd")
    assert "placeholder" in weakness("REPLACE-WITH-A-RANDOM-TOKEN-0001")
    assert weakness("3f9a1c0d7e5b2a4f6c8e0a1b3d5f7e9c") is None  # 32 hex digits: 128 bits
    with pytest.raises(EnclaveError, match="--role"):
        from serve.auth import add_token

        add_token(Path("/nonexistent/x.yaml"), "n", "root")
