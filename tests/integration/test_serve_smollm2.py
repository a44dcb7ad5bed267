"""The server on SmolLM2: the int4 ONNX artifact (onnxruntime), the base with a tuned adapter
(torch), a vLLM directory in .venv-vllm (vllm backend), and a Node.js client built from the
.proto alone."""

from __future__ import annotations

import concurrent.futures as cf
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from enclave.grpc_client import Client
from enclave.v1 import inference_pb2 as pb
from tests.conftest import VLLM_PYTHON
from tests.integration.conftest import NAME, cli, export_onnx
from tests.serve.conftest import admin_tokens, running, serve_config

pytestmark = pytest.mark.slow
QUESTIONS = [
    "What does BID mean on a chart?",
    "Explain briefly what 'habeas corpus' means in law.",
    "What is a tort?",
    "What does PRN mean?",
]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def repo(store, tuned_adapter, int4_onnx, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("serve-smollm2") / "repo"
    cli(store, "serve", "add", str(int4_onnx), "--repo", str(repo), "--name", "smollm2-int4", "--version", "1")
    cli(store, "serve", "add", str(store / "models" / NAME), "--repo", str(repo), "--name", "smollm2", "--version", "1")
    cli(store, "serve", "add-adapter", str(tuned_adapter[0]), "--repo", str(repo))
    return repo


@pytest.fixture(scope="module")
def server(repo):
    cfg = serve_config(repo, default_model="smollm2-int4", threads=None, adapters={"smollm2": ["integration"]})
    with running(cfg) as s:
        yield s


def test_int4_onnx_and_base_with_adapter(server, repo, store, monkeypatch):
    with Client(f"127.0.0.1:{server.port}") as c:
        models = {m.name: m for m in c.models().models}
        assert models["smollm2-int4"].backend == "onnxruntime" and models["smollm2-int4"].context_length == 8192
        assert [a.name for a in models["smollm2"].adapters] == ["integration"]
        reply = c.generate(QUESTIONS[0], chat=True, max_tokens=64)
        assert reply.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH) and reply.text.strip()
        assert reply.usage.prompt_tokens > 20 and reply.timings.decode_tokens_per_second > 0
        assert "".join(p.text for p in c.stream(QUESTIONS[0], chat=True, max_tokens=64)) == reply.text
        # fp32 on torch: answers in one batch equal answers alone, with and without the adapter.
        jobs = [(q, a) for q in QUESTIONS for a in ("", "integration")]
        single = [c.generate(q, chat=True, model="smollm2", adapter=a, max_tokens=24).text for q, a in jobs]
        with cf.ThreadPoolExecutor(len(jobs)) as pool:
            batched = list(
                pool.map(lambda j: c.generate(j[0], chat=True, model="smollm2", adapter=j[1], max_tokens=24).text, jobs)
            )
        assert batched == single
        assert single[0] != single[1]  # the adapter changes the answer
    # The same adapter through transformers + PEFT (`enclave generate`) gives the same answer.
    monkeypatch.setenv("ENCLAVE_HOME", str(store))
    from enclave.hf.generate import GenerateConfig, generate
    from enclave.hf.loader import load
    from enclave.store import resolve_model

    lm, tok = load(resolve_model(NAME), str(repo / "adapters" / "integration"))
    assert generate(lm, tok, QUESTIONS[0], GenerateConfig(max_new_tokens=24)).text == single[1]


@pytest.mark.skipif(shutil.which("npm") is None, reason="needs node and npm")
def test_node_client_from_the_proto_alone(server, tmp_path):
    src = ROOT / "deploy" / "clients" / "node"
    for name in ("package.json", "package-lock.json", "generate.js"):
        shutil.copy(src / name, tmp_path / name)
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=tmp_path, check=True, capture_output=True)
    env = {
        **os.environ,
        "ENCLAVE_TARGET": f"127.0.0.1:{server.port}",
        "ENCLAVE_PROTO": str(ROOT / "proto/enclave/v1/inference.proto"),
    }
    proc = subprocess.run(
        ["node", "generate.js", QUESTIONS[1]], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "stream matches" in proc.stdout and "smollm2-int4 v1" in proc.stderr and "FINISH_REASON_" in proc.stderr


@pytest.mark.skipif(not VLLM_PYTHON, reason="vLLM's environment is not built (make vllm-env)")
def test_vllm_backend_with_adapters(store, tuned_adapter, tmp_path):
    out = tmp_path / "vllm"
    cli(
        store,
        "compress",
        "export",
        "--model",
        NAME,
        "--format",
        "vllm",
        "--adapters",
        str(tuned_adapter[0]),
        "--out",
        str(out),
    )
    repo = tmp_path / "repo"
    cli(store, "serve", "add", str(out), "--repo", str(repo), "--name", "smollm2-vllm", "--version", "1")
    cli(store, "serve", "add-adapter", str(tuned_adapter[0]), "--repo", str(repo))
    tokens, admin = admin_tokens(tmp_path)  # the Admin rpcs below need an admin token
    proc = subprocess.Popen(
        [
            VLLM_PYTHON,
            "-m",
            "enclave",
            "serve",
            "--repo",
            str(repo),
            "--port",
            "0",
            "--metrics-port",
            "0",
            "vllm_memory_share=0.2",
            f"auth.tokens_file={tokens}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        line = proc.stdout.readline()  # after vLLM has loaded (a minute or two on 2 cores)
        assert "listening on" in line, proc.stderr.read()[-3000:]
        port = int(line.split(",")[0].rsplit(":", 1)[1])
        with Client(f"127.0.0.1:{port}", token=admin) as c:
            info = c.models().models[0]
            assert info.backend == "vllm" and [a.name for a in info.adapters] == ["integration"]
            base = c.generate(QUESTIONS[0], chat=True, max_tokens=24)
            tuned = c.generate(QUESTIONS[0], chat=True, max_tokens=24, adapter="integration")
            assert base.text.strip() and tuned.text.strip() and base.token_ids != tuned.token_ids
            assert (
                "".join(p.text for p in c.stream(QUESTIONS[0], chat=True, max_tokens=24, adapter="integration"))
                == tuned.text
            )
            with cf.ThreadPoolExecutor(
                4
            ) as pool:  # vLLM batches these (bf16 on CPU: batch-exact answers are not promised)
                again = list(
                    pool.map(
                        lambda a: c.generate(QUESTIONS[0], chat=True, max_tokens=24, adapter=a), ["", "integration"] * 2
                    )
                )
            assert all(
                r.text.strip() and r.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH) for r in again
            )
            assert [r.adapter for r in again] == ["", "integration"] * 2
            c.unload_adapter("integration")
            c.load_adapter("integration")  # from the repository this time, hash-verified
            assert c.generate(QUESTIONS[0], chat=True, max_tokens=24, adapter="integration").text == tuned.text
            _vllm_structured_output_and_logprobs(c)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0
    finally:
        proc.kill()


def _vllm_structured_output_and_logprobs(c: Client) -> None:
    """#19 on the vllm backend: JSON-schema answers through vLLM's structured outputs, sharing the
    batch with free ones, all valid; log-probabilities from vLLM's sampler in the proto's shape."""
    import json

    import jsonschema

    def extract(item):
        schema, text = item
        system = {"role": "system", "content": "Extract the fields of the text as JSON."}
        request = c.request([system, {"role": "user", "content": text}], max_tokens=160)
        request.sampling.response_format.CopyFrom(pb.ResponseFormat(type="json_schema", json_schema=json.dumps(schema)))
        return c.inference.Generate(request, timeout=300, metadata=c.metadata)

    with cf.ThreadPoolExecutor(4) as pool:
        free = pool.submit(c.generate, QUESTIONS[1], chat=True, max_tokens=48)
        answers = list(pool.map(extract, EXTRACTIONS[:3]))
        assert free.result().text.strip()
    for (schema, text), reply in zip(EXTRACTIONS[:3], answers):
        assert reply.finish_reason == pb.FINISH_REASON_STOP, (text, reply.text)
        jsonschema.validate(json.loads(reply.text), schema)
    reply = c.generate(QUESTIONS[0], chat=True, max_tokens=8, logprobs=3)
    assert [lp.token_id for lp in reply.logprobs] == list(reply.token_ids)
    for lp in reply.logprobs:
        values = [alt.logprob for alt in lp.top]
        assert len(values) == 3 and values == sorted(values, reverse=True) and values[0] <= 0.0
        assert lp.top[0].token_id == lp.token_id and lp.logprob == values[0]  # greedy: the likeliest
    sampled = c.generate(QUESTIONS[0], chat=True, max_tokens=8, logprobs=0, temperature=0.8, seed=1)
    assert all(not lp.top and -9999.0 <= lp.logprob <= 0.0 for lp in sampled.logprobs)


def test_adapter_unmerged_on_onnxruntime_equals_peft(store, tuned_adapter, tmp_path, monkeypatch):
    """The tuned adapter on an fp32 ONNX export of SmolLM2, unmerged, chosen per request, answers
    exactly as transformers + PEFT do, alone and in a batch mixing the base and the adapter."""
    export_onnx(store, "fp32", tmp_path / "onnx")
    repo = tmp_path / "repo"
    cli(store, "serve", "add", str(tmp_path / "onnx"), "--repo", str(repo), "--name", "smollm2-fp32", "--version", "1")
    cli(store, "serve", "add-adapter", str(tuned_adapter[0]), "--repo", str(repo))
    cfg = serve_config(repo, default_model="smollm2-fp32", threads=None, adapters={"smollm2-fp32": ["integration"]})
    jobs = [(q, a) for q in QUESTIONS for a in ("", "integration")]
    with running(cfg) as s, Client(f"127.0.0.1:{s.port}") as c:
        models = {m.name: m for m in c.models().models}
        assert models["smollm2-fp32"].backend == "onnxruntime"
        assert [a.name for a in models["smollm2-fp32"].adapters] == ["integration"]
        single = [c.generate(q, chat=True, adapter=a, max_tokens=32).text for q, a in jobs]
        with cf.ThreadPoolExecutor(len(jobs)) as pool:
            batched = list(pool.map(lambda j: c.generate(j[0], chat=True, adapter=j[1], max_tokens=32).text, jobs))
    assert batched == single
    monkeypatch.setenv("ENCLAVE_HOME", str(store))
    from enclave.hf.generate import GenerateConfig, generate
    from enclave.hf.loader import load
    from enclave.store import resolve_model

    base, tok = load(resolve_model(NAME))
    tuned, _ = load(resolve_model(NAME), str(repo / "adapters" / "integration"))
    for (q, a), got in zip(jobs, single):
        lm = tuned if a else base
        assert got == generate(lm, tok, q, GenerateConfig(max_new_tokens=32)).text, (q, a)
    assert single[0] != single[1]  # the adapter changes the answer


MEDICATION = {
    "type": "object",
    "additionalProperties": False,
    "required": ["drug", "dose_mg", "route", "as_needed"],
    "properties": {
        "drug": {"type": "string", "maxLength": 40},
        "dose_mg": {"type": "number", "minimum": 0, "maximum": 5000},
        "route": {"enum": ["oral", "intravenous", "intramuscular", "subcutaneous", "topical"]},
        "as_needed": {"type": "boolean"},
    },
}
DISCHARGE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["age", "diagnosis", "disposition", "stable"],
    "properties": {
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "diagnosis": {"type": "string", "maxLength": 60},
        "disposition": {"enum": ["home", "rehabilitation", "nursing facility", "transferred", "deceased"]},
        "stable": {"type": "boolean"},
    },
}
CLAUSE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["clause_type", "obliged_party", "mutual"],
    "properties": {
        "clause_type": {"enum": ["indemnity", "limitation of liability", "termination", "confidentiality", "payment"]},
        "obliged_party": {"type": "string", "maxLength": 40},
        "mutual": {"type": "boolean"},
        "notice_days": {"type": "integer", "minimum": 0, "maximum": 3650},
    },
}
EXTRACTIONS = [
    (MEDICATION, "Chart note: metoprolol 25 mg PO BID for hypertension."),
    (MEDICATION, "Chart note: morphine 2 mg IV q4h PRN for severe pain."),
    (MEDICATION, "Chart note: amoxicillin 500 mg PO TID for 7 days."),
    (
        DISCHARGE,
        "67-year-old admitted with community-acquired pneumonia, treated with ceftriaxone, discharged home, stable.",
    ),
    (CLAUSE, "The Supplier shall indemnify the Customer against all losses arising from a breach of this Agreement."),
    (CLAUSE, "Either party may terminate this Agreement on 30 days' written notice."),
    (CLAUSE, "The Recipient shall keep all Confidential Information secret for five years."),
    (CLAUSE, "The Customer shall pay each invoice within 45 days of its date."),
]


def test_json_schema_extractions_are_all_valid(server):
    """#19's bar on SmolLM2: every clinical and legal extraction parses and validates against its schema."""
    import json

    import jsonschema

    with Client(f"127.0.0.1:{server.port}") as c:
        for schema, text in EXTRACTIONS:
            request = c.request(
                [
                    {"role": "system", "content": "Extract the fields of the text as JSON."},
                    {"role": "user", "content": text},
                ],
                model="smollm2-int4",
                max_tokens=160,
            )
            request.sampling.response_format.CopyFrom(
                pb.ResponseFormat(type="json_schema", json_schema=json.dumps(schema))
            )
            reply = c.inference.Generate(request, timeout=300)
            assert reply.finish_reason == pb.FINISH_REASON_STOP, (text, reply.text)
            jsonschema.validate(json.loads(reply.text), schema)
