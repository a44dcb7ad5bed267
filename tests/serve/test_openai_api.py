"""The OpenAI-compatible HTTP API, driven by the real `openai` SDK against a real server: answers
equal gRPC's, streams with usage, several choices, model ids with adapters, and OpenAI's errors
with the status its clients act on."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.serve.conftest import admin_tokens, running, serve_config

openai = pytest.importorskip("openai")

ASK = [{"role": "user", "content": "Name a fact about the sky."}]


@pytest.fixture(scope="module")
def server(serve_repo, tmp_path_factory):
    from serve.auth import add_token

    path, token = admin_tokens(tmp_path_factory.mktemp("tokens"))
    only_tiny = add_token(path, "only-tiny", "reader", models=["tiny"])
    cfg = serve_config(
        serve_repo,
        http_port=0,
        auth__tokens_file=str(path),
        adapters={"tiny-onnx": ["facts"]},
        limits__max_new_tokens=128,
        limits__default_new_tokens=32,
        limits__max_message_bytes=64 * 1024,
    )
    with running(cfg) as s:
        s.token, s.only_tiny = token, only_tiny
        yield s


def sdk(server, token: str | None = None):
    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{server.http_port}/v1", api_key=token or server.token, max_retries=0, timeout=60
    )


def grpc_text(server, prompt, **kwargs) -> str:
    from enclave.grpc_client import Client

    with Client(f"127.0.0.1:{server.port}", timeout=60, token=server.token) as c:
        return c.generate(prompt, **kwargs).text


def test_chat_answer_equals_grpc_and_counts_usage(server):
    answer = sdk(server).chat.completions.create(model="tiny-onnx", messages=ASK, max_tokens=12, temperature=0)
    choice = answer.choices[0]
    assert answer.object == "chat.completion" and answer.model == "tiny-onnx" and answer.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    expected = grpc_text(server, ASK, model="tiny-onnx", max_tokens=12, temperature=0.0)
    assert choice.message.content == expected
    assert answer.usage.completion_tokens > 0 and answer.usage.total_tokens == (
        answer.usage.prompt_tokens + answer.usage.completion_tokens
    )


def test_text_completion_and_an_adapter_as_its_own_model(server):
    client = sdk(server)
    base = client.completions.create(model="tiny-onnx", prompt="The sky is", max_tokens=10, temperature=0)
    tuned = client.completions.create(model="facts", prompt="The sky is", max_tokens=10, temperature=0)
    assert base.object == "text_completion" and tuned.model == "facts"
    assert base.choices[0].text == grpc_text(server, "The sky is", model="tiny-onnx", max_tokens=10)
    assert tuned.choices[0].text == grpc_text(server, "The sky is", model="tiny-onnx", adapter="facts", max_tokens=10)


def test_stream_gives_the_same_text_then_usage(server):
    client = sdk(server)
    whole = client.chat.completions.create(model="tiny-onnx", messages=ASK, max_tokens=16, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model="tiny-onnx",
            messages=ASK,
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert not chunks[-1].choices and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_several_choices_with_a_seed(server):
    answer = sdk(server).chat.completions.create(
        model="tiny-onnx", messages=ASK, max_tokens=8, temperature=1.0, n=2, seed=7
    )
    assert [c.index for c in answer.choices] == [0, 1]
    again = sdk(server).chat.completions.create(
        model="tiny-onnx", messages=ASK, max_tokens=8, temperature=1.0, n=2, seed=7
    )
    assert [c.message.content for c in again.choices] == [c.message.content for c in answer.choices]
    assert answer.usage.completion_tokens >= 2  # both choices counted, the prompt once


def test_models_lists_models_and_adapters(server):
    ids = {m.id: m for m in sdk(server).models.list().data}
    assert {"tiny", "tiny-onnx", "facts"} <= set(ids)
    assert ids["facts"].model_extra["parent"] == "tiny-onnx"


def test_errors_have_openai_shape_and_status(server):
    client = sdk(server)
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=ASK)
    assert e.value.body["param"] == "model" and "tiny-onnx" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny-onnx", messages=ASK, temperature="hot")
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:  # a per-request limit: not retried as 429 would be
        client.chat.completions.create(model="tiny-onnx", messages=ASK, max_tokens=10_000)
    assert e.value.body["param"] == "max_tokens" or "max_tokens" in e.value.body["message"]
    with pytest.raises(openai.AuthenticationError):
        sdk(server, token="not-a-token").chat.completions.create(model="tiny-onnx", messages=ASK)
    with pytest.raises(openai.AuthenticationError) as e:  # no token: not even which models exist
        sdk(server, token="not-a-token").chat.completions.create(model="nope", messages=ASK)
    assert "tiny-onnx" not in e.value.body["message"]
    with pytest.raises(openai.PermissionDeniedError):
        sdk(server, token=server.only_tiny).chat.completions.create(model="tiny-onnx", messages=ASK)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny-onnx", messages=[{"role": "tool", "content": "x"}])
    assert e.value.body["param"] == "messages[0].role"


def test_unknown_fields_are_ignored_and_oversized_bodies_refused(server):
    url = f"http://127.0.0.1:{server.http_port}/v1/chat/completions"

    def post(body: bytes) -> tuple[int, dict]:
        request = urllib.request.Request(
            url, body, {"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    status, answer = post(
        json.dumps({"model": "tiny-onnx", "messages": ASK, "max_tokens": 4, "some_new_field": {"x": 1}}).encode()
    )
    assert status == 200 and answer["choices"][0]["message"]["role"] == "assistant"
    status, answer = post(json.dumps({"model": "tiny-onnx", "messages": ASK, "pad": "x" * 70_000}).encode())
    assert status == 400 and "limits.max_message_bytes" in answer["error"]["message"]
    status, answer = post(b"{not json")
    assert status == 400 and answer["error"]["type"] == "invalid_request_error"


def test_http_calls_are_counted_and_audited_like_grpc(server):
    from prometheus_client import generate_latest

    def count() -> float:
        prefix = 'enclave_requests_total{adapter="",api="http",code="OK",finished_reason="length",model="tiny-onnx"}'
        for line in generate_latest(server.metrics.registry).decode().splitlines():
            if line.startswith(prefix):
                return float(line.split()[-1])
        return 0.0

    before = count()
    sdk(server).completions.create(model="tiny-onnx", prompt="Hello", max_tokens=3, extra_body={"min_tokens": 3})
    assert count() == before + 1

    def refused() -> float:
        prefix = (
            'enclave_requests_total{adapter="",api="http",code="INVALID_ARGUMENT",finished_reason="",model="tiny-onnx"}'
        )
        lines = generate_latest(server.metrics.registry).decode().splitlines()
        return next((float(x.split()[-1]) for x in lines if x.startswith(prefix)), 0.0)

    before = refused()
    with pytest.raises(openai.BadRequestError):  # refused while translating the body: counted too
        sdk(server).chat.completions.create(model="tiny-onnx", messages=[{"role": "tool", "content": "x"}])
    assert refused() == before + 1


def test_https_with_the_servers_certificate_and_rotation(serve_repo, tmp_path):
    """The HTTP listener speaks TLS with the gRPC port's files and takes rotated ones without a restart."""
    import shutil
    import ssl
    import time

    from serve.certs import create_certificates

    old = create_certificates(tmp_path / "old", ["localhost"])
    new = create_certificates(tmp_path / "new", ["localhost"])
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(old.cert, live / "server.pem")
    shutil.copy(old.key, live / "server.key")
    cfg = serve_config(serve_repo, http_port=0, tls__cert=str(live / "server.pem"), tls__key=str(live / "server.key"))
    with running(cfg) as server:
        url = f"https://localhost:{server.http_port}/v1/models"

        def models(ca) -> list[str]:
            context = ssl.create_default_context(cafile=str(ca))
            with urllib.request.urlopen(url, context=context, timeout=10) as r:
                return [m["id"] for m in json.load(r)["data"]]

        assert "tiny-onnx" in models(old.ca)
        with pytest.raises(OSError):  # plain HTTP to the TLS port: the connection is closed
            urllib.request.urlopen(url.replace("https", "http"), timeout=10)
        shutil.copy(new.key, live / "server.key")
        shutil.copy(new.cert, live / "server.pem")
        deadline = time.monotonic() + 10
        while True:
            try:
                assert "tiny-onnx" in models(new.ca)
                break
            except urllib.error.URLError:
                assert time.monotonic() < deadline, "the rotated certificate was not taken"
                time.sleep(0.2)
        with pytest.raises(urllib.error.URLError):
            models(old.ca)


def test_logprobs_in_openai_shape_match_grpc(server):
    from enclave.grpc_client import Client

    client = sdk(server)
    answer = client.chat.completions.create(
        model="tiny-onnx", messages=ASK, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2
    )
    content = answer.choices[0].logprobs.content
    with Client(f"127.0.0.1:{server.port}", timeout=60, token=server.token) as c:
        expected = c.generate(ASK, model="tiny-onnx", max_tokens=5, temperature=0.0, logprobs=2).logprobs
    assert [round(e.logprob, 4) for e in content] == [round(e.logprob, 4) for e in expected]
    assert all(len(e.top_logprobs) == 2 and e.top_logprobs[0].token == e.token for e in content)
    text = answer.choices[0].message.content
    assert bytes(b for e in content for b in e.bytes).decode(errors="replace") == text  # exact, split characters too
    streamed = [
        e
        for chunk in client.chat.completions.create(
            model="tiny-onnx", messages=ASK, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2, stream=True
        )
        if chunk.choices and chunk.choices[0].logprobs
        for e in chunk.choices[0].logprobs.content
    ]
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [(e.token, round(e.logprob, 4)) for e in content]
    text = client.completions.create(model="tiny-onnx", prompt="The sky is", max_tokens=4, temperature=0, logprobs=1)
    lp = text.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4 and lp.text_offset[0] == 0
    assert (
        answer.choices[0].logprobs is not None
        and client.chat.completions.create(model="tiny-onnx", messages=ASK, max_tokens=2).choices[0].logprobs is None
    )
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny-onnx", messages=ASK, max_tokens=2, top_logprobs=3)
    assert e.value.body["param"] == "top_logprobs"


def test_stop_token_ids_as_vllm_names_them(server):
    from enclave.grpc_client import Client

    with Client(f"127.0.0.1:{server.port}", timeout=60, token=server.token) as c:
        tokens = list(c.generate("The sky is", model="tiny-onnx", max_tokens=8, min_tokens=8).token_ids)
        k = next(i for i in range(1, 8) if tokens[i] not in tokens[:i])
        expected = c.generate("The sky is", model="tiny-onnx", max_tokens=k).text
    answer = sdk(server).completions.create(
        model="tiny-onnx", prompt="The sky is", max_tokens=8, temperature=0, extra_body={"stop_token_ids": [tokens[k]]}
    )
    assert answer.choices[0].text == expected and answer.choices[0].finish_reason == "stop"
    assert answer.usage.completion_tokens == k


def test_json_schema_response_format(server):
    import jsonschema

    from tests.serve.test_generate import EXTRACTION

    client = sdk(server)
    fmt = {"type": "json_schema", "json_schema": {"name": "order", "schema": EXTRACTION, "strict": True}}
    for temperature in (0.0, 1.0):
        answer = client.chat.completions.create(
            model="tiny-onnx", messages=ASK, max_tokens=128, temperature=temperature, seed=3, response_format=fmt
        )
        assert answer.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(answer.choices[0].message.content), EXTRACTION)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="tiny-onnx",
            messages=ASK,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strnig"}}},
        )
    assert e.value.body["param"] == "response_format.json_schema" and "strnig" in e.value.body["message"]


def test_echo_puts_the_prompt_before_the_completion(server):
    client = sdk(server)
    plain = client.completions.create(model="tiny-onnx", prompt="The sky is", max_tokens=5, temperature=0)
    echoed = client.completions.create(model="tiny-onnx", prompt="The sky is", max_tokens=5, temperature=0, echo=True)
    assert echoed.choices[0].text == "The sky is" + plain.choices[0].text
    streamed = client.completions.create(
        model="tiny-onnx", prompt="The sky is", max_tokens=5, temperature=0, echo=True, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == echoed.choices[0].text
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny-onnx", prompt="x", max_tokens=2, echo=True, logprobs=1)
    assert e.value.body["param"] == "echo"


@pytest.mark.parametrize("n", [1, 2])
def test_a_client_gone_mid_stream_cancels_its_calls(server, n):
    """The connection closes after the first chunk: the calls end as CANCELLED at once and free
    their slots (one choice is read directly, several through a task each)."""
    import http.client
    import time

    from prometheus_client import generate_latest

    def cancelled() -> float:
        prefix = 'enclave_requests_total{adapter="",api="http",code="CANCELLED"'
        lines = generate_latest(server.metrics.registry).decode().splitlines()
        return sum(float(x.split()[-1]) for x in lines if x.startswith(prefix))

    before = cancelled()
    body = {"model": "tiny-onnx", "messages": ASK, "max_tokens": 128, "min_tokens": 128, "stream": True, "n": n}
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    conn.request(
        "POST",
        "/v1/chat/completions",
        json.dumps(body),
        {"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"},
    )
    response = conn.getresponse()
    assert response.status == 200 and response.readline().startswith(b"data: ")
    conn.sock.close()  # the client goes away mid-answer
    conn.close()
    deadline = time.monotonic() + 10
    while cancelled() < before + n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cancelled() == before + n
    engine = server.models.active["tiny-onnx"].engine
    while engine.load() and time.monotonic() < deadline:  # the engine drops the rows at its next step
        time.sleep(0.05)
    assert engine.load() == 0
