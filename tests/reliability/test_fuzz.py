"""Hostile input: property-based requests (hypothesis) over every field of GenerateRequest and
TokenizeRequest, sent to a live server. No INTERNAL, no UNKNOWN, no crash, no hang: each call
answers within its deadline with OK or a client error naming the problem."""

from __future__ import annotations

import math

import grpc
import pytest

from tests.reliability.conftest import profile
from tests.serve.conftest import running, serve_config

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytestmark = pytest.mark.reliability

CASES = profile(600, 10_000)
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
}
FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32), st.sampled_from([0.0, -0.0, 1e-30, -1.0, 1.0, 2.0, 1e30])
)
TEXT = st.one_of(
    st.text(max_size=200), st.sampled_from(["", "\x00", "\ud7ff" * 3, "a" * 5000, "<|im_end|>", "../../etc/passwd"])
)
NAMES = st.one_of(
    st.sampled_from(["", "tiny", "tiny-onnx", "facts", "..", "../x", "/etc/passwd", "nope", "a/b", "\x00", "tiny\n"]),
    st.text(max_size=40),
)
MODELS = st.one_of(st.just(""), st.just("tiny-onnx"), st.just("tiny"), NAMES)  # mostly servable, so generation runs too
ADAPTERS = st.one_of(st.just(""), st.just(""), st.just("facts"), NAMES)


def sampling():
    from enclave.v1 import inference_pb2 as pb

    @st.composite
    def build(draw):
        p = pb.SamplingParams(
            max_tokens=draw(st.one_of(st.integers(0, 64), st.sampled_from([2**32 - 1, 1025, 4096]))),
            top_k=draw(st.one_of(st.integers(0, 100), st.just(2**32 - 1))),
            min_tokens=draw(st.one_of(st.integers(0, 8), st.just(2**32 - 1))),
            stop=draw(st.lists(TEXT, max_size=draw(st.sampled_from([0, 3, 20])))),
        )
        for name in ("temperature", "top_p", "repetition_penalty"):
            if draw(st.booleans()):
                setattr(p, name, draw(FLOATS))
        if draw(st.booleans()):
            p.seed = draw(st.integers(0, 2**64 - 1))
        return p

    return build()


def requests():
    from enclave.v1 import inference_pb2 as pb

    @st.composite
    def build(draw):
        req = pb.GenerateRequest(
            request_id=draw(st.one_of(st.just(""), st.text(max_size=200))),
            model=draw(MODELS),
            model_version=draw(st.sampled_from(["", "", "", "1", "2", "99", "../1"])),
            adapter=draw(ADAPTERS),
            sampling=draw(sampling()),
        )
        kind = draw(st.sampled_from(["prompt", "chat", "none"]))
        if kind == "prompt":
            req.prompt = draw(TEXT)
        elif kind == "chat":
            roles = st.one_of(st.sampled_from(["system", "user", "assistant"]), st.text(max_size=10))
            req.chat.CopyFrom(
                pb.Chat(
                    messages=[
                        pb.ChatMessage(role=draw(roles), content=draw(TEXT)) for _ in range(draw(st.integers(0, 4)))
                    ]
                )
            )
        return req

    return build()


def test_fuzzed_requests_get_ok_or_a_named_client_error(serve_repo, record):
    from enclave.grpc_client import Client
    from enclave.v1 import inference_pb2 as pb

    seen: dict[str, int] = {}
    with running(
        serve_config(serve_repo, limits__max_new_tokens=64, limits__default_new_tokens=8, adapters={"tiny": ["facts"]})
    ) as server:
        client = Client(f"127.0.0.1:{server.port}", timeout=30)
        raw_bytes = client.channel.unary_unary(
            "/enclave.v1.Inference/Generate", request_serializer=lambda b: b, response_deserializer=lambda b: b
        )

        def check(call) -> None:
            try:
                call()
                code = grpc.StatusCode.OK
            except grpc.RpcError as e:
                code = e.code()
                assert code in ALLOWED, (code, e.details())
                if code != grpc.StatusCode.OK:
                    assert e.details(), "a refusal must say why"
            seen[code.name] = seen.get(code.name, 0) + 1

        @settings(
            max_examples=CASES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None
        )
        @given(requests(), st.booleans())
        def fuzz(req, stream):
            if stream:
                check(lambda: list(client.inference.GenerateStream(req, timeout=30)))
            else:
                check(lambda: client.inference.Generate(req, timeout=30))
            tok = pb.TokenizeRequest(
                model=req.model, model_version=req.model_version, text=req.prompt if req.HasField("prompt") else ""
            )
            check(lambda: client.inference.Tokenize(tok, timeout=30))

        fuzz()
        # Bytes that are not a valid message at all, and an oversized one.
        for junk in (b"\xff\xff\xff", b"\x2a" + b"\x80" * 11, b"\x0a\x05ab", b"\x2a\x03\xff\xfe\xfd"):
            check(lambda: raw_bytes(junk, timeout=30))  # noqa: B023 (called here)
        check(lambda: client.generate("x" * (5 << 20), timeout=30))
        assert client.health() == "SERVING"
        client.close()
    record({"cases": CASES, "calls_by_code": seen})
    assert seen.get("OK", 0) > 0 and sum(seen.values()) >= 2 * CASES
    assert not math.isnan(sum(seen.values()))
