"""Bad input: every invalid field is INVALID_ARGUMENT naming it, a request over a per-request limit
is INVALID_ARGUMENT or OUT_OF_RANGE (not RESOURCE_EXHAUSTED, which clients retry), and the server
keeps serving."""

from __future__ import annotations

import grpc
import pytest

from enclave.v1 import inference_pb2 as pb
from tests.serve.conftest import running, serve_config
from tests.serve.conftest import status_of as _code


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": -1.0}, "sampling.temperature"),
        ({"temperature": float("nan")}, "sampling.temperature"),
        ({"top_p": 0.0}, "sampling.top_p"),
        ({"top_p": 1.5}, "sampling.top_p"),
        ({"repetition_penalty": 0.0}, "sampling.repetition_penalty"),
        ({"stop": ("",)}, "sampling.stop[0]"),
        ({"stop": ("x" * 300,)}, "sampling.stop[0]"),
        ({"stop": tuple("abcdefghijklmnopq")}, "sampling.stop"),
        ({"request_id": "r" * 129}, "request_id"),
        ({"max_tokens": 4, "min_tokens": 5}, "sampling.min_tokens"),
        ({"presence_penalty": 2.5}, "sampling.presence_penalty"),
        ({"frequency_penalty": float("nan")}, "sampling.frequency_penalty"),
        ({"min_p": 1.5}, "sampling.min_p"),
    ],
)
def test_invalid_fields_are_named(client, kwargs, field):
    code, details = _code(lambda: client.generate("hello", **kwargs))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(field)
    code, _ = _code(lambda: list(client.stream("hello", **kwargs)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_invalid_inputs(client):
    stub = client.inference
    assert _code(lambda: stub.Generate(pb.GenerateRequest(), metadata=client.metadata))[1].startswith("input")
    assert _code(lambda: stub.Generate(pb.GenerateRequest(prompt=""), metadata=client.metadata))[1].startswith(
        "prompt: empty"
    )
    code, details = _code(lambda: stub.Generate(pb.GenerateRequest(chat=pb.Chat()), metadata=client.metadata))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("chat.messages")
    code, details = _code(lambda: client.generate([{"role": "robot", "content": "x"}]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("chat.messages[0].role")
    code, details = _code(lambda: client.tokenize(""))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("text: empty")
    code, details = _code(lambda: client.generate(" ".join(["blood"] * 400)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("prompt") and "context of 128" in details
    assert client.health() == "SERVING"


def test_extreme_sampling_values_are_served(client):
    for kwargs in (
        {"temperature": 1e-30},
        {"temperature": 100.0, "top_k": 100000},
        {"repetition_penalty": 1e30},
        {"seed": 2**64 - 1, "temperature": 1.0},
        {"top_p": 1e-9, "temperature": 1.0},
        {"presence_penalty": -2.0, "frequency_penalty": 2.0, "min_p": 1.0, "temperature": 1.0},
    ):
        reply = client.generate("The court", max_tokens=3, **kwargs)
        assert reply.usage.completion_tokens == 3 or reply.finish_reason == pb.FINISH_REASON_STOP


def test_limits(serve_repo):
    from enclave.grpc_client import Client

    cfg = serve_config(
        serve_repo,
        limits__max_new_tokens=8,
        limits__default_new_tokens=5,
        limits__max_prompt_tokens=10,
        limits__max_message_bytes=2048,
    )
    with running(cfg) as server, Client(f"127.0.0.1:{server.port}") as client:
        code, details = _code(lambda: client.generate("hi", max_tokens=9))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("sampling.max_tokens") and "8" in details
        code, details = _code(
            lambda: client.generate("The court granted the motion to dismiss for lack of jurisdiction.")
        )
        assert (
            code == grpc.StatusCode.OUT_OF_RANGE
            and details.startswith("prompt")
            and "limits.max_prompt_tokens" in details
        )
        code, _ = _code(lambda: client.generate("x" * 4096))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED  # over max_message_bytes: grpc refuses it
        reply = client.generate("hi")  # max_tokens 0: limits.default_new_tokens
        assert reply.usage.completion_tokens == 5 and reply.finish_reason == pb.FINISH_REASON_LENGTH


def test_default_new_tokens_over_the_limit_is_a_config_error(serve_repo):
    from enclave.errors import ConfigError

    with pytest.raises(ConfigError, match="default_new_tokens"):
        from enclave.config import load_config
        from serve.config import ServeConfig

        load_config(ServeConfig, None, [f"repo={serve_repo}", "limits.max_new_tokens=8"])


def test_a_bug_is_internal_and_the_server_keeps_serving(serve_repo, monkeypatch, caplog):
    from enclave.grpc_client import Client
    from serve.backends import ort

    step, broken = ort.OrtBatch.step, {"on": True}

    def failing(self, tokens):
        if broken["on"]:
            broken["on"] = False
            raise RuntimeError("a bug in a backend")
        return step(self, tokens)

    monkeypatch.setattr(ort.OrtBatch, "step", failing)
    with running(serve_config(serve_repo)) as server, Client(f"127.0.0.1:{server.port}") as client:
        code, details = _code(lambda: client.generate("The court", max_tokens=5))
        assert code == grpc.StatusCode.INTERNAL and "RuntimeError" in details and "The court" not in details
        assert client.generate("The court", max_tokens=5).usage.completion_tokens == 5
        assert client.health() == "SERVING"
    assert "a bug in a backend" in caplog.text  # the traceback is in the server's log
