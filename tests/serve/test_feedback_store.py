"""The feedback store on its own: sealed text bound to its place, the key file's checks, purge
past retention, and damage reported, never skipped."""

from __future__ import annotations

import json
import time

import pytest

from enclave.errors import EnclaveError
from serve.feedback.crypto import KeyFileError, Sealer, keygen, read_key
from serve.feedback.export import export
from serve.feedback.store import Answer, Rating, Store


@pytest.fixture()
def sealer(tmp_path):
    return Sealer(read_key(keygen(tmp_path / "k")))


def _answer(sealer, rid: str, at: float, question: str, text: str, model: str = "m") -> Answer:
    prompt = sealer.seal(json.dumps([{"role": "user", "content": question}]), f"answers/{rid}/prompt")
    return Answer(rid, at, model, "2", "facts", prompt, sealer.seal(text, f"answers/{rid}/answer"))


def _rating(sealer, fid: str, rid: str, at: float, verdict: str, correction: str | None = None) -> Rating:
    sealed = sealer.seal(correction, f"feedback/{fid}/correction") if correction else None
    return Rating(fid, rid, at, "sha256:abc", "pharmacist", verdict, None, sealed, None)


def test_sealed_text_opens_only_where_it_was_sealed(sealer, tmp_path):
    blob = sealer.seal("Nothing by mouth.", "feedback/fb-1/correction")
    assert sealer.open(blob, "feedback/fb-1/correction") == "Nothing by mouth."
    with pytest.raises(ValueError, match="does not open"):
        sealer.open(blob, "feedback/fb-2/correction")  # moved to another record
    with pytest.raises(ValueError, match="does not open"):
        sealer.open(blob[:-1] + bytes([blob[-1] ^ 1]), "feedback/fb-1/correction")  # altered
    with pytest.raises(ValueError, match="does not open"):
        Sealer(read_key(keygen(tmp_path / "other"))).open(blob, "feedback/fb-1/correction")  # another key


def test_key_files_are_checked(tmp_path):
    key = keygen(tmp_path / "k")
    assert key.stat().st_mode & 0o777 == 0o600
    with pytest.raises(EnclaveError, match="exists"):
        keygen(key)  # never overwritten: the text sealed under it would be lost
    key.chmod(0o644)
    with pytest.raises(KeyFileError, match="(?s)readable by others.*chmod 600"):
        read_key(key)
    bad = tmp_path / "bad"
    bad.write_text("not a key\n")
    bad.chmod(0o600)
    with pytest.raises(KeyFileError, match="does not hold a key"):
        read_key(bad)
    with pytest.raises(KeyFileError, match="enclave feedback keygen"):
        read_key(tmp_path / "missing")


def test_capture_needs_a_key_and_a_store():
    from pydantic import ValidationError

    from serve.config import FeedbackSettings

    with pytest.raises(ValidationError, match="feedback.key_file"):
        FeedbackSettings(store="f.db", capture_text=True)
    assert FeedbackSettings(store="f.db", key_file="k", capture_text=["a"]).captures("a")
    assert not FeedbackSettings(store="f.db", key_file="k", capture_text=["a"]).captures("b")


def test_purge_drops_old_text_and_unrated_answers_and_keeps_ratings(sealer, tmp_path):
    store = Store(tmp_path / "f.db")
    old, new = time.time() - 40 * 86400, time.time()
    gone = _answer(sealer, "old-rated", old, "q1", "a1")
    store.remember(gone)
    store.remember(_answer(sealer, "old-unrated", old, "q2", "a2"))
    store.remember(_answer(sealer, "new", new, "q3", "a3"))
    store.rate(_rating(sealer, "fb-1", "old-rated", old, "bad", "right answer"))
    texts, unrated = store.purge(time.time() - 30 * 86400)
    assert (texts, unrated) == (3, 1)  # the two old answers' text and the old correction; the unrated one
    assert store.answer("old-unrated") is None and store.answer("old-rated").prompt is None
    assert store.answer("new").prompt is not None
    assert store.counts()["ratings"] == 1  # the rating itself stays
    store.close()
    at_rest = b"".join(p.read_bytes() for p in tmp_path.glob("f.db*"))
    assert gone.prompt not in at_rest and gone.answer not in at_rest  # not left in free pages or the log


def test_export_pairs_ratings_and_stops_on_text_that_does_not_open(sealer, tmp_path):
    store = Store(tmp_path / "f.db")
    now = time.time()
    store.remember(_answer(sealer, "r1", now, "What does PRN mean?", "Every day."))
    store.remember(_answer(sealer, "r2", now, "What does PRN mean?", "As needed."))
    store.rate(_rating(sealer, "fb-1", "r1", now, "bad"))
    store.rate(_rating(sealer, "fb-2", "r2", now, "good"))
    records, summary = export(store, sealer, "m")
    assert records == [
        {
            "prompt": [{"content": "What does PRN mean?", "role": "user"}],
            "chosen": [{"role": "assistant", "content": "As needed."}],
            "rejected": [{"role": "assistant", "content": "Every day."}],
            "source": "feedback",
            "model_version": "2",
            "adapter": "facts",
            "reviewer": "pharmacist",
        }
    ]
    assert summary.records[("pharmacist", "2", "facts", "preference")] == 1
    store.db.execute("UPDATE answers SET answer = ? WHERE request_id = 'r2'", (sealer.seal("x", "answers/r1/answer"),))
    with pytest.raises(EnclaveError, match=r"(?s)1 sealed value\(s\) of m do not open.*answers/r2/answer"):
        export(store, sealer, "m")
