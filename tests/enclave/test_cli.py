import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from enclave.cli import COMMANDS, build_parser, main

CLI_DIR = Path(__file__).parents[2] / "enclave" / "cli"


def run_cli(*args: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "enclave", *args],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, **env},
    )


def test_command_table_matches_modules():
    modules = {p.stem for p in CLI_DIR.glob("*.py") if p.stem != "__init__"}
    assert set(COMMANDS) == modules
    assert all(v == f"enclave.cli.{k}" for k, v in COMMANDS.items())


def _walk(parser: argparse.ArgumentParser, prefix: list[str]):
    yield prefix
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, prefix + [name])


def test_help_on_every_level(capsys):
    paths = list(_walk(build_parser(), []))
    assert ["models", "pull"] in paths and ["generate"] in paths
    for path in paths:
        with pytest.raises(SystemExit) as exit_info:
            main([*path, "--help"])
        assert exit_info.value.code == 0
        assert "usage: enclave" in capsys.readouterr().out


def test_user_error_is_one_message_without_traceback(enclave_home):
    proc = run_cli("generate", "--model", "no-such-model", "hello")
    assert proc.returncode == 2
    assert "error: unknown model 'no-such-model'" in proc.stderr
    assert "enclave models pull smollm2-135m-instruct" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_error_from_flags(enclave_home):
    proc = run_cli("generate", "--model", "x", "--temperature", "-1", "--set", "bogus=1", "hi")
    assert proc.returncode == 2
    assert "temperature: Input should be greater than or equal to 0 (got '-1')" in proc.stderr
    assert "bogus: unknown key" in proc.stderr


def test_verify_cli_names_the_bad_file(tmp_path):
    from enclave.manifest import create_artifact

    with create_artifact(tmp_path / "a", "adapter", "a") as draft:
        (draft.path / "w.safetensors").write_bytes(b"123")
    assert run_cli("verify", str(tmp_path / "a")).returncode == 0
    (tmp_path / "a" / "w.safetensors").write_bytes(b"124")
    proc = run_cli("verify", str(tmp_path / "a"), str(tmp_path / "missing"))
    assert proc.returncode == 1
    assert "w.safetensors: sha256 differs" in proc.stderr
    assert f"FAILED {tmp_path / 'missing'}" in proc.stderr and "manifest.json: missing" in proc.stderr


def test_json_logs(enclave_home, tiny_checkpoint):
    proc = run_cli("--log-format", "json", "models", "import", str(tiny_checkpoint), "--name", "tiny")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert records and all({"time", "level", "logger", "message"} <= r.keys() for r in records)
