"""Generate, GenerateStream, Tokenize, CountTokens, ListModels, health and reflection on a real server."""

from __future__ import annotations

import concurrent.futures as cf
import urllib.request

import grpc
import pytest

from enclave.v1 import inference_pb2 as pb

PROMPTS = [
    "The patient was given",
    "The court granted the motion to dismiss for lack",
    "Blood",
    "Habeas corpus is a writ requiring a person",
    "no acute distress",
    "twice a day",
]


def test_health_reflection_and_models(server, client):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    assert client.health() == "SERVING" and client.health("enclave.v1.Inference") == "SERVING"
    stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    reply = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in reply.list_services_response.service}
    assert {"enclave.v1.Inference", "enclave.v1.Admin", "grpc.health.v1.Health"} <= names
    models = {m.name: m for m in client.models().models}
    assert list(models)[0] == "tiny-onnx"  # the default model first
    assert models["tiny-onnx"].backend == "onnxruntime" and models["tiny-onnx"].kind == "onnx"
    assert models["tiny"].backend == "torch" and models["tiny"].kind == "base_model"
    assert models["tiny"].context_length == 128
    assert [(v.version, v.active) for v in models["tiny"].versions] == [("1", True), ("2", False)]
    assert all(v.digest.startswith("sha256:") for v in models["tiny"].versions)


def test_unary_and_stream_agree_and_backends_agree(client):
    unary = client.generate(PROMPTS[1], max_tokens=12)
    assert unary.finish_reason == pb.FINISH_REASON_LENGTH and len(unary.token_ids) == 12
    assert unary.usage.completion_tokens == 12 and unary.usage.prompt_tokens > 3
    assert unary.model == "tiny-onnx" and unary.model_version == "1" and len(unary.request_id) == 32
    t = unary.timings
    assert 0 <= t.queue_seconds <= t.time_to_first_token_seconds <= t.total_seconds and t.decode_tokens_per_second > 0
    pieces = list(client.stream(PROMPTS[1], max_tokens=12, request_id="abc"))
    assert all(p.request_id == "abc" for p in pieces)
    assert [i for p in pieces for i in p.token_ids] == list(unary.token_ids)
    assert "".join(p.text for p in pieces) == unary.text
    assert pieces[-1].finish_reason == pb.FINISH_REASON_LENGTH and pieces[-1].usage.completion_tokens == 12
    assert all(p.finish_reason == pb.FINISH_REASON_UNSPECIFIED for p in pieces[:-1])
    assert (pieces[-1].model, pieces[-1].model_version, pieces[-1].adapter) == ("tiny-onnx", "1", "")
    assert all(not p.model for p in pieces[:-1])
    # The same weights on PyTorch and on ONNX Runtime give the same greedy tokens.
    torch_reply = client.generate(PROMPTS[1], max_tokens=12, model="tiny")
    assert list(torch_reply.token_ids) == list(unary.token_ids)


@pytest.mark.parametrize("model", ["tiny-onnx", "tiny"])
def test_concurrent_requests_are_batched_and_equal_single_ones(server, client, model):
    single = [list(client.generate(p, max_tokens=16, model=model).token_ids) for p in PROMPTS]
    with cf.ThreadPoolExecutor(len(PROMPTS)) as pool:
        batched = list(pool.map(lambda p: list(client.generate(p, max_tokens=16, model=model).token_ids), PROMPTS))
    assert batched == single
    assert len({tuple(s) for s in single}) == len(PROMPTS)  # the outputs differ, so a mix-up would show
    assert _steps_with_several_rows(server, model) > 0  # they did share decode steps


def test_seeded_sampling_repeats_and_stop_strings_cut(client):
    a = client.generate(PROMPTS[0], max_tokens=20, temperature=0.9, top_p=0.95, top_k=50, seed=7)
    b = client.generate(PROMPTS[0], max_tokens=20, temperature=0.9, top_p=0.95, top_k=50, seed=7)
    c = client.generate(PROMPTS[0], max_tokens=20, temperature=0.9, top_p=0.95, top_k=50, seed=8)
    assert a.token_ids == b.token_ids and a.token_ids != c.token_ids
    greedy = client.generate(PROMPTS[2], max_tokens=24)
    stop = greedy.text[len(greedy.text) // 2 : len(greedy.text) // 2 + 3]
    cut = client.generate(PROMPTS[2], max_tokens=24, stop=(stop,))
    assert cut.finish_reason == pb.FINISH_REASON_STOP_SEQUENCE
    assert cut.text == greedy.text[: greedy.text.index(stop)]
    streamed = "".join(p.text for p in client.stream(PROMPTS[2], max_tokens=24, stop=(stop,)))
    assert streamed == cut.text
    penalised = client.generate(PROMPTS[2], max_tokens=24, repetition_penalty=1.5)
    assert penalised.token_ids != greedy.token_ids


def test_chat_tokenize_and_count_match_transformers(serve_repo, client):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(serve_repo / "models" / "tiny" / "1")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a writ?"}]
    expected = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"
    ]
    assert list(client.tokenize(messages).token_ids) == list(expected)
    counted = client.count_tokens(messages, model="tiny")
    assert counted.count == len(expected) and counted.context_length == 128
    text = client.tokenize("The court granted bail.")
    assert list(text.token_ids) == tok("The court granted bail.")["input_ids"]
    assert "".join(text.tokens).replace("Ġ", " ") == "The court granted bail."
    reply = client.generate(messages, max_tokens=4)
    assert reply.usage.prompt_tokens == len(expected)


def test_context_limit_finish(server, client):
    # 128-token context: a 120-token prompt has room for 8 new tokens.
    prompt = " ".join(["blood"] * 200)
    n = client.count_tokens(prompt).count
    words = prompt.split()[: 200 * 118 // n]
    reply = client.generate(" ".join(words), max_tokens=64)
    assert reply.finish_reason == pb.FINISH_REASON_CONTEXT_LIMIT
    assert reply.usage.prompt_tokens + reply.usage.completion_tokens == 128
    assert 'enclave_request_context_limit_total{adapter="",model="tiny-onnx"} 1.0' in _scrape(server)


def test_metrics_endpoint(server, client):
    client.generate("The patient was given", max_tokens=4)
    text = _scrape(server)
    for name in (
        "enclave_time_to_first_token_seconds_bucket",
        "enclave_inter_token_latency_seconds_bucket",
        "enclave_e2e_request_latency_seconds_bucket",
        "enclave_request_queue_time_seconds_bucket",
        "enclave_prompt_tokens_total",
        "enclave_generation_tokens_total",
        "enclave_num_requests_running",
        "enclave_num_requests_waiting",
        "enclave_slot_usage_ratio",
        "enclave_model_load_seconds",
        "enclave_request_prompt_tokens_bucket",
        "enclave_request_generation_tokens_bucket",
        "process_resident_memory_bytes",
    ):
        assert name in text, name
    assert 'enclave_requests_total{adapter="",api="grpc",code="OK",finished_reason="stop",model="tiny-onnx"}' in text
    assert 'enclave_model_info{backend="onnxruntime",digest="sha256:' in text
    assert 'le="0.005"' in text  # explicit buckets
    assert "patient" not in text


def _scrape(server) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()


def _steps_with_several_rows(server, model: str) -> float:
    """Decode steps with more than one row: count(le=+Inf) - count(le=1) of enclave_batch_size."""
    lines = [
        line
        for line in _scrape(server).splitlines()
        if line.startswith("enclave_batch_size_bucket{") and f'model="{model}"' in line
    ]
    one = next(float(x.rsplit(" ", 1)[1]) for x in lines if 'le="1.0"' in x)
    inf = next(float(x.rsplit(" ", 1)[1]) for x in lines if 'le="+Inf"' in x)
    return inf - one


def test_unknown_names_are_not_found_and_list_what_exists(client):
    with pytest.raises(grpc.RpcError) as e:
        client.generate("hi", model="nope")
    assert (
        e.value.code() == grpc.StatusCode.NOT_FOUND and "tiny-onnx" in e.value.details() and "tiny" in e.value.details()
    )
    with pytest.raises(grpc.RpcError) as e:
        client.generate("hi", model="tiny", version="9")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "1, 2" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        client.generate("hi", model="tiny", adapter="nope")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "adapter" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        client.generate("hi", model="tiny", version="2")
    assert (
        e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "enclave serve activate tiny 2" in e.value.details()
    )


@pytest.mark.parametrize("model", ["tiny-onnx", "tiny"])
def test_logprobs_are_the_models_own_and_stream_like_unary(serve_repo, client, model):
    """Greedy: each token is the likeliest, with the log-softmax of the model's own logits; the
    stream carries the same entries as the unary answer, one per token id."""
    import numpy as np

    from enclave.repository import Repository
    from serve.backends.ort import Backend
    from serve.tokenizer import ServeTokenizer

    reply = client.generate(PROMPTS[0], model=model, max_tokens=6, min_tokens=6, logprobs=3)
    assert len(reply.logprobs) == len(reply.token_ids) == 6
    for token_id, lp in zip(reply.token_ids, reply.logprobs):
        assert lp.token_id == token_id and [a.token_id for a in lp.top][0] == token_id and len(lp.top) == 3
        assert (
            lp.logprob == pytest.approx(lp.top[0].logprob)
            and lp.top[0].logprob >= lp.top[1].logprob >= lp.top[2].logprob
        )
        assert lp.token and lp.logprob <= 0
    path = Repository(serve_repo).active("tiny-onnx").path
    logits = Backend(path, threads=1).prefill(ServeTokenizer(path).encode(PROMPTS[0]), None)[0].astype(np.float64)
    expected = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
    assert reply.logprobs[0].logprob == pytest.approx(expected[reply.token_ids[0]], abs=1e-3)
    pieces = list(client.stream(PROMPTS[0], model=model, max_tokens=6, min_tokens=6, logprobs=3))
    streamed = [lp for p in pieces for lp in p.logprobs]
    assert [(lp.token_id, round(lp.logprob, 4)) for lp in streamed] == [
        (lp.token_id, round(lp.logprob, 4)) for lp in reply.logprobs
    ]
    assert not client.generate(PROMPTS[0], model=model, max_tokens=3).logprobs  # off unless asked


def test_logprobs_over_20_are_refused(client):
    from tests.serve.conftest import status_of

    code, details = status_of(lambda: client.generate("hi", logprobs=21))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("sampling.logprobs")


def test_stop_token_ids_end_the_output_before_the_token(client):
    tokens = list(client.generate(PROMPTS[1], max_tokens=8, min_tokens=8).token_ids)
    k = next(i for i in range(1, 8) if tokens[i] not in tokens[:i])
    reply = client.generate(PROMPTS[1], max_tokens=8, stop_token_ids=(tokens[k],))
    assert list(reply.token_ids) == tokens[:k] and reply.finish_reason == pb.FINISH_REASON_STOP


EXTRACTION = {
    "type": "object",
    "properties": {
        "urgent": {"type": "boolean"},
        "dose_mg": {"type": "integer", "minimum": 0, "maximum": 1000},
        "route": {"enum": ["oral", "iv", "im"]},
        "note": {"type": "string", "maxLength": 12},
    },
    "required": ["urgent", "dose_mg", "route", "note"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("model", ["tiny-onnx", "tiny"])
def test_json_schema_answers_parse_and_validate(client, model):
    """A random tiny model, constrained: every answer is JSON that the schema accepts, sampled or greedy."""
    import json

    import jsonschema

    fmt = pb.ResponseFormat(type="json_schema", json_schema=json.dumps(EXTRACTION))
    for i, prompt in enumerate(PROMPTS):
        request = client.request(prompt, model=model, max_tokens=96, temperature=(0.0, 1.0)[i % 2], seed=i)
        request.sampling.response_format.CopyFrom(fmt)
        reply = client.inference.Generate(request, metadata=client.metadata, timeout=60)
        assert reply.finish_reason == pb.FINISH_REASON_STOP, reply.text
        jsonschema.validate(json.loads(reply.text), EXTRACTION)
    # Any object: a random model may not close it within max_tokens, but what it writes is an object's start
    request = client.request(PROMPTS[0], model=model, max_tokens=24)
    request.sampling.response_format.CopyFrom(pb.ResponseFormat(type="json_object"))
    reply = client.inference.Generate(request, metadata=client.metadata)
    assert reply.text.startswith("{")
    if reply.finish_reason == pb.FINISH_REASON_STOP:
        assert isinstance(json.loads(reply.text), dict)


def test_schemas_the_engine_cannot_use_are_refused_naming_the_keyword(client):
    from tests.serve.conftest import status_of

    for fmt, words in (
        (pb.ResponseFormat(type="json_schema", json_schema='{"type": "strnig"}'), "strnig"),
        (pb.ResponseFormat(type="json_schema", json_schema="{not json"), "not JSON"),
        (pb.ResponseFormat(type="yaml"), "sampling.response_format.type"),
    ):
        request = client.request("hi", max_tokens=4)
        request.sampling.response_format.CopyFrom(fmt)
        code, details = status_of(lambda r=request: client.inference.Generate(r, metadata=client.metadata))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("sampling.response_format")
        assert words in details


def test_a_complete_grammar_ends_the_answer_before_min_tokens(client):
    import json

    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    request = client.request(PROMPTS[0], max_tokens=40, min_tokens=40)
    request.sampling.response_format.CopyFrom(pb.ResponseFormat(type="json_schema", json_schema=json.dumps(schema)))
    reply = client.inference.Generate(request, metadata=client.metadata)
    assert reply.finish_reason == pb.FINISH_REASON_STOP and json.loads(reply.text) in ({"ok": True}, {"ok": False})
