"""One JSON line per request, for the people who must answer "who asked what model, when".

No prompt or completion text: the time, request id, hashed token id, model, version, adapter,
token counts, status code and latency. Written to the audit file (appended, flushed per line)
or, without one, to the ``enclave.audit`` logger.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from pathlib import Path

log = logging.getLogger("enclave.audit")


class Audit:
    def __init__(self, path: str | None) -> None:
        self.lock = threading.Lock()
        self.fh = None
        if path:
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self.fh = open(Path(path).expanduser(), "a", encoding="utf-8")  # noqa: SIM115 (open for the server's life)

    def record(self, **fields) -> None:
        line = json.dumps({"time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"), **fields})
        if self.fh is None:
            log.info(line)
            return
        with self.lock:
            self.fh.write(line + "\n")
            self.fh.flush()

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
