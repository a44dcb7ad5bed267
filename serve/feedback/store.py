"""The feedback store: one SQLite file with the answers a reviewer may rate and their ratings.

``answers`` holds one row per answered call (request id, model, version, adapter, time): what
a rating is tied to, so feedback for an id the server never answered is NOT_FOUND. The prompt
and the answer are kept only for models with text capture on, sealed (``serve.feedback.crypto``).
``feedback`` holds the ratings, with the reviewer's token id (for counting, never exported) and
title; a correction and a reason are sealed like the prompt, and kept only with capture on.

Nothing is dropped silently: opening runs SQLite's ``quick_check`` and refuses a damaged file
(the server does not start on it), and a value that does not open under the key is an error
naming the record, never a skipped one. Writes run on one thread of their own, in order, so the
event loop never waits on the disk and a rating always finds the answer recorded before it.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from enclave.errors import EnclaveError

SCHEMA_VERSION = "1"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS answers (
    request_id TEXT PRIMARY KEY,
    at REAL NOT NULL,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    adapter TEXT NOT NULL,
    prompt BLOB,
    answer BLOB
);
CREATE INDEX IF NOT EXISTS answers_at ON answers (at);
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL REFERENCES answers (request_id),
    at REAL NOT NULL,
    reviewer TEXT NOT NULL,
    title TEXT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('good', 'bad', 'neutral')),
    score INTEGER,
    correction BLOB,
    reason BLOB
);
CREATE INDEX IF NOT EXISTS feedback_request ON feedback (request_id);
"""


class StoreError(EnclaveError):
    """The feedback store cannot be used as it is (damaged, another schema, unreadable)."""


@dataclass(frozen=True)
class Answer:
    """One answered call as the store keeps it (text only with capture on, sealed)."""

    request_id: str
    at: float
    model: str
    version: str
    adapter: str
    prompt: bytes | None = None
    answer: bytes | None = None


@dataclass(frozen=True)
class Rating:
    """One reviewer's feedback on an answer."""

    id: str
    request_id: str
    at: float
    reviewer: str
    title: str
    verdict: str
    score: int | None = None
    correction: bytes | None = None
    reason: bytes | None = None


def verdict_of(good: bool | None, score: int | None) -> str:
    """good / bad / neutral from a good-bad verdict or a 1-5 score (4-5 good, 1-2 bad, 3 neutral)."""
    if good is not None:
        return "good" if good else "bad"
    assert score is not None
    return "good" if score >= 4 else "bad" if score <= 2 else "neutral"


class Store:
    """The SQLite file; use from one thread at a time (the server gives it a thread of its own)."""

    def __init__(self, path: Path, setting: str = "feedback.store") -> None:
        self.path, self.setting = Path(path).expanduser(), setting
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")  # a rating acknowledged is on disk
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.execute("PRAGMA secure_delete=ON")  # deleted text is overwritten, not left in free pages
            check = [row[0] for row in self.db.execute("PRAGMA quick_check")]
            if check != ["ok"]:
                raise self._damaged("; ".join(check[:5]))
            self.db.executescript(SCHEMA)
            found = self.db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if found is None:
                self.db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            elif found[0] != SCHEMA_VERSION:
                raise StoreError(
                    f"{setting} {self.path}: schema {found[0]}, this server reads {SCHEMA_VERSION}",
                    fix="use the Enclave release that wrote it to export its feedback, then start a new store",
                )
            if self.path.stat().st_mode & 0o077:
                self.path.chmod(0o600)
        except sqlite3.DatabaseError as exc:
            raise self._damaged(str(exc)) from None

    def _damaged(self, why: str) -> StoreError:
        return StoreError(
            f"{self.setting} {self.path} is damaged: {why}",
            fix=f"move it aside (mv {self.path} {self.path}.damaged) and restart with a new store; "
            "`enclave feedback check` reports what the old one still holds",
        )

    def close(self) -> None:
        self.db.close()

    # -- the server's writes ---------------------------------------------------------------------

    def remember(self, answer: Answer) -> None:
        """Record an answered call (a repeated request id: the newest answer is the one rated)."""
        self.db.execute(
            "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                answer.request_id,
                answer.at,
                answer.model,
                answer.version,
                answer.adapter,
                answer.prompt,
                answer.answer,
            ),
        )

    def answer(self, request_id: str) -> Answer | None:
        row = self.db.execute("SELECT * FROM answers WHERE request_id = ?", (request_id,)).fetchone()
        return Answer(*row) if row else None

    def rate(self, rating: Rating) -> None:
        self.db.execute(
            "INSERT INTO feedback VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                rating.id,
                rating.request_id,
                rating.at,
                rating.reviewer,
                rating.title,
                rating.verdict,
                rating.score,
                rating.correction,
                rating.reason,
            ),
        )

    # -- the CLI's reads -------------------------------------------------------------------------

    def rated(self, model: str) -> list[tuple[Answer, list[Rating]]]:
        """Every answer of ``model`` that has feedback, oldest first, with its ratings."""
        out: dict[str, tuple[Answer, list[Rating]]] = {}
        query = (
            "SELECT a.*, f.* FROM answers a JOIN feedback f ON f.request_id = a.request_id "
            "WHERE a.model = ? ORDER BY a.at, f.at"
        )
        for row in self.db.execute(query, (model,)):
            answer, rating = Answer(*row[:7]), Rating(*row[7:])
            out.setdefault(answer.request_id, (answer, []))[1].append(rating)
        return list(out.values())

    def counts(self) -> dict[str, int]:
        """Rows per table, and how many hold sealed text."""
        one = lambda q: self.db.execute(q).fetchone()[0]  # noqa: E731
        return {
            "answers": one("SELECT count(*) FROM answers"),
            "answers with text": one("SELECT count(*) FROM answers WHERE prompt IS NOT NULL"),
            "ratings": one("SELECT count(*) FROM feedback"),
            "ratings with a correction": one("SELECT count(*) FROM feedback WHERE correction IS NOT NULL"),
        }

    def purge(self, before: float) -> tuple[int, int]:
        """Past retention: drop the text of every answer and rating from before ``before``, and the
        answers from before it that nobody rated (ratings and ids stay). Returns (texts dropped,
        answers dropped)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            texts = self.db.execute(
                "UPDATE answers SET prompt = NULL, answer = NULL WHERE at < ? AND prompt IS NOT NULL", (before,)
            ).rowcount
            texts += self.db.execute(
                "UPDATE feedback SET correction = NULL, reason = NULL "
                "WHERE at < ? AND (correction IS NOT NULL OR reason IS NOT NULL)",
                (before,),
            ).rowcount
            unrated = self.db.execute(
                "DELETE FROM answers WHERE at < ? AND request_id NOT IN (SELECT request_id FROM feedback)", (before,)
            ).rowcount
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("VACUUM")  # the freed pages leave the file
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # and the old pages leave the write-ahead log
        return texts, unrated


def new_id() -> str:
    return "fb-" + uuid.uuid4().hex[:20]


def now() -> float:
    return time.time()
