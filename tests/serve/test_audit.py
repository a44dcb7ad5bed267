"""The audit log as the server writes it: hash-chained lines, rotation that keeps the chain, a restart
that continues it, and every kind of tampering found by the verifier at the right line."""

from __future__ import annotations

import json
import logging
import stat
import threading
from pathlib import Path

import pytest

from enclave.audit import GENESIS, line_hash, verify_chain
from serve.audit import Audit


def write(path: Path, n: int, start: int = 0, **kwargs) -> None:
    audit = Audit(str(path), **kwargs)
    for i in range(start, start + n):
        audit.record(
            request_id=f"req-{i:04d}",
            token="sha256:ab12",
            model="tiny",
            version=1,
            adapter="",
            prompt_tokens=7,
            completion_tokens=4,
            status="OK",
            finish="length",
            latency_seconds=0.0123,
        )
    audit.close()


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def test_lines_are_chained_and_verify(tmp_path):
    path = tmp_path / "logs" / "audit.jsonl"
    write(path, 5)
    raw = lines(path)
    entries = [json.loads(r) for r in raw]
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0]["prev"] == GENESIS
    assert [e["prev"] for e in entries[1:]] == [line_hash(r) for r in raw[:-1]]
    assert list(entries[0])[:4] == ["seq", "prev", "time", "request_id"] and entries[2]["request_id"] == "req-0002"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    report = verify_chain(path)
    assert report.ok and report.lines == 5 and (report.first_seq, report.last_seq) == (1, 5)
    assert report.head == line_hash(raw[-1]) and report.first_time == entries[0]["time"]


def test_reserved_fields_are_refused(tmp_path):
    audit = Audit(str(tmp_path / "audit.jsonl"))
    with pytest.raises(ValueError, match="seq"):
        audit.record(seq=7, model="tiny")
    audit.close()
    with pytest.raises(ValueError, match="closed"):
        audit.record(model="tiny")


def test_restart_continues_the_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    write(path, 3)
    write(path, 2, start=3)
    entries = [json.loads(r) for r in lines(path)]
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5]
    assert entries[3]["prev"] == line_hash(lines(path)[2])
    assert verify_chain(path).ok


def test_concurrent_records_make_one_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    audit = Audit(str(path), max_bytes=8192, backups=50)
    threads = [threading.Thread(target=lambda t=t: [audit.record(thread=t, i=i) for i in range(50)]) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    audit.close()
    report = verify_chain(path)
    assert report.ok, report.problem
    assert (report.first_seq, report.last_seq, report.lines) == (1, 400, 400) and len(report.files) > 3


def test_rotation_keeps_the_chain_and_deletes_old_files(tmp_path):
    path = tmp_path / "audit.jsonl"
    write(path, 30, max_bytes=4096, backups=3)  # 338 bytes a line: 12 lines a file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    assert all(p.stat().st_size <= 4096 and stat.S_IMODE(p.stat().st_mode) == 0o600 for p in tmp_path.iterdir())
    first_new = json.loads(lines(path)[0])
    assert first_new["prev"] == line_hash(lines(tmp_path / "audit.jsonl.1")[-1])
    report = verify_chain(path)
    assert report.ok and report.first_seq == 1 and report.last_seq == 30

    write(path, 70, start=30, max_bytes=4096, backups=3)  # a restart, then rotations past `backups`
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2", "audit.jsonl.3"]
    report = verify_chain(path)
    assert report.ok, report.problem
    assert report.last_seq == 100 and report.first_seq > 1 and not report.from_genesis  # older lines rotated away
    assert report.lines == 100 - report.first_seq + 1


def test_restart_right_after_a_rotation_chains_to_the_rotated_file(tmp_path):
    path = tmp_path / "audit.jsonl"
    write(path, 20, max_bytes=4096, backups=3)
    for n in sorted((int(p.suffix[1:]) for p in tmp_path.glob("audit.jsonl.*")), reverse=True):
        (tmp_path / f"audit.jsonl.{n}").rename(tmp_path / f"audit.jsonl.{n + 1}")
    path.rename(tmp_path / "audit.jsonl.1")  # as if the server stopped between the rotation and the next line
    write(path, 1, start=20, max_bytes=4096, backups=3)
    assert json.loads(lines(path)[0])["seq"] == 21
    assert verify_chain(path).ok


# Each tampering: (what it does to the lines of a 10-line log, the line verify must name, words in the reason).
def edit_field(raw):
    raw[4] = raw[4].replace(b'"prompt_tokens": 7', b'"prompt_tokens": 8')
    return raw


def relink(raw):
    entry = json.loads(raw[6])
    raw[6] = json.dumps({**entry, "prev": "sha256:" + "f" * 64}).encode()
    return raw


TAMPERING = {
    "edit a field of a middle line": (edit_field, 5, "edited"),
    "delete a line": (lambda raw: raw[:4] + raw[5:], 5, "seq 5 missing"),
    "delete three lines": (lambda raw: raw[:4] + raw[7:], 5, "seq 5-7 missing"),
    "swap two lines": (lambda raw: raw[:4] + [raw[5], raw[4]] + raw[6:], 5, "seq 5 missing"),
    "repeat a line": (lambda raw: raw[:5] + [raw[4]] + raw[5:], 6, "out of order or repeated"),
    "insert a line, renumber the rest": (
        lambda raw: (
            raw[:4]
            + [raw[3].replace(b'"seq": 4', b'"seq": 5')]
            + [r.replace(f'"seq": {i}'.encode(), f'"seq": {i + 1}'.encode()) for i, r in enumerate(raw[4:], 5)]
        ),
        5,
        "inserted",
    ),
    "change the prev of a line": (relink, 7, "inserted or edited"),
    "drop the first line": (lambda raw: raw[1:], 1, "seq 1 missing"),
}


@pytest.mark.parametrize("name", TAMPERING)
def test_tampering_is_found_at_its_line(tmp_path, name):
    tamper, line, words = TAMPERING[name]
    path = tmp_path / "audit.jsonl"
    write(path, 10)
    assert verify_chain(path).ok
    path.write_bytes(b"\n".join(tamper(lines(path))) + b"\n")
    problem = verify_chain(path).problem
    assert problem is not None and (problem.file, problem.line) == (path, line), problem
    assert words in problem.reason


def test_a_truncated_last_line_is_found(tmp_path):
    path = tmp_path / "audit.jsonl"
    write(path, 6)
    path.write_bytes(path.read_bytes()[:-40])
    report = verify_chain(path)
    assert (report.problem.line, report.lines, report.last_seq) == (6, 5, 5)
    assert "cut short" in report.problem.reason


def test_tampering_in_a_rotated_file_is_found(tmp_path):
    path = tmp_path / "audit.jsonl"
    write(path, 45, max_bytes=4096, backups=5)
    middle = tmp_path / "audit.jsonl.2"
    raw = lines(middle)
    raw[3] = raw[3].replace(b'"status": "OK"', b'"status": "NOT_FOUND"')
    middle.write_bytes(b"\n".join(raw) + b"\n")
    problem = verify_chain(path).problem
    assert (problem.file, problem.line) == (middle, 4) and "edited" in problem.reason

    write(path, 1, start=45, max_bytes=4096, backups=5)  # deleting a whole rotated file breaks the chain too
    middle.unlink()
    problem = verify_chain(path).problem
    assert problem.file == tmp_path / "audit.jsonl.1" and problem.line == 1 and "missing" in problem.reason


def test_a_torn_write_is_recorded_on_restart_and_reported(tmp_path, caplog):
    path = tmp_path / "audit.jsonl"
    write(path, 4)
    with open(path, "ab") as fh:
        fh.write(b'{"seq": 5, "prev": "sha256:')  # the server died in the middle of a line
    with caplog.at_level(logging.WARNING, logger="enclave.audit"):
        write(path, 2, start=4)
    assert "not a complete audit line" in caplog.text
    raw = lines(path)
    resumed = json.loads(raw[5])
    assert resumed["event"] == "audit_resumed" and resumed["seq"] == 5 and resumed["after_seq"] == 4
    assert resumed["prev"] == line_hash(raw[3]) and resumed["unreadable_bytes"] == 27
    assert json.loads(raw[6])["seq"] == 6
    problem = verify_chain(path).problem
    assert problem.line == 5 and "torn" in problem.reason and "audit.jsonl:6, seq 5" in problem.reason


def test_a_missing_newline_alone_is_not_a_tear(tmp_path):
    path = tmp_path / "audit.jsonl"
    write(path, 3)
    path.write_bytes(path.read_bytes()[:-1])
    write(path, 1, start=3)
    assert [json.loads(r)["seq"] for r in lines(path)] == [1, 2, 3, 4]
    assert verify_chain(path).ok


def test_a_file_from_before_the_chain_is_set_aside(tmp_path, caplog):
    path = tmp_path / "audit.jsonl"
    path.write_text('{"time": "2025-01-01T00:00:00.000+00:00", "request_id": "old", "status": "OK"}\n')
    with caplog.at_level(logging.WARNING, logger="enclave.audit"):
        write(path, 2)
    (aside,) = tmp_path.glob("audit.jsonl.unchained-*")
    assert b'"request_id": "old"' in aside.read_bytes() and "moved to" in caplog.text
    assert json.loads(lines(path)[0])["prev"] == GENESIS and verify_chain(path).ok


def test_without_a_file_lines_go_to_the_logger_chained(caplog):
    audit = Audit(None)
    with caplog.at_level(logging.INFO, logger="enclave.audit"):
        audit.record(model="tiny", status="OK")
        audit.record(model="tiny", status="NOT_FOUND")
    raw = [r.getMessage().encode() for r in caplog.records if r.name == "enclave.audit"]
    entries = [json.loads(r) for r in raw]
    assert [e["seq"] for e in entries] == [1, 2] and entries[0]["prev"] == GENESIS
    assert entries[1]["prev"] == line_hash(raw[0]) and entries[1]["status"] == "NOT_FOUND"


def test_end_users_are_keyed_pseudonyms_stable_across_restarts(tmp_path):
    path = tmp_path / "audit.jsonl"
    a = Audit(str(path))
    first = a.pseudonym("nurse-0042")
    assert first.startswith("hmac:") and "0042" not in first and first != a.pseudonym("nurse-0043")
    key = path.with_name("audit.jsonl.key")
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32
    a.close()
    assert Audit(str(path)).pseudonym("nurse-0042") == first  # the same key after a restart
    other = tmp_path / "other" / "audit.jsonl"
    assert Audit(str(other)).pseudonym("nurse-0042") != first  # another server's log: another key


def test_the_openai_user_field_is_audited_only_as_a_pseudonym(serve_repo, tmp_path):
    import json

    openai = pytest.importorskip("openai")
    from tests.serve.conftest import running, serve_config

    log = tmp_path / "audit.jsonl"
    with running(serve_config(serve_repo, http_port=0, audit_log=str(log))) as server:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.http_port}/v1", api_key="x", max_retries=0)
        client.completions.create(model="tiny-onnx", prompt="Hi", max_tokens=2, user="dr.jones@ward7")
        pseudonym = server.audit.pseudonym("dr.jones@ward7")
    text = log.read_text()
    assert "dr.jones" not in text and json.loads(text.splitlines()[-1])["user"] == pseudonym
