"""The air-gapped path end to end: a bundle made in one directory is installed and served from
another by processes with no network (a network namespace with only loopback, where available)
whose every socket attempt is recorded by an audit hook; nothing may have tried to connect out."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def _netns() -> list[str]:
    """A prefix that runs a command in a new network namespace with loopback up; [] where not permitted."""
    probe = (
        subprocess.run(["unshare", "-rn", "true"], capture_output=True)
        if shutil.which("unshare") and shutil.which("ip")
        else None
    )
    if probe is None or probe.returncode != 0:
        return []
    return ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "netns"]


def offline(cmd: list[str], log: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(HERE / "netguard"), "ENCLAVE_NETGUARD_LOG": str(log)}
    env.pop("ENCLAVE_HOME", None)
    return subprocess.run([*_netns(), *cmd], capture_output=True, text=True, timeout=timeout, env=env, cwd=log.parent)


def attempts(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture(scope="module")
def creator(serve_repo, tmp_path_factory):
    """The connected machine: a key pair and a bundle of the tiny ONNX model and an adapter."""
    from enclave.bundle import create, keys

    where = tmp_path_factory.mktemp("creator")
    private, public, _ = keys.keygen(where / "site")
    model, s1 = create.artifact_sources(serve_repo / "models/tiny-onnx/1", "model", "tiny-onnx", "1")
    adapter, s2 = create.artifact_sources(serve_repo / "adapters/facts", "adapter", "facts", None)
    create.write_bundle(where / "clinic.tar", keys.load_private(private), [model, adapter], s1 + s2, None)
    return where / "clinic.tar", public


def test_the_guard_blocks_and_records(tmp_path):
    log = tmp_path / "net.log"
    code = (
        "import socket\ntry:\n    socket.create_connection(('10.255.255.1', 80), timeout=2)\n"
        "except OSError as e:\n    print(e)"
    )
    done = offline([sys.executable, "-c", code], log, timeout=60)
    assert "blocked by the offline test" in done.stdout, done.stdout + done.stderr
    assert [a["allowed"] for a in attempts(log)] == [False]


def test_install_and_serve_with_no_network(creator, tmp_path):
    bundle, public = creator
    target = tmp_path / "target"
    target.mkdir()
    log = target / "net.log"
    done = offline(
        [
            sys.executable,
            str(HERE / "offline_driver.py"),
            "--bundle",
            str(bundle),
            "--key",
            str(public),
            "--repo",
            str(target / "repo"),
        ],
        log,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["install_rc"] == 0, result
    assert (
        "installed model tiny-onnx version 1" in result["install_out"]
        and "installed adapter facts" in result["install_out"]
    )
    assert result["health"] == "SERVING" and result["models"] == ["tiny-onnx"] and result["completion_tokens"] == 4, (
        result
    )
    assert result["serve_rc"] == 0, result
    seen = attempts(log)
    assert seen, "the audit hook recorded nothing: it did not load in the processes"
    assert [a for a in seen if not a["allowed"]] == [], "something tried to reach the network"


@pytest.mark.slow
def test_wheels_bundle_installs_into_an_empty_environment_offline(serve_repo, tmp_path):
    """The whole story: wheels downloaded on the creating side, a fresh venv on the target gets
    enclave-llm[serve] from the bundle alone (pip --no-index) and serves the model, with no torch."""
    from enclave.cli import main

    create_dir, target = tmp_path / "create", tmp_path / "target"
    create_dir.mkdir(), target.mkdir()
    assert main(["bundle", "keygen", str(create_dir / "site")]) == 0
    bundle = create_dir / "clinic.tar"
    assert (
        main(
            [
                "bundle",
                "create",
                str(bundle),
                "--key",
                str(create_dir / "site.key"),
                "--model",
                f"tiny-onnx@1={serve_repo / 'models/tiny-onnx/1'}",
                "--wheels",
            ]
        )
        == 0
    )
    venv = target / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    log = target / "net.log"
    done = offline(
        [
            sys.executable,
            str(HERE / "offline_driver.py"),
            "--bundle",
            str(bundle),
            "--key",
            str(create_dir / "site.pub"),
            "--repo",
            str(target / "repo"),
            "--python",
            str(venv / "bin/python"),
            "--install-wheels",
        ],
        log,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["install_rc"] == 0 and "wheels into" in result["install_out"], result
    assert result["health"] == "SERVING" and result["completion_tokens"] == 4 and result["serve_rc"] == 0, result
    assert subprocess.run([str(venv / "bin/python"), "-c", "import torch"], capture_output=True).returncode != 0, (
        "a serving install has no torch"
    )
    assert [a for a in attempts(log) if not a["allowed"]] == [], "something tried to reach the network"
