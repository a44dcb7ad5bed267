"""#20's loop on SmolLM2, as `make demo-feedback` runs it: serve the tuned adapter (on the int4 ONNX
base) as version 1 with a text-keeping feedback store; two reviewers correct three wrong answers;
export; tune version 2 from version 1 with rehearsal (tune/recipes/clinical_legal_feedback.yaml);
gate it (pass: the old test split's exact match drops at most 2 points, no group gap widens past
5); a 50% canary; promote; the corrected questions are then answered right. Bad input on the way:
a feedback for an unknown id is NOT_FOUND, one from a reader's token PERMISSION_DENIED."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import pytest

from enclave.evaluation.metrics import exact_match
from enclave.grpc_client import Client
from enclave.manifest import read_manifest
from tests.integration.conftest import cli
from tests.serve.conftest import running, serve_config, status_of

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
MODEL = "smollm2-int4"


def _test_questions() -> list[tuple[str, str]]:
    from enclave.records import load_records
    from enclave.splits import assign_split, normalized

    records = [normalized(r) for r in load_records("builtin:clinical_legal")]
    return [(r.messages[0]["content"], r.answer) for r in records if assign_split(r) == "test"]


def _wait_for(server, adapter: str, what: str, version: str) -> None:
    """Until the running server follows a release change (it reads the repository every watch_seconds)."""
    deadline = time.monotonic() + 30
    while getattr(server.models.active[MODEL].releases.get(adapter), what, None) != version:
        assert time.monotonic() < deadline, f"the server did not follow {what} = {version}"
        time.sleep(0.2)


def test_reviewers_corrections_become_the_next_adapter(store, tuned_adapter, int4_onnx, tmp_path):
    from serve.auth import add_token

    adapter = tuned_adapter[0]
    loop = tmp_path / "repo"
    cli(store, "serve", "add", str(int4_onnx), "--repo", str(loop), "--name", MODEL, "--version", "1")
    cli(store, "serve", "add-adapter", str(adapter), "--version", "1", "--repo", str(loop))
    cli(store, "feedback", "keygen", str(tmp_path / "feedback.key"))
    tokens = tmp_path / "tokens.yaml"
    made = {
        "ward": add_token(tokens, "ward", "reader"),
        "pharmacist": add_token(tokens, "dr-okafor", "reviewer", title="pharmacist"),
        "associate": add_token(tokens, "ms-lindqvist", "reviewer", title="senior associate"),
    }
    cfg = serve_config(
        loop,
        default_model=MODEL,
        threads=None,
        watch_seconds=0.5,
        adapters={MODEL: ["integration"]},
        auth__tokens_file=str(tokens),
        feedback__store=str(tmp_path / "feedback.db"),
        feedback__capture_text=[MODEL],
        feedback__key_file=str(tmp_path / "feedback.key"),
    )
    config = tmp_path / "serve.yaml"
    config.write_text(json.dumps(cfg.model_dump(mode="json")))
    with running(cfg) as server:
        target = f"127.0.0.1:{server.port}"
        with Client(target, token=made["ward"], timeout=120) as ward:

            def ask(question: str, request_id: str):
                return ward.generate(question, chat=True, adapter="integration", max_tokens=24, request_id=request_id)

            # The ward asks the test split's questions until three answers are wrong.
            wrong = []
            for i, (question, reference) in enumerate(_test_questions()):
                reply = ask(question, f"ward-{i}")
                if not exact_match(reply.text, reference):
                    wrong.append((question, reference, reply))
                if len(wrong) == 3:
                    break
            assert len(wrong) == 3 and {r.adapter for _, _, r in wrong} == {"integration@1"}
            for k, (_question, reference, reply) in enumerate(wrong):
                with Client(target, token=made["pharmacist" if k < 2 else "associate"]) as reviewer:
                    got = reviewer.feedback(reply.request_id, good=False, correction=reference)
                assert got.text_kept and got.adapter == "integration@1"
            with Client(target, token=made["pharmacist"]) as reviewer:
                assert status_of(lambda: reviewer.feedback("nope", good=False))[0] == grpc.StatusCode.NOT_FOUND
            code = status_of(lambda: ward.feedback(wrong[0][2].request_id, good=True))[0]
            assert code == grpc.StatusCode.PERMISSION_DENIED

            # Export: each correction as a chat record and a preference record; titles, no names.
            corrections = tmp_path / "corrections.jsonl"
            cli(store, "feedback", "export", "--config", str(config), "--model", MODEL, "--out", str(corrections))
            exported = corrections.read_text()
            rows = [json.loads(line) for line in exported.splitlines()]
            assert sorted("messages" in r for r in rows) == [False] * 3 + [True] * 3
            assert sorted({r["reviewer"] for r in rows}) == ["pharmacist", "senior associate"]
            assert "okafor" not in exported and "lindqvist" not in exported
            cli(store, "tune", "check-data", str(corrections))

            # Version 2 from version 1, with half its training split replayed; then the gate.
            candidate = tmp_path / "integration-2"
            tuned = cli(
                store,
                "tune",
                "--config",
                str(ROOT / "tune/recipes/clinical_legal_feedback.yaml"),
                "name=integration",
                f"init_adapter={adapter}",
                f"data.path={corrections}",
                f"output={candidate}",
                "--restart",
            )
            assert "UserWarning" not in tuned.stderr, tuned.stderr[-2000:]  # no library chatter reaches the user
            continual = read_manifest(candidate).metrics["continual"]
            assert continual["frozen_left_out"] == 3  # the corrected questions are not scored as unseen
            gate = cli(store, "tune", "gate", str(candidate), "--against", str(adapter), "--data", str(corrections))
            assert "verdict: PASS" in " ".join(gate.stdout.split()), gate.stdout
            verdict = read_manifest(candidate).metrics["gate"]
            frozen = verdict["sets"][0]
            before, after = frozen["active"]["metrics"]["exact_match"], frozen["candidate"]["metrics"]["exact_match"]
            assert frozen["records"] > 150 and after >= before - 2.0, gate.stdout  # the whole frozen split
            assert before > 80, gate.stdout  # a trained adapter: forgetting is there to be seen

            # A 50% canary: both versions answer; then version 2 is promoted.
            cli(store, "serve", "add-adapter", str(candidate), "--version", "2", "--repo", str(loop))
            cli(store, "serve", "canary", "integration", "--version", "2", "--share", "0.5", "--repo", str(loop))
            _wait_for(server, "integration", "canary", "2")
            seen = [ask(wrong[0][0], f"canary-{i}").adapter for i in range(16)]
            assert set(seen) == {"integration@1", "integration@2"}, seen
            cli(store, "serve", "promote", "integration", "--repo", str(loop))
            _wait_for(server, "integration", "active", "2")
            for question, reference, _before in wrong:
                after_reply = ask(question, f"after-{question[:24]}")
                assert after_reply.adapter == "integration@2"
                assert exact_match(after_reply.text, reference), (question, after_reply.text, reference)
