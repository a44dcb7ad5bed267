"""One hash-chained JSON line per request, for the people who must answer "who asked what model, when".

No prompt or completion text: the time, request id, hashed token id, model, version, adapter,
token counts, status code and latency. Each line starts with ``seq`` and ``prev`` (the sha256 of
the line before, see ``enclave/audit.py``), so an edited, deleted or reordered line shows in
`enclave audit verify FILE`. Written to the audit file (mode 0600, appended, one write per line)
and rotated by size without breaking the chain, or, without a file, to the ``enclave.audit``
logger (chained too, from the genesis value at each start).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
from pathlib import Path

from enclave.audit import GENESIS, RESUMED, line_hash, parse_line, rotated

log = logging.getLogger("enclave.audit")

RESERVED = frozenset({"seq", "prev", "time"})
TAIL_BYTES = 1 << 20  # how far back a restart looks for the last good line (lines are ~300 bytes)


class Audit:
    """The audit log of one server; ``record`` is thread-safe.

    Args:
        path: the audit file (FILE); None or empty: lines go to the ``enclave.audit`` logger.
        max_bytes: rotate before a line would make FILE larger than this.
        backups: rotated files kept (FILE.1 ... FILE.backups); older ones are deleted.
    """

    def __init__(self, path: str | None, max_bytes: int = 64 << 20, backups: int = 20) -> None:
        self.path = Path(path).expanduser() if path else None
        self.max_bytes, self.backups = max_bytes, max(1, backups)
        self.lock = threading.Lock()
        self.fd: int | None = None
        self.size = 0
        self.seq, self.head = 0, GENESIS
        self.closed = False
        self._user_key: bytes | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _set_aside_unchained(self.path)
            self._open()

    def pseudonym(self, user: str) -> str:
        """A caller's end-user id as the audit log keeps it: HMAC-SHA256 under this log's own key
        (``FILE.key``, 32 random bytes made at first start, mode 0600; in memory for a log without
        a file), never the id itself. The same user maps to the same value across restarts, and
        without the key a list of employee numbers cannot be tried against it."""
        if self._user_key is None:
            self._user_key = _user_key(self.path)
        return "hmac:" + hmac.new(self._user_key, user.encode(), hashlib.sha256).hexdigest()[:32]

    def record(self, **fields) -> None:
        """Append one line: ``seq``, ``prev`` and ``time``, then ``fields`` (JSON values, never text a user wrote).

        Raises:
            ValueError: if a field is named seq, prev or time, or the log is closed.
            OSError: if the line could not be written; the next call resumes the chain from the file.
        """
        if clash := RESERVED & fields.keys():
            raise ValueError(f"audit fields {sorted(clash)} are set by the audit log itself")
        with self.lock:
            if self.closed:
                raise ValueError("the audit log is closed")
            if self.path is not None and self.fd is None:
                self._open()  # an earlier write failed: resume from what the file holds
            self._append(fields)

    def close(self) -> None:
        """Close the file; later ``record`` calls raise."""
        with self.lock:
            self.closed = True
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None

    def _append(self, fields: dict) -> None:
        now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        line = json.dumps({"seq": self.seq + 1, "prev": self.head, "time": now, **fields}).encode()
        if self.path is None:
            log.info(line.decode())
        else:
            if self.size and self.size + len(line) + 1 > self.max_bytes:
                self._rotate()
            self._write(line + b"\n")
        self.seq, self.head = self.seq + 1, line_hash(line)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError:
            os.close(self.fd)
            self.fd = None
            raise
        self.size += len(data)

    def _open(self) -> None:
        """Open FILE for appending and continue the chain from its last good line (or FILE.1's)."""
        good, trailing, ended = _tail(self.path)
        if good is None:
            good = _tail(self.path.with_name(self.path.name + ".1"))[0]  # FILE is new: the chain went on from FILE.1
        if good is not None:
            self.seq, self.head = good["seq"], good["hash"]
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.size = os.fstat(self.fd).st_size
        if not ended:
            self._write(b"\n")  # the hash covers a line without its newline: adding one changes nothing
        if trailing:
            # A torn write (crash, full disk) or bytes someone appended: never chain over them
            # silently. This line says what was found, and verify reports the unreadable line.
            log.warning(
                "audit log %s ends in %d bytes that are not a complete audit line; resuming after seq %d",
                self.path,
                len(trailing),
                self.seq,
            )
            self._append(
                {
                    "event": RESUMED,
                    "after_seq": self.seq,
                    "unreadable_bytes": len(trailing),
                    "unreadable_sha256": line_hash(trailing.rstrip(b"\n")),
                }
            )

    def _rotate(self) -> None:
        os.close(self.fd)
        self.fd = None
        for n, old in reversed(rotated(self.path)):
            if n >= self.backups:
                old.unlink()
            else:
                old.rename(old.with_name(f"{self.path.name}.{n + 1}"))
        self.path.rename(self.path.with_name(self.path.name + ".1"))
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.size = 0


def _tail(path: Path) -> tuple[dict | None, bytes, bool]:
    """The last chained line of ``path`` (its seq and hash), the bytes after it that are not one, and
    whether the file ends with a newline (or is empty)."""
    try:
        with open(path, "rb") as fh:
            start = max(0, fh.seek(0, os.SEEK_END) - TAIL_BYTES)
            fh.seek(start)
            data = fh.read()
    except FileNotFoundError:
        return None, b"", True
    if start:
        data = data[data.find(b"\n") + 1 :]  # the window starts mid-line: drop the partial line
    good, good_end, offset = None, 0, 0
    for raw in data.split(b"\n"):
        offset += len(raw) + 1
        if (entry := parse_line(raw)) is not None:
            good, good_end = {"seq": entry["seq"], "hash": line_hash(raw)}, min(offset, len(data))
    return good, data[good_end:], data.endswith(b"\n") or not data


def _set_aside_unchained(path: Path) -> None:
    """Move an audit file written before the chain (plain JSON lines, no seq) to FILE.unchained-TIME."""
    try:
        with open(path, "rb") as fh:
            first = fh.readline().rstrip(b"\n")
    except FileNotFoundError:
        return
    try:
        plain = isinstance(json.loads(first), dict) and parse_line(first) is None
    except ValueError:
        plain = False
    if plain:
        aside = path.with_name(f"{path.name}.unchained-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}")
        path.rename(aside)
        log.warning("audit log %s has lines without a hash chain (written before it existed): moved to %s", path, aside)


def _user_key(path: Path | None) -> bytes:
    """The audit log's key for end-user pseudonyms: read from FILE.key, made there (0600) if missing."""
    if path is None:
        return secrets.token_bytes(32)
    key_file = path.with_name(path.name + ".key")
    try:
        return key_file.read_bytes()
    except FileNotFoundError:
        key = secrets.token_bytes(32)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        return key
