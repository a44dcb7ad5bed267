"""The server's side of feedback: remember each answered call, and take reviewers' ratings.

Every answered call of a server with ``feedback.store`` becomes one row (request id, model,
version, adapter; the prompt and answer too, sealed, for models with ``feedback.capture_text``).
A rating names that row by request id; the Review rpc and POST /v1/feedback both land in
``Capture.rate``. Store writes run on one thread of their own, in order; a failed write is
logged and counted (``enclave_feedback_errors_total``) and never fails the caller's answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from serve.config import FeedbackSettings
from serve.errors import DataLoss, FailedPrecondition, InvalidArgument, NotFound
from serve.feedback.crypto import Sealer, read_key
from serve.feedback.store import Answer, Rating, Store, new_id, now, verdict_of

log = logging.getLogger("enclave.serve.feedback")
MAX_CORRECTION = 16384
MAX_REASON = 2048


@dataclass(frozen=True)
class Given:
    """A rating as a reviewer sent it (either API), checked."""

    request_id: str
    good: bool | None
    score: int | None
    correction: str
    reason: str


def given(request_id: str, good: bool | None, score: int | None, correction: str, reason: str, names) -> Given:
    """Check a rating's fields; ``names`` maps each field to how the API spells it, for errors."""
    if not request_id or len(request_id) > 160:
        raise InvalidArgument(f"{names['request_id']}: give the answer's request id (1 to 160 characters)")
    if good is None and score is None:
        raise InvalidArgument(f"{names['rating']}: missing; rate the answer good or bad, or score it 1 to 5")
    if score is not None and not 1 <= score <= 5:
        raise InvalidArgument(f"{names['score']}: {score} is not a score; scores go from 1 (wrong) to 5 (right)")
    for field, text, most in (("correction", correction, MAX_CORRECTION), ("reason", reason, MAX_REASON)):
        if len(text) > most:
            raise InvalidArgument(f"{names[field]}: {len(text)} characters; at most {most}")
    return Given(request_id, good, score, correction, reason)


class Capture:
    """The feedback store as the server uses it (None store: feedback is off)."""

    def __init__(self, settings: FeedbackSettings, metrics, audit) -> None:
        self.settings, self.metrics, self.audit = settings, metrics, audit
        self.store = Store(Path(settings.store)) if settings.store else None
        self.sealer = Sealer(read_key(Path(settings.key_file))) if settings.capture_text else None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="feedback")

    def captures(self, model: str) -> bool:
        return self.store is not None and self.settings.captures(model)

    def remember(self, call, prompt: list[dict] | str | None, answer: str | None) -> None:
        """Record an answered call (from the event loop; written on the store's thread)."""
        if self.store is None:
            return
        served, rid = call.served, call.request_id
        sealed = (
            (
                self.sealer.seal(json.dumps(prompt), f"answers/{rid}/prompt"),
                self.sealer.seal(answer, f"answers/{rid}/answer"),
            )
            if self.sealer is not None and prompt is not None and answer is not None
            else (None, None)
        )
        row = Answer(rid, now(), served.name, served.version.version, call.job.adapter or "", *sealed)
        self.pool.submit(self._write, self.store.remember, row)

    def _write(self, fn, *args):
        try:
            return fn(*args)
        except Exception as exc:  # the store failed: say so (log, metric); the answers go on
            log.error("feedback store %s: %s", self.settings.store, exc)
            self.metrics.feedback_errors.inc()
            raise DataLoss(
                f"the feedback store could not be written ({exc}); the operator has been alerted "
                "(enclave_feedback_errors_total)"
            ) from None

    async def rate(self, caller, rating: Given) -> tuple[Answer, str, bool]:
        """Record a reviewer's rating of an answer; returns the answer's row, the feedback id and
        whether the correction and reason were kept.

        Raises:
            FailedPrecondition: feedback is off on this server.
            NotFound: no answer with that request id.
            PermissionDenied: the reviewer may not use the answer's model.
            DataLoss: the store could not be read or written.
        """
        if self.store is None:
            raise FailedPrecondition(
                "feedback is off on this server: the operator sets feedback.store in the serve config"
            )
        loop = asyncio.get_running_loop()
        answer = await loop.run_in_executor(self.pool, self._write, self.store.answer, rating.request_id)
        if answer is None:
            raise NotFound(
                f"request_id: no answer {rating.request_id!r} in this server's feedback store (it keeps the "
                f"answers given since feedback.store was set, for {self.settings.retention_days:g} days unrated)"
            )
        caller.check_model(answer.model)
        keep = self.sealer is not None and self.settings.captures(answer.model)
        fid = new_id()
        row = Rating(
            fid,
            answer.request_id,
            now(),
            caller.id,
            caller.title or "reviewer",
            verdict_of(rating.good, rating.score),
            rating.score,
            self.sealer.seal(rating.correction, f"feedback/{fid}/correction") if keep and rating.correction else None,
            self.sealer.seal(rating.reason, f"feedback/{fid}/reason") if keep and rating.reason else None,
        )
        await loop.run_in_executor(self.pool, self._write, self.store.rate, row)
        self.metrics.feedback.labels(answer.model, answer.adapter, row.verdict).inc()
        self.audit.record(
            feedback=fid,
            request_id=answer.request_id,
            token=caller.id,
            model=answer.model,
            version=answer.version,
            adapter=answer.adapter,
            verdict=row.verdict,
            corrected=bool(rating.correction),
        )
        return answer, fid, keep

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        if self.store is not None:
            self.store.close()
