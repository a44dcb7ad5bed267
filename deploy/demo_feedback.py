"""`make demo-feedback`: the expert feedback loop on the real model, after `make demo`.

1. Serve SmolLM2 (the demo's ONNX int4 base) with the demo's adapter as version 1 of
   `clinical-legal`, with a feedback store that keeps text (sealed under a key made here).
2. Ask the test split's questions until three answers are wrong; two reviewers (a pharmacist and a
   senior associate) correct them. A feedback for an unknown id and one from a reader's token are
   refused (NOT_FOUND, PERMISSION_DENIED).
3. Export the corrections, check them (check-data, with its PHI check), tune version 2 from the
   served adapter on them with rehearsal (tune/recipes/clinical_legal_feedback.yaml), and gate it
   against version 1.
4. Add version 2, send it 50% of the requests (canary), promote it, and ask the corrected
   questions again.

Usage: python deploy/demo_feedback.py   (after `make demo`; $ENCLAVE_HOME as there)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # no connection chatter from gRPC's C core
import grpc  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STORE = Path(os.environ.get("ENCLAVE_HOME") or Path.home() / ".cache" / "enclave")
ADAPTER = STORE / "adapters" / "clinical-legal"
BASE = STORE / "artifacts" / "smollm2-onnx-int4"
WORK = STORE / "feedback-demo"
MODEL = "smollm2-int4"


def enclave(*args: str, quiet: bool = False) -> str:
    """Run the CLI (its progress and logs on stderr, as they come); its answer (stdout) is returned
    and shown unless ``quiet``."""
    done = subprocess.run([str(BIN / "enclave"), *args], stdout=subprocess.PIPE, text=True)
    if done.returncode not in (0, 1) or (done.returncode == 1 and args[:2] != ("tune", "gate")):
        sys.exit(f"`enclave {' '.join(args)}` failed (exit {done.returncode}); its error is above")
    if not quiet:
        print(done.stdout.rstrip())
    return done.stdout


def step(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


def start_server(config: Path) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [str(BIN / "enclave"), "serve", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    if "listening on" not in line:
        sys.exit(f"the server did not start:\n{proc.stderr.read()[-3000:]}")
    return proc, int(line.split(",")[0].rsplit(":", 1)[1])


def test_questions() -> list[tuple[str, str]]:
    """The demo data's test split: (question, reference answer)."""
    from enclave.records import load_records
    from enclave.splits import assign_split, normalized

    records = [normalized(r) for r in load_records("builtin:clinical_legal")]
    return [(r.messages[0]["content"], r.answer) for r in records if assign_split(r) == "test"]


def main() -> int:
    from enclave.evaluation.metrics import exact_match
    from enclave.grpc_client import Client

    for needed, how in ((ADAPTER, "make demo"), (BASE, "make demo (step 4b)")):
        if not (needed / "manifest.json").is_file():
            sys.exit(f"{needed} is missing: run `{how}` first")
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    repo, tokens = WORK / "repo", WORK / "tokens.yaml"

    step("1. Serve the int4 base with the tuned adapter as version 1, a feedback store that keeps text")
    enclave("serve", "add", str(BASE), "--repo", str(repo), "--name", MODEL, "--version", "1")
    enclave("serve", "add-adapter", str(ADAPTER), "--version", "1", "--repo", str(repo))
    enclave("feedback", "keygen", str(WORK / "feedback.key"))
    made = {}
    for name, role, title in (
        ("ward-app", "reader", None),
        ("dr-okafor", "reviewer", "pharmacist"),
        ("ms-lindqvist", "reviewer", "senior associate"),
    ):
        extra = ["--title", title] if title else []
        token = enclave(
            "serve", "token", "create", "--name", name, "--role", role, "--tokens-file", str(tokens), *extra, quiet=True
        )
        made[name] = token.strip().splitlines()[-1]
    config = WORK / "serve.yaml"
    config.write_text(
        json.dumps(
            {
                "repo": str(repo),
                "port": 0,
                "metrics_port": None,
                "watch_seconds": 1,
                "adapters": {MODEL: ["clinical-legal"]},
                "audit_log": str(WORK / "audit.jsonl"),
                "auth": {"tokens_file": str(tokens)},
                "feedback": {
                    "store": str(WORK / "feedback.db"),
                    "capture_text": [MODEL],
                    "key_file": str(WORK / "feedback.key"),
                },
            }
        )
    )
    server, port = start_server(config)
    target = f"127.0.0.1:{port}"
    try:
        with Client(target, token=made["ward-app"], timeout=120) as ward:

            def ask(question: str, request_id: str):
                return ward.generate(
                    question, chat=True, model=MODEL, adapter="clinical-legal", max_tokens=32, request_id=request_id
                )

            step("2. The ward asks; three answers are wrong; two reviewers correct them")
            wrong = []
            for i, (question, reference) in enumerate(test_questions()):
                reply = ask(question, f"ward-{i}")
                if not exact_match(reply.text, reference):
                    wrong.append((question, reference, reply))
                    print(f"  Q: {question}\n     {reply.adapter}: {reply.text.strip()!r} (right: {reference!r})")
                if len(wrong) == 3:
                    break
            for k, (_question, reference, reply) in enumerate(wrong):
                reviewer = "dr-okafor" if k < 2 else "ms-lindqvist"
                with Client(target, token=made[reviewer]) as r:
                    got = r.feedback(reply.request_id, good=False, correction=reference, reason="the reference answer")
                print(f"  {reviewer} corrected {reply.request_id}: {got.model} v{got.model_version} {got.adapter}")
            with Client(target, token=made["dr-okafor"]) as r:
                try:
                    r.feedback("no-such-answer", good=False)
                except grpc.RpcError as exc:
                    print(f"  a feedback for an unknown request id: {exc.code().name}")
            try:
                ward.feedback(wrong[0][2].request_id, good=True)
            except grpc.RpcError as exc:
                print(f"  a feedback from the ward's reader token: {exc.code().name}")

            step("3. Export the corrections, check them, tune version 2 from version 1 with rehearsal, gate it")
            corrections = WORK / "corrections.jsonl"
            enclave("feedback", "export", "--config", str(config), "--model", MODEL, "--out", str(corrections))
            enclave("tune", "check-data", str(corrections))
            candidate = WORK / "clinical-legal-2"
            enclave(
                "tune",
                "--config",
                str(ROOT / "tune/recipes/clinical_legal_feedback.yaml"),
                f"init_adapter={ADAPTER}",
                f"data.path={corrections}",
                f"output={candidate}",
                "overwrite=true",
                "--restart",
            )
            gate = enclave("tune", "gate", str(candidate), "--against", str(ADAPTER), "--data", str(corrections))
            if "verdict: PASS" not in " ".join(gate.split()):
                print("the gate failed: version 2 is not released")
                return 1

            step("4. Version 2: a 50% canary, then promoted; the corrected questions again")
            enclave("serve", "add-adapter", str(candidate), "--version", "2", "--repo", str(repo))
            enclave("serve", "canary", "clinical-legal", "--version", "2", "--share", "0.5", "--repo", str(repo))
            time.sleep(3)  # the server follows within watch_seconds
            served = [ask(wrong[0][0], f"canary-{i}").adapter for i in range(10)]
            print(f"  10 requests during the canary: {served.count('clinical-legal@2')} answered by version 2")
            enclave("serve", "promote", "clinical-legal", "--repo", str(repo))
            time.sleep(3)
            right = 0
            for question, reference, before in wrong:
                after = ask(question, f"after-{question[:20]}")
                right += int(exact_match(after.text, reference))
                print(f"  Q: {question}\n     before ({before.adapter}): {before.text.strip()!r}")
                print(f"     after  ({after.adapter}): {after.text.strip()!r}")
            print(f"  {right} of {len(wrong)} corrected questions are now answered right")
            return 0 if right == len(wrong) else 1
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)


if __name__ == "__main__":
    sys.exit(main())
