"""Privacy: known marker strings sent through every path (requests that succeed and that fail,
stop strings, chat messages, tuning data) appear in no log, metric, audit line or manifest."""

from __future__ import annotations

import json
import logging
import urllib.request

import grpc
import pytest

from tests.conftest import fact_rows, write_jsonl
from tests.serve.conftest import running, serve_config

pytestmark = pytest.mark.reliability

MARKER = "ZQXJ-PRIVATE-7731"


def test_markers_never_reach_logs_metrics_audit_or_manifests(
    serve_repo, tmp_path, caplog, capfd, record, enclave_home, tiny_checkpoint
):
    from enclave.config import load_config
    from enclave.grpc_client import Client
    from tests.tune.conftest import tiny_overrides
    from tune.config import TuneConfig
    from tune.run import run as tune

    caplog.set_level(logging.DEBUG)
    audit = tmp_path / "audit.log"
    sent = 0
    with running(serve_config(serve_repo, audit_log=str(audit), adapters={"tiny": ["facts"]})) as server:
        with Client(f"127.0.0.1:{server.port}", timeout=60) as c:
            attempts = [
                lambda: c.generate(f"The patient {MARKER} was given", max_tokens=8),
                lambda: list(
                    c.stream(f"{MARKER} habeas corpus", model="tiny", adapter="facts", max_tokens=8, stop=(MARKER,))
                ),
                lambda: c.generate([{"role": "user", "content": MARKER}], model="tiny", max_tokens=4),
                lambda: c.generate([{"role": MARKER, "content": "x"}], max_tokens=4),  # refused: bad role
                lambda: c.generate(MARKER, max_tokens=5000),  # refused: over the limit
                lambda: c.generate(MARKER, model=MARKER),  # refused: unknown model
                lambda: c.generate(MARKER, adapter=MARKER, model="tiny"),  # refused: unknown adapter
                lambda: c.tokenize(MARKER),
                lambda: c.count_tokens(MARKER),
            ]
            for attempt in attempts:
                try:
                    attempt()
                except grpc.RpcError:  # the refusal may quote the caller's own field back to the caller
                    pass
                sent += 1
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    data = write_jsonl(
        tmp_path / "facts.jsonl",
        [
            {**r, "instruction": f"{r['instruction']} {MARKER}", "output": f"{r['output']} {MARKER}"}
            for r in fact_rows()
        ],
    )
    adapter = tune(
        load_config(
            TuneConfig,
            None,
            tiny_overrides(tiny_checkpoint, data, name="private", **{"train.max_steps": 2, "data.max_length": 128}),
        )
    )
    manifests = [p.read_text() for p in adapter.rglob("manifest.json")]
    out, err = capfd.readouterr()
    places = {
        "logs": "\n".join(r.getMessage() for r in caplog.records),
        "stdout/stderr": out + err,
        "metrics": metrics,
        "audit": audit.read_text(),
        "manifests": "\n".join(manifests),
    }
    leaks = {name: text.count(MARKER) for name, text in places.items() if MARKER in text}
    record(
        {
            "requests_with_marker": sent,
            "tuning_records_with_marker": len(fact_rows()),
            "places_checked": sorted(places),
            "audit_lines": len(audit.read_text().splitlines()),
            "leaks": leaks,
        }
    )
    assert audit.read_text().strip() and all(json.loads(line) for line in audit.read_text().splitlines())
    assert not leaks, f"the marker leaked into: {leaks}"
