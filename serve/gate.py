"""Admission: who is calling, how many calls each caller has open, and whether the server takes calls.

Callers are keyed by their token (its hash id), or, on a server without a tokens file, by the
peer's address, so one client cannot use up everyone's share. The tokens file is read again when
it changes or on SIGHUP; a file that no longer validates is logged and the previous one kept.
Refused calls from callers without a valid token are audited at a bounded rate: a flood of bad
calls cannot flood the audit log.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from pathlib import Path

from enclave.errors import EnclaveError
from serve.auth import Caller, Tokens, anonymous
from serve.config import ServeConfig
from serve.errors import ResourceExhausted, Unavailable

log = logging.getLogger("enclave.serve")


def file_stamp(path: str | Path | None) -> tuple | None:
    """What changes when a file is replaced or rewritten (inode, size, mtime), or None if it is missing."""
    if not path:
        return None
    try:
        st = os.stat(Path(path).expanduser())
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class RateLimit:
    """A token bucket: ``allow()`` is true at most ``rate`` times a second on average, ``burst`` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.level, self.last = float(burst), time.monotonic()
        self.dropped = 0
        self.lock = threading.Lock()

    def allow(self) -> tuple[bool, int]:
        """(allowed, how many were dropped since the last allowed one)."""
        with self.lock:
            now = time.monotonic()
            self.level = min(self.burst, self.level + (now - self.last) * self.rate)
            self.last = now
            if self.level < 1:
                self.dropped += 1
                return False, 0
            self.level -= 1
            dropped, self.dropped = self.dropped, 0
            return True, dropped


class Gate:
    """Who may call, how many calls each caller has open, and whether the server takes calls."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.path = cfg.auth.tokens_file
        self.stamp = file_stamp(self.path)
        self.tokens = Tokens(self.path) if self.path else None
        self.max_streams = cfg.limits.max_streams_per_token
        self.open: collections.Counter[str] = collections.Counter()
        self.refusals = RateLimit(rate=10.0, burst=50)
        self.accepting = False  # until the models are warm, and again while draining

    def caller(self, context) -> Caller:
        """The caller of a call: from its bearer token, or its peer address on a server without tokens."""
        if not self.accepting:
            raise Unavailable("the server is starting or shutting down; retry shortly (health: NOT_SERVING)")
        if self.tokens is None:
            return anonymous(context.peer() or "")
        return self.tokens.caller(context.invocation_metadata())

    @staticmethod
    def key(caller: Caller) -> str:
        return caller.id if caller.authenticated else caller.name

    def enter(self, caller: Caller) -> None:
        """Count one more open call for the caller, or RESOURCE_EXHAUSTED at limits.max_streams_per_token."""
        key = self.key(caller)
        if self.open[key] >= self.max_streams:
            who = "token" if caller.authenticated else "client address"
            raise ResourceExhausted(
                f"this {who} has {self.open[key]} calls open, the limit (limits.max_streams_per_token)", retry_ms=1000
            )
        self.open[key] += 1

    def leave(self, caller: Caller) -> None:
        key = self.key(caller)
        self.open[key] -= 1
        if self.open[key] <= 0:
            del self.open[key]  # no entry per address that ever called

    def audit_refusal(self, audit, authenticated: bool, **fields) -> None:
        """Audit a refused call.

        From a caller without a valid token, at most ~10 lines a second (the rest are counted).
        """
        if authenticated:
            audit.record(**fields)
            return
        allowed, dropped = self.refusals.allow()
        if allowed:
            audit.record(**fields, **({"suppressed_before": dropped} if dropped else {}))

    def reload(self, force: bool = False) -> bool:
        """Read the tokens file again if it changed (or ``force``); keep the old one if the new one is invalid."""
        if not self.path:
            return False
        stamp = file_stamp(self.path)
        if not force and stamp == self.stamp:
            return False
        self.stamp = stamp
        try:
            tokens = Tokens(self.path, allow_empty=True)  # every token revoked: nobody may call
        except EnclaveError as exc:
            log.error(
                "auth.tokens_file %s changed but is not valid, still using the previous tokens: %s", self.path, exc
            )
            return False
        self.tokens = tokens  # one assignment: a call sees the old or the new table, never a mix
        log.info("auth.tokens_file reloaded: %d tokens", len(tokens.entries))
        return True
