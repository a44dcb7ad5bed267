"""Logging for every Enclave process: readable by default, one JSON object a line on request.

Privacy rule: prompt and completion text is never passed to a logger, by any stage. Log
counts, sizes, timings and hashes instead.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys

_STD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        """One record as a JSON line: UTC time, level, logger, message, ``extra=`` fields and any exception."""
        payload = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        payload.update({k: v for k, v in vars(record).items() if k not in _STD_ATTRS})
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def setup_logging(fmt: str = "text", debug: bool = False) -> None:
    """Configure the root logger once per process.

    Args:
        fmt: ``text`` (readable) or ``json`` (one object per line, for log shippers).
        debug: log at DEBUG instead of INFO.
    """
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for noisy in NOISY:
        quiet(noisy)


NOISY = (
    "urllib3",
    "filelock",
    "httpx",
    "httpcore",
    "huggingface_hub",
    "transformers",
    "accelerate",
    "absl",
    "matplotlib",
    "optuna",
    "peft",
    "logbar",
    "gptqmodel",
    "tokenicer",
)


def quiet(name: str) -> None:
    """Keep a library's logger to warnings unless the root logger is at DEBUG.

    Call it again after importing a library that sets its own level on import (GPTQModel's LogBar).
    """
    logging.getLogger(name).setLevel(logging.DEBUG if logging.getLogger().level <= logging.DEBUG else logging.WARNING)
