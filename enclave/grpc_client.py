"""A small Python client for an Enclave server (the `enclave client` command uses it).

    from enclave.grpc_client import Client

    with Client("127.0.0.1:50051", token="...") as c:
        print(c.generate("What does BID mean?", chat=True, max_tokens=64).text)
        for piece in c.stream("Explain habeas corpus.", chat=True):
            print(piece.text, end="")

Needs only grpcio and the generated stubs in enclave.v1 (`pip install enclave-llm[serve]`, or
generate your own from proto/enclave/v1/inference.proto). Errors are grpc.RpcError with the
server's status code and a message that names the field.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

# gRPC's C core logs connection events (a server closing an idle connection, "Got goaway") at
# INFO to stderr; a client's user sees errors only, unless they ask for more.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc  # noqa: E402 (after its log level)

from enclave.v1 import inference_pb2 as pb
from enclave.v1 import inference_pb2_grpc as rpc


def _read(path: str | Path | None) -> bytes | None:
    return Path(path).expanduser().read_bytes() if path else None


class Client:
    """A channel to one server; thread-safe; close it (or use ``with``) when done.

    Args:
        target: ``host:port``.
        token: bearer token, sent as ``authorization: Bearer <token>``.
        ca: PEM file of the CA that signed the server's certificate; turns TLS on.
        cert, key: this client's certificate and key (PEM), for servers that require mutual TLS.
        server_name: the name to expect in the server's certificate, when it differs from the host.
        timeout: default deadline per call, in seconds.
    """

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        token: str | None = None,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        server_name: str | None = None,
        timeout: float | None = 120.0,
    ) -> None:
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        if ca or cert:
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read(ca), private_key=_read(key), certificate_chain=_read(cert)
            )
            self.channel = grpc.secure_channel(target, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout
        self.inference = rpc.InferenceStub(self.channel)
        self.admin = rpc.AdminStub(self.channel)
        self.review = rpc.ReviewStub(self.channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel; calls still in flight on it are cancelled."""
        self.channel.close()

    @staticmethod
    def request(
        prompt: str | list[dict],
        chat: bool = False,
        model: str = "",
        version: str = "",
        adapter: str = "",
        request_id: str = "",
        max_tokens: int = 0,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int = 0,
        repetition_penalty: float | None = None,
        stop: tuple[str, ...] = (),
        seed: int | None = None,
        min_tokens: int = 0,
        presence_penalty: float | None = None,
        frequency_penalty: float | None = None,
        min_p: float | None = None,
        logprobs: int | None = None,
        stop_token_ids: tuple[int, ...] = (),
    ) -> pb.GenerateRequest:
        """A GenerateRequest.

        ``prompt`` is text (sent raw, or as one user message with ``chat``) or a list of messages.
        """
        sampling = pb.SamplingParams(
            max_tokens=max_tokens,
            min_tokens=min_tokens,
            top_k=top_k,
            stop=list(stop),
            stop_token_ids=list(stop_token_ids),
        )
        for name, value in (
            ("temperature", temperature),
            ("top_p", top_p),
            ("repetition_penalty", repetition_penalty),
            ("seed", seed),
            ("presence_penalty", presence_penalty),
            ("frequency_penalty", frequency_penalty),
            ("min_p", min_p),
            ("logprobs", logprobs),
        ):
            if value is not None:
                setattr(sampling, name, value)
        req = pb.GenerateRequest(
            request_id=request_id, model=model, model_version=version, adapter=adapter, sampling=sampling
        )
        if isinstance(prompt, list):
            req.chat.CopyFrom(pb.Chat(messages=[pb.ChatMessage(**m) for m in prompt]))
        elif chat:
            req.chat.CopyFrom(pb.Chat(messages=[pb.ChatMessage(role="user", content=prompt)]))
        else:
            req.prompt = prompt
        return req

    def generate(self, prompt: str | list[dict], timeout: float | None = None, **kwargs) -> pb.GenerateResponse:
        """The whole completion in one response. ``kwargs`` are those of ``request``."""
        return self.inference.Generate(
            self.request(prompt, **kwargs), timeout=timeout or self.timeout, metadata=self.metadata
        )

    def stream(
        self, prompt: str | list[dict], timeout: float | None = None, **kwargs
    ) -> Iterator[pb.GenerateStreamResponse]:
        """The completion piece by piece; the last message has finish_reason, usage and timings.
        Cancel early with ``.cancel()`` on the returned iterator."""
        return self.inference.GenerateStream(
            self.request(prompt, **kwargs), timeout=timeout or self.timeout, metadata=self.metadata
        )

    def _tok(self, text: str | list[dict], model: str, version: str, chat: bool) -> pb.TokenizeRequest:
        req = pb.TokenizeRequest(model=model, model_version=version)
        if isinstance(text, list) or chat:
            messages = text if isinstance(text, list) else [{"role": "user", "content": text}]
            req.chat.CopyFrom(pb.Chat(messages=[pb.ChatMessage(**m) for m in messages]))
        else:
            req.text = text
        return req

    def tokenize(
        self, text: str | list[dict], model: str = "", version: str = "", chat: bool = False
    ) -> pb.TokenizeResponse:
        """Split text, or chat messages with the model's chat template applied, into tokens.

        Args:
            text: raw text, or a list of messages (``{"role": ..., "content": ...}``).
            model: the model's name; empty for the server's default model.
            version: the model's version; empty for the active one.
            chat: send text as one user message, so the chat template is applied.

        Returns:
            The token ids and each token's text.
        """
        return self.inference.Tokenize(
            self._tok(text, model, version, chat), timeout=self.timeout, metadata=self.metadata
        )

    def count_tokens(
        self, text: str | list[dict], model: str = "", version: str = "", chat: bool = False
    ) -> pb.CountTokensResponse:
        """Count the tokens of text or chat messages without returning them; arguments as for ``tokenize``.

        Returns:
            The token count and the model's context length.
        """
        return self.inference.CountTokens(
            self._tok(text, model, version, chat), timeout=self.timeout, metadata=self.metadata
        )

    def models(self) -> pb.ListModelsResponse:
        """The models, versions and adapters the server can run, the default model first."""
        return self.inference.ListModels(pb.ListModelsRequest(), timeout=self.timeout, metadata=self.metadata)

    def health(self, service: str = "") -> str:
        """ "SERVING", "NOT_SERVING" or "SERVICE_UNKNOWN" (grpc.health.v1; no token needed)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        reply = health_pb2_grpc.HealthStub(self.channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=self.timeout
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def load_adapter(self, adapter: str, model: str = "") -> pb.LoadAdapterResponse:
        """Load an adapter from the server's repository onto a model (needs an admin token).

        Args:
            adapter: the adapter's name in the server's adapter repository.
            model: the model to load it on; empty for the server's default model.

        Returns:
            The loaded adapter's name and digest, and the seconds it took to verify and load.
        """
        return self.admin.LoadAdapter(
            pb.LoadAdapterRequest(model=model, adapter=adapter), timeout=self.timeout, metadata=self.metadata
        )

    def unload_adapter(self, adapter: str, model: str = "") -> pb.UnloadAdapterResponse:
        """Unload an adapter from a model (needs an admin token); requests in flight on it finish first.

        Args:
            adapter: the adapter's name.
            model: the model it is loaded on; empty for the server's default model.
        """
        return self.admin.UnloadAdapter(
            pb.UnloadAdapterRequest(model=model, adapter=adapter), timeout=self.timeout, metadata=self.metadata
        )

    def feedback(
        self,
        request_id: str,
        good: bool | None = None,
        score: int | None = None,
        correction: str = "",
        reason: str = "",
    ) -> pb.FeedbackResponse:
        """Rate an answer by its request id (needs a reviewer token): good or bad, or a score 1-5.

        Args:
            request_id: the answer's ``request_id``.
            good: True (good) or False (bad); or leave it None and give ``score``.
            score: 1 (wrong) to 5 (right).
            correction: the answer the model should have given (kept where text capture is on).
            reason: why, in the reviewer's words.
        """
        req = pb.FeedbackRequest(request_id=request_id, correction=correction, reason=reason)
        if good is not None:
            req.verdict = pb.VERDICT_GOOD if good else pb.VERDICT_BAD
        elif score is not None:
            req.score = score
        return self.review.Feedback(req, timeout=self.timeout, metadata=self.metadata)
