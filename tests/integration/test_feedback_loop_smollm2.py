"""#20's loop on SmolLM2: serve the tuned adapter (int4 ONNX base) as version 1 with a feedback
store, two reviewers correct three wrong answers, export, tune version 2 from version 1 with
rehearsal, gate it (pass: the old test split's exact match drops at most 2 points), a 50% canary,
promote; the corrected questions are then answered right. Bad input on the way: a feedback for an
unknown id is NOT_FOUND, one from a reader's token PERMISSION_DENIED."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import pytest

from enclave.evaluation.metrics import exact_match
from enclave.grpc_client import Client
from enclave.manifest import read_manifest
from tests.integration.test_serve_smollm2 import _cli
from tests.integration.test_serve_smollm2 import repo as repo  # noqa: F401 (the int4 export, as a fixture)
from tests.serve.conftest import running, serve_config, status_of

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
MODEL = "smollm2-int4"


def _test_questions() -> list[tuple[str, str]]:
    from enclave.records import load_records
    from enclave.splits import assign_split, normalized

    records = [normalized(r) for r in load_records("builtin:clinical_legal")]
    return [(r.messages[0]["content"], r.answer) for r in records if assign_split(r) == "test"]


def test_reviewers_corrections_become_the_next_adapter(store, quick_adapter, repo, tmp_path):
    from serve.auth import add_token

    adapter = quick_adapter[0]
    loop = tmp_path / "repo"
    _cli(store, "serve", "add", str(repo.parent / "onnx"), "--repo", str(loop), "--name", MODEL, "--version", "1")
    _cli(store, "serve", "add-adapter", str(adapter), "--version", "1", "--repo", str(loop))
    _cli(store, "feedback", "keygen", str(tmp_path / "feedback.key"))
    tokens = tmp_path / "tokens.yaml"
    made = {
        "ward": add_token(tokens, "ward", "reader"),
        "pharmacist": add_token(tokens, "dr-a", "reviewer", title="pharmacist"),
        "associate": add_token(tokens, "ms-b", "reviewer", title="senior associate"),
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
    (tmp_path / "serve.yaml").write_text(json.dumps(cfg.model_dump(mode="json")))
    with running(cfg) as server:
        target = f"127.0.0.1:{server.port}"
        with Client(target, token=made["ward"], timeout=120) as ward:

            def ask(question: str, request_id: str):
                return ward.generate(question, chat=True, adapter="integration", max_tokens=24, request_id=request_id)

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
                    assert reviewer.feedback(reply.request_id, good=False, correction=reference).text_kept
            with Client(target, token=made["pharmacist"]) as reviewer:
                assert status_of(lambda: reviewer.feedback("nope", good=False))[0] == grpc.StatusCode.NOT_FOUND
            code = status_of(lambda: ward.feedback(wrong[0][2].request_id, good=True))[0]
            assert code == grpc.StatusCode.PERMISSION_DENIED

            corrections = tmp_path / "corrections.jsonl"
            config = str(tmp_path / "serve.yaml")
            _cli(store, "feedback", "export", "--config", config, "--model", MODEL, "--out", str(corrections))
            candidate = tmp_path / "integration-2"
            _cli(
                store,
                "tune",
                "--config",
                str(ROOT / "tune/recipes/clinical_legal_feedback.yaml"),
                "name=integration",
                f"init_adapter={adapter}",
                f"data.path={corrections}",
                "rehearsal.share=0.2",
                "eval.max_examples=48",
                f"output={candidate}",
                "--restart",
            )
            continual = read_manifest(candidate).metrics["continual"]
            assert continual["frozen_left_out"] == 3  # the corrected questions are not scored as unseen
            gate = _cli(
                store,
                "tune",
                "gate",
                str(candidate),
                "--against",
                str(adapter),
                "--data",
                str(corrections),
                "--max-examples",
                "48",
            )
            assert "verdict: PASS" in " ".join(gate.stdout.split())
            verdict = read_manifest(candidate).metrics["gate"]
            frozen = verdict["sets"][0]
            before, after = frozen["active"]["metrics"]["exact_match"], frozen["candidate"]["metrics"]["exact_match"]
            assert after >= before - 2.0, (before, after)

            _cli(store, "serve", "add-adapter", str(candidate), "--version", "2", "--repo", str(loop))
            _cli(store, "serve", "canary", "integration", "--version", "2", "--share", "0.5", "--repo", str(loop))
            deadline = time.monotonic() + 30
            while "integration" not in server.models.active[MODEL].releases or (
                server.models.active[MODEL].releases["integration"].canary != "2"
            ):
                assert time.monotonic() < deadline, "the server did not follow the canary"
                time.sleep(0.2)
            seen = {ask(wrong[0][0], f"canary-{i}").adapter for i in range(16)}
            assert seen == {"integration@1", "integration@2"}
            _cli(store, "serve", "promote", "integration", "--repo", str(loop))
            while server.models.active[MODEL].releases["integration"].active != "2":
                assert time.monotonic() < deadline + 30, "the server did not follow the promotion"
                time.sleep(0.2)
            for question, reference, _before in wrong:
                after_reply = ask(question, f"after-{question[:24]}")
                assert after_reply.adapter == "integration@2"
                assert exact_match(after_reply.text, reference), (question, after_reply.text, reference)
