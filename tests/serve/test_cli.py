"""`enclave client ...` against a real server, and `enclave serve add|activate|rollback|list`."""

from __future__ import annotations

import shutil

import pytest

from enclave.cli import main


def test_client_commands(server, capsys, tmp_path):
    target = ["--target", f"127.0.0.1:{server.port}", "--token", server.token]
    assert main(["client", "health", *target]) == 0
    assert capsys.readouterr().out.strip() == "SERVING"
    assert main(["client", "models", *target]) == 0
    out = capsys.readouterr().out
    assert "tiny-onnx" in out and "onnxruntime" in out and "*1" in out
    assert main(["client", "generate", "The patient was given", "--max-tokens", "5", "--model", "tiny", *target]) == 0
    got = capsys.readouterr()
    assert "5 new tokens, finish: length" in got.err and "tiny v1" in got.err
    assert main(["client", "stream", "Blood", "--max-tokens", "4", "--chat", *target]) == 0
    assert "finish: length" in capsys.readouterr().err
    assert main(["client", "tokenize", "Habeas corpus", *target]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith("tokens")
    assert main(["client", "tokenize", "Habeas corpus", "--chat", *target]) == 0
    user_only = int(capsys.readouterr().out.split()[0])
    policy = tmp_path / "policy.txt"
    policy.write_text("Answer as the ward's pharmacist would.")
    for system in ("Answer as the ward's pharmacist would.", f"@{policy}"):
        assert main(["client", "tokenize", "Habeas corpus", "--system", system, *target]) == 0
        assert int(capsys.readouterr().out.split()[0]) > user_only + 5  # the system message is in the prompt
    assert main(["client", "generate", "hi", "--temperature", "-1", *target]) == 1
    assert "INVALID_ARGUMENT: sampling.temperature" in capsys.readouterr().err


def test_repository_commands(serve_repo, tmp_path, capsys):
    repo = tmp_path / "repo"
    art = serve_repo / "models" / "tiny" / "1"
    assert main(["serve", "add", str(art), "--repo", str(repo), "--name", "m", "--version", "1"]) == 0
    assert main(["serve", "add", str(art), "--repo", str(repo), "--name", "m", "--version", "2", "--inactive"]) == 0
    assert main(["serve", "activate", "m", "2", "--repo", str(repo)]) == 0
    assert main(["serve", "rollback", "m", "--repo", str(repo)]) == 0
    assert "version 1 is active again" in capsys.readouterr().out
    assert main(["serve", "rollback", "m", "--repo", str(repo)]) == 2
    assert "no earlier active version" in capsys.readouterr().err
    assert main(["serve", "activate", "m", "7", "--repo", str(repo)]) == 2
    assert "has no version '7'; it has: 1, 2" in capsys.readouterr().err
    assert main(["serve", "add-adapter", str(serve_repo / "adapters" / "facts"), "--repo", str(repo)]) == 0
    assert (
        main(
            [
                "serve",
                "add",
                str(serve_repo / "adapters" / "facts"),
                "--repo",
                str(repo),
                "--name",
                "x",
                "--version",
                "1",
            ]
        )
        == 2
    )
    assert "adapter artifact, which the server does not run" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(art, broken)
    (broken / "config.json").write_text("{}")
    assert main(["serve", "add", str(broken), "--repo", str(repo), "--name", "y", "--version", "1"]) == 2
    assert "failed verification" in capsys.readouterr().err
    assert main(["serve", "list", "--repo", str(repo)]) == 0
    out = capsys.readouterr().out
    assert "adapters: facts" in out and out.count(" m ") >= 2


def test_serve_refuses_an_empty_repository_and_bad_settings(tmp_path, capsys):
    assert main(["serve", "--repo", str(tmp_path), "--port", "0", "--metrics-port", "0"]) == 2
    assert "has no models" in capsys.readouterr().err
    assert main(["serve", "--repo", str(tmp_path), "scheduler.max_batch_size=0", "colour=blue"]) == 2
    err = capsys.readouterr().err
    assert "scheduler.max_batch_size" in err and "colour: unknown key" in err


@pytest.mark.parametrize("flag", ["--port", "--metrics-port"])
def test_busy_port_is_named(serve_repo, server, flag, capsys):
    port = server.port if flag == "--port" else server.metrics_port
    code = main(["serve", "--repo", str(serve_repo), "--port", "0", "--metrics-port", "0", flag, str(port)])
    assert code != 0
    assert str(port) in capsys.readouterr().err
