"""The reliability suite: a bounded profile in CI (`pytest -m reliability`, part of `make test`)
and the full one with `make soak` (ENCLAVE_SOAK=1). Each test writes its figures to
reliability-results/NAME.json for RELIABILITY.md (`python -m tests.reliability.report`)."""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path

import pytest

from tests.bench.workload import memory_mb

SOAK = os.environ.get("ENCLAVE_SOAK") == "1"
RESULTS = Path(os.environ.get("ENCLAVE_RELIABILITY_RESULTS", "reliability-results"))


def profile(bounded, soak):
    """The bounded figure in CI, the full one under `make soak`."""
    return soak if SOAK else bounded


def rss_mb() -> float:
    return memory_mb()["rss_mb"]


@pytest.fixture()
def record(request):
    """Write this test's figures (a dict) to reliability-results/<test name>.json."""

    def write(figures: dict) -> None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        name = request.node.name.removeprefix("test_")
        out = {"date": date.today().isoformat(), "profile": "soak" if SOAK else "bounded", **figures}
        tmp = RESULTS / f".{name}.json.tmp"
        tmp.write_text(json.dumps(out, indent=2))
        tmp.replace(RESULTS / f"{name}.json")

    return write


def gauge(text: str, name: str, model: str) -> float:
    """One labelled gauge's value from a /metrics scrape."""
    prefix = f'{name}{{model="{model}"}} '
    return float(next(line for line in text.splitlines() if line.startswith(prefix)).rsplit(" ", 1)[1])
