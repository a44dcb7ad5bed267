"""Reviewers' feedback, end to end on a real server: ratings over gRPC and HTTP tied to the model,
version and adapter that answered, reviewer tokens only, NOT_FOUND for unknown ids, text kept
only where capture is on and then sealed at rest, and `enclave feedback export` making a file
that `enclave tune check-data` reads."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import grpc
import pytest

from enclave.grpc_client import Client
from tests.serve.conftest import running, serve_config, status_of

SECRET = "Patient Zoltan Quibblewick, MRN 7741, takes warfarin"
ASK = [{"role": "user", "content": f"{SECRET}. What does BID mean?"}]


def _cli(*args, check=True):
    done = subprocess.run([sys.executable, "-m", "enclave", *args], capture_output=True, text=True, timeout=300)
    assert not check or done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def loop(serve_repo, tmp_path_factory):
    """A server with feedback: text captured for tiny-onnx only, sealed under a key file."""
    from serve.auth import add_token

    d = tmp_path_factory.mktemp("feedback")
    tokens = d / "tokens.yaml"
    made = {
        "reader": add_token(tokens, "ehr", "reader"),
        "pharmacist": add_token(tokens, "dr-a", "reviewer", title="pharmacist"),
        "associate": add_token(tokens, "mr-b", "reviewer", title="senior associate"),
        "tiny_only": add_token(tokens, "dr-c", "reviewer", models=["tiny"], title="pharmacist"),
    }
    key = d / "feedback.key"
    _cli("feedback", "keygen", str(key))
    cfg = serve_config(
        serve_repo,
        http_port=0,
        auth__tokens_file=str(tokens),
        audit_log=str(d / "audit.jsonl"),
        feedback__store=str(d / "feedback.db"),
        feedback__key_file=str(key),
        feedback__capture_text=["tiny-onnx"],
        limits__max_new_tokens=64,
        limits__default_new_tokens=16,
        adapters={"tiny": ["facts"]},
    )
    (d / "serve.yaml").write_text(json.dumps(cfg.model_dump(mode="json")))  # JSON is YAML
    with running(cfg) as server:
        server.made, server.dir = made, d
        yield server


def _client(server, who: str) -> Client:
    return Client(f"127.0.0.1:{server.port}", timeout=60, token=server.made[who])


def test_a_rating_is_tied_to_the_answer_and_needs_a_reviewer(loop):
    with _client(loop, "reader") as reader:
        answer = reader.generate(ASK, model="tiny-onnx", max_tokens=8, request_id="ward-7-q1")
        code, details = status_of(lambda: reader.feedback(answer.request_id, good=False))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "role: reviewer" in details
        tuned = reader.generate(ASK, model="tiny", adapter="facts", max_tokens=8)
    with _client(loop, "pharmacist") as reviewer:
        got = reviewer.feedback(answer.request_id, good=False, correction="Twice a day.", reason="BID: bis in die")
        assert (got.model, got.model_version, got.adapter, got.text_kept) == ("tiny-onnx", "1", "", True)
        got = reviewer.feedback(tuned.request_id, score=2, correction="Twice a day.")
        assert (got.model, got.adapter, got.text_kept) == ("tiny", "facts", False)  # capture is off for tiny
        code, details = status_of(lambda: reviewer.feedback("no-such-answer", good=True))
        assert code == grpc.StatusCode.NOT_FOUND and "no-such-answer" in details
        for bad in (
            lambda: reviewer.feedback(answer.request_id),
            lambda: reviewer.feedback(answer.request_id, score=9),
        ):
            assert status_of(bad)[0] == grpc.StatusCode.INVALID_ARGUMENT
    with _client(loop, "tiny_only") as other:
        code, details = status_of(lambda: other.feedback(answer.request_id, good=True))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "tiny-onnx" in details


def test_a_streamed_answer_can_be_rated_the_moment_it_ends(loop):
    with _client(loop, "reader") as reader, _client(loop, "pharmacist") as reviewer:
        for i in range(5):
            *_, last = reader.stream(ASK, model="tiny-onnx", max_tokens=4, request_id=f"stream-{i}")
            assert reviewer.feedback(last.request_id, good=True).model == "tiny-onnx"


def _post(server, who: str, path: str, body: dict) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    headers = {"Authorization": f"Bearer {server.made[who]}", "Content-Type": "application/json"}
    url = f"http://127.0.0.1:{server.http_port}/v1{path}"
    request = urllib.request.Request(url, json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_http_feedback_by_the_answer_id_and_choice(loop):
    body = {"model": "tiny-onnx", "messages": ASK, "max_tokens": 6, "n": 2, "temperature": 1.0, "seed": 3}
    status, answer = _post(loop, "reader", "/chat/completions", body)
    assert status == 200, answer
    rate = {"id": answer["id"], "choice": 1, "rating": "bad", "correction": "Twice a day."}
    status, got = _post(loop, "associate", "/feedback", rate)
    assert status == 200, got
    assert got["request_id"].endswith("/1") and got["text_kept"] is True and got["model"] == "tiny-onnx"
    status, refused = _post(loop, "reader", "/feedback", rate)
    assert status == 403 and refused["error"]["type"] == "permission_error"
    assert _post(loop, "associate", "/feedback", {**rate, "id": "chatcmpl-nope"})[0] == 404
    status, wrong = _post(loop, "associate", "/feedback", {**rate, "rating": "meh"})
    assert status == 400 and wrong["error"]["param"] == "rating"
    assert _post(loop, "associate", "/feedback", {**rate, "rating": 0})[0] == 400


def test_text_is_sealed_at_rest_and_export_feeds_check_data(loop, tiny_checkpoint, tmp_path):
    """Two reviewers correct three answers; the export holds the corrections as chat and preference
    records, counted per reviewer title and version, and check-data accepts it."""
    questions = ["What does PRN mean?", "What is a tort?", "What does NPO mean?"]
    with _client(loop, "reader") as reader:
        answers = [reader.generate(q, chat=True, model="tiny-onnx", max_tokens=6) for q in questions]
    corrections = ["As needed.", "A civil wrong that causes harm.", "Nothing by mouth."]
    for i, (a, fix) in enumerate(zip(answers, corrections)):
        with _client(loop, "pharmacist" if i != 1 else "associate") as reviewer:
            reviewer.feedback(a.request_id, good=False, correction=fix, reason="wrong meaning")
    store = loop.dir / "feedback.db"
    at_rest = b"".join(p.read_bytes() for p in loop.dir.glob("feedback.db*"))
    for text in (SECRET, "Nothing by mouth", "civil wrong", "wrong meaning"):
        assert text.encode() not in at_rest  # sealed: the file alone shows no prompt, answer or correction
    audit = (loop.dir / "audit.jsonl").read_text()
    assert '"feedback"' in audit and "Nothing by mouth" not in audit
    out = tmp_path / "corrections.jsonl"
    done = _cli(
        "feedback", "export", "--config", str(loop.dir / "serve.yaml"), "--model", "tiny-onnx", "--out", str(out)
    )
    records = [json.loads(line) for line in out.read_text().splitlines()]
    chats = [r for r in records if "messages" in r]
    assert sorted(r["messages"][-1]["content"] for r in chats) == sorted(corrections + ["Twice a day."] * 2)
    prefs = [r for r in records if "chosen" in r]
    assert all(r["rejected"][0]["content"] != r["chosen"][0]["content"] for r in prefs) and len(prefs) >= 3
    assert {r["reviewer"] for r in records} == {"pharmacist", "senior associate"}
    text = out.read_text()
    assert "dr-a" not in text and "mr-b" not in text and "sha256:" not in text  # titles, never who
    assert "pharmacist" in done.stdout + done.stderr and "senior associate" in done.stdout + done.stderr
    checked = _cli("tune", "check-data", str(out), f"base_model={tiny_checkpoint}", "data.max_length=128")
    assert "records loaded" in checked.stdout and str(len(records)) in checked.stdout
    assert "preference pairs" in checked.stdout
    assert sqlite3.connect(store).execute("SELECT count(*) FROM feedback").fetchone()[0] >= 5


def test_a_damaged_store_is_reported_and_the_server_does_not_start(serve_repo, tmp_path):
    import asyncio

    from enclave.errors import EnclaveError
    from serve.server import Server

    async def start():
        return Server(cfg)

    store = tmp_path / "feedback.db"
    store.write_bytes(b"SQLite format 3\x00" + os.urandom(4096))
    cfg = serve_config(serve_repo, feedback__store=str(store))
    with pytest.raises(EnclaveError, match="feedback.store .*feedback.db is damaged"):
        asyncio.run(start())
    done = _cli("feedback", "check", "--store", str(store), check=False)
    assert done.returncode != 0 and "damaged" in done.stderr
