"""The audit chain's verifier and `enclave audit verify`, on chains built here from the primitives
(the server's own lines are tested in tests/serve/test_audit.py)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from enclave.audit import GENESIS, chain_files, line_hash, verify_chain
from enclave.cli import main


def chain(start: int = 1, count: int = 6, prev: str = GENESIS) -> list[bytes]:
    lines = []
    for seq in range(start, start + count):
        entry = {"seq": seq, "prev": prev, "time": f"2026-03-01T10:00:{seq:02d}.000+00:00", "status": "OK"}
        lines.append(json.dumps(entry).encode())
        prev = line_hash(lines[-1])
    return lines


def save(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def test_line_hash_and_genesis():
    assert GENESIS == "sha256:" + "0" * 64
    assert line_hash(b'{"seq": 1}') == "sha256:" + hashlib.sha256(b'{"seq": 1}').hexdigest()


def test_files_are_read_oldest_first(tmp_path):
    lines = chain(count=9)
    for name, part in [
        ("a.jsonl.10", lines[:3]),
        ("a.jsonl.2", lines[3:6]),
        ("a.jsonl.1", lines[6:8]),
        ("a.jsonl", lines[8:]),
    ]:
        save(tmp_path / name, part)
    (tmp_path / "a.jsonl.unchained-20260101T000000Z").write_text("{}\n")
    (tmp_path / "a.jsonl.bak").write_text("{}\n")
    assert [p.name for p in chain_files(tmp_path / "a.jsonl")] == ["a.jsonl.10", "a.jsonl.2", "a.jsonl.1", "a.jsonl"]
    report = verify_chain(tmp_path / "a.jsonl")
    assert report.ok and report.lines == 9 and report.from_genesis and report.head == line_hash(lines[-1])
    assert (report.first_time, report.last_time) == ("2026-03-01T10:00:01.000+00:00", "2026-03-01T10:00:09.000+00:00")


def test_a_chain_kept_from_mid_way_is_information_not_tampering(tmp_path):
    lines = chain(count=10)
    save(tmp_path / "a.jsonl.1", lines[4:8])  # rotation deleted the files holding seq 1-4
    save(tmp_path / "a.jsonl", lines[8:])
    report = verify_chain(tmp_path / "a.jsonl")
    assert report.ok and report.first_seq == 5 and not report.from_genesis

    (tmp_path / "a.jsonl.1").unlink()  # but the live file alone must start the chain
    problem = verify_chain(tmp_path / "a.jsonl").problem
    assert (problem.line, problem.reason) == (
        1,
        "the chain starts at seq 9, and no rotated file precedes it: seq 1-8 missing",
    )


@pytest.mark.parametrize(
    "first, words",
    [
        ({"seq": 3, "prev": GENESIS}, "a chain starts at seq 1 with the genesis prev"),
        ({"seq": 1, "prev": "sha256:" + "1" * 64}, "a chain starts at seq 1 with the genesis prev"),
    ],
)
def test_a_forged_start_is_refused(tmp_path, first, words):
    problem = verify_chain(save(tmp_path / "a.jsonl", [json.dumps(first).encode()])).problem
    assert problem.line == 1 and words in problem.reason


@pytest.mark.parametrize(
    "junk", [b"", b"not json", b"[1, 2]", b'{"seq": "3", "prev": "x"}', b'{"time": "t", "status": "OK"}']
)
def test_a_line_that_is_not_an_audit_line(tmp_path, junk):
    lines = chain()
    lines[2] = junk
    problem = verify_chain(save(tmp_path / "a.jsonl", lines)).problem
    assert problem.line == 3 and problem.reason.startswith("not an audit line")


def test_an_empty_file_is_ok_and_a_missing_one_an_error(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b"")
    report = verify_chain(tmp_path / "a.jsonl")
    assert report.ok and report.lines == 0
    with pytest.raises(FileNotFoundError, match="no audit file"):
        verify_chain(tmp_path / "b.jsonl")


def test_cli_ok_summary(tmp_path, capsys):
    lines = chain(count=7)
    save(tmp_path / "audit.jsonl.1", lines[:4])
    path = save(tmp_path / "audit.jsonl", lines[4:])
    assert main(["audit", "verify", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        f"ok     {path}",
        "  files  2: audit.jsonl.1, audit.jsonl",
        "  lines  7, seq 1 to 7 (seq 1: the start of the chain)",
        "  time   2026-03-01T10:00:01.000+00:00 to 2026-03-01T10:00:07.000+00:00",
        f"  head   {line_hash(lines[-1])}",
    ]


def test_cli_names_the_first_broken_line(tmp_path, capsys):
    lines = chain(count=7)
    save(tmp_path / "audit.jsonl.1", lines[:4])
    path = save(tmp_path / "audit.jsonl", lines[4:5] + lines[6:])  # seq 6 deleted
    assert main(["audit", "verify", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"FAILED {path}",
        f"  {path}:2: seq 6 missing before this line (seq 7): deleted or moved",
        "  before it: 5 good lines (seq 1 to 5); files: audit.jsonl.1, audit.jsonl",
    ]


def verify_in_a_process(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "enclave", "audit", "verify", str(path)], capture_output=True, text=True
    )


def test_cli_exit_codes_in_a_process(tmp_path):
    path = save(tmp_path / "audit.jsonl", chain())
    done = verify_in_a_process(path)
    assert done.returncode == 0 and done.stdout.startswith(f"ok     {path}\n"), done.stderr
    path.write_bytes(path.read_bytes().replace(b'"status": "OK"}\n{"seq": 4', b'"status": "ERR"}\n{"seq": 4'))
    done = verify_in_a_process(path)
    assert done.returncode == 1
    assert f"{path}:3: edited: its sha256 is not the prev that the next line (audit.jsonl:4) recorded" in done.stderr
    done = verify_in_a_process(tmp_path / "none.jsonl")
    assert done.returncode == 2 and "error: no audit file" in done.stderr and "Traceback" not in done.stderr
