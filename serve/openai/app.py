"""The OpenAI-compatible HTTP API (a Starlette app): ``/v1/chat/completions``, ``/v1/completions``,
``/v1/models`` and ``/health``.

A handler translates the body (``serve.openai.translate``) into the ``GenerateRequest`` a gRPC
client would send and hands it to the same ``Admission``: tokens and roles, limits, engines,
batching, metrics and audit are shared with gRPC, and nothing here reads the prompt beyond
passing it on. Answers follow OpenAI's shapes (``chat.completion``, ``chat.completion.chunk``
as server-sent events ending in ``data: [DONE]``, ``text_completion``); errors are OpenAI's
``{"error": {...}}`` with the status its clients act on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import datetime

import grpc
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from enclave.v1 import inference_pb2 as pb
from serve.admission import Admission
from serve.call import Call
from serve.errors import InvalidArgument, ServeError
from serve.feedback.capture import given
from serve.job import Event
from serve.models import Models
from serve.openai import errors, translate
from serve.openai.protocol import FINISH, Body, ChatRequest, CompletionRequest, FeedbackBody, Sampling

log = logging.getLogger("enclave.serve.http")
FEEDBACK_NAMES = {  # how /v1/feedback names each field of a rating, for errors
    "request_id": "id",
    "rating": "rating",
    "score": "rating",
    "correction": "correction",
    "reason": "reason",
}


class HttpContext:
    """What admission reads of a call's context (gRPC's ``ServicerContext``), from an HTTP request."""

    def __init__(self, request: Request) -> None:
        self.request = request

    def invocation_metadata(self) -> list[tuple[str, str]]:
        header = self.request.headers.get("authorization")
        return [("authorization", header)] if header is not None else []

    def peer(self) -> str:
        client = self.request.client
        if client is None:
            return ""
        return f"ipv6:[{client.host}]:{client.port}" if ":" in client.host else f"ipv4:{client.host}:{client.port}"

    def time_remaining(self) -> float | None:
        return None  # no deadline in OpenAI's API: a client that goes away cancels its call


def sse(data: dict | str) -> bytes:
    """One server-sent event."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, separators=(',', ':'))}\n\n".encode()


class OpenAIApi:
    """The routes, over one server's admission and model table."""

    def __init__(self, admission: Admission, models: Models, max_body_bytes: int, max_choices: int) -> None:
        self.admission, self.models = admission, models
        self.max_body_bytes, self.max_choices = max_body_bytes, max_choices

    def app(self) -> Starlette:
        routes = [
            Route("/v1/models", self.list_models, methods=["GET"]),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/feedback", self.feedback, methods=["POST"]),
            Route("/health", self.health, methods=["GET"]),
        ]
        handlers = {
            ServeError: _serve_error,
            _Invalid: _invalid_body,
            HTTPException: _http_error,
            Exception: _internal_error,
        }
        return Starlette(routes=routes, exception_handlers=handlers)

    async def health(self, request: Request) -> Response:
        """200 while serving; 503 while loading models or draining (an HTTP readiness probe)."""
        ready = self.admission.gate.accepting
        return JSONResponse({"status": "serving" if ready else "not serving"}, status_code=200 if ready else 503)

    async def list_models(self, request: Request) -> Response:
        caller = self.admission.reader(HttpContext(request))
        data = []
        for model_id in translate.model_ids(self.models):
            name, _, adapter = translate.resolve(self.models, model_id)
            if caller.models is not None and name not in caller.models:
                continue
            served = self.models.active[name]
            data.append(
                {
                    "id": model_id,
                    "object": "model",
                    "created": _timestamp(served.version.manifest.created_at),
                    "owned_by": "enclave",
                    "root": model_id if not adapter else name,
                    "parent": name if adapter else None,
                    "max_model_len": served.context_length,
                }
            )
        return JSONResponse({"object": "list", "data": data})

    async def chat(self, request: Request) -> Response:
        body, message = await self._translated(request, ChatRequest, translate.chat)
        return await self._generate(request, body, message, chat=True)

    async def completions(self, request: Request) -> Response:
        body, message = await self._translated(request, CompletionRequest, translate.completion)
        return await self._generate(request, body, message, chat=False)

    async def feedback(self, request: Request) -> Response:
        """A reviewer's rating of an answer, by the ``id`` the answer came with (the Review rpc's twin)."""
        caller = self.admission.reviewer(HttpContext(request))
        body = await self._body(request, FeedbackBody)
        request_id = body.id.removeprefix("chatcmpl-").removeprefix("cmpl-")
        if body.choice:
            request_id = f"{request_id}/{body.choice}"
        if isinstance(body.rating, str):
            if body.rating not in ("good", "bad"):
                raise InvalidArgument(f"rating: {body.rating!r} is not a rating; use good, bad, or a score 1 to 5")
            good, score = body.rating == "good", None
        else:
            good, score = None, body.rating
        rating = given(request_id, good, score, body.correction, body.reason, FEEDBACK_NAMES)
        answer, fid, kept = await self.admission.feedback.rate(caller, rating)
        return JSONResponse(
            {
                "id": fid,
                "object": "feedback",
                "request_id": answer.request_id,
                "model": answer.model,
                "model_version": answer.version,
                "adapter": answer.adapter,
                "text_kept": kept,
            }
        )

    async def _translated(self, request: Request, kind: type[Sampling], translate_fn):
        """The body and its GenerateRequest. The caller is identified first (before the body names
        any model); a body refused here is counted and audited as admission counts its refusals."""
        caller = self.admission.reader(HttpContext(request))
        body = await self._body(request, kind)
        try:
            return body, translate_fn(body, self.models)
        except ServeError as exc:
            refused = pb.GenerateRequest(model=body.model, request_id=body.request_id or "")
            self.admission.refused(refused, caller, exc, "http")
            raise

    async def _body(self, request: Request, kind: type[Body]) -> Body:
        """The request's JSON as ``kind``: at most ``max_body_bytes`` read, wrong types a 400."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise InvalidArgument(
                f"body: {declared} bytes is over this server's limit of {self.max_body_bytes} "
                "(limits.max_message_bytes)"
            )
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > self.max_body_bytes:
                raise InvalidArgument(
                    f"body: over this server's limit of {self.max_body_bytes} bytes (limits.max_message_bytes)"
                )
        try:
            return kind.model_validate_json(bytes(raw))
        except ValidationError as exc:
            raise _Invalid(exc.errors(include_url=False, include_input=False)) from None

    async def _generate(self, request: Request, body: Sampling, message, chat: bool) -> Response:
        if body.n > self.max_choices:
            raise InvalidArgument(f"n: {body.n} is over this server's limit of {self.max_choices} (limits.max_choices)")
        context = HttpContext(request)
        calls = await self._open(message, context, body.n)
        answer = Answer(calls, body, chat)
        if body.stream:
            headers = {"Cache-Control": "no-cache"}
            return StreamingResponse(answer.stream(), media_type="text/event-stream", headers=headers)
        try:
            return JSONResponse(await answer.whole())
        finally:
            answer.close()

    async def _open(self, message, context: HttpContext, n: int) -> list[Call]:
        """Admit ``n`` calls for the choices (each one of the caller's slots); all or none. With a
        seed, choice i samples with seed + i (the same seed would give n equal choices)."""
        calls: list[Call] = []
        seeded = message.sampling.HasField("seed")
        try:
            for i in range(n):
                if seeded and i:
                    message.sampling.seed = (message.sampling.seed + 1) % 2**64
                if i:  # each choice its own id, for feedback on it: ID/1, ID/2, ...
                    message.request_id = f"{calls[0].request_id}/{i}"
                calls.append(await self.admission.open(message, context, "http"))
        except BaseException:
            for call in calls:
                call.release()
                call.record(grpc.StatusCode.CANCELLED)
            raise
        return calls


class Answer:
    """The choices of one request, as one JSON answer or as a stream of chunks."""

    def __init__(self, calls: list[Call], body: Sampling, chat: bool) -> None:
        self.calls, self.body, self.chat = calls, body, chat
        first = calls[0]
        self.id = ("chatcmpl-" if chat else "cmpl-") + first.request_id
        self.model = body.model
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"
        self.tasks: list[asyncio.Task] = []
        # completions' echo: the prompt text before each choice's completion
        prompt = getattr(body, "prompt", None)
        self.echo = (prompt if isinstance(prompt, str) else prompt[0]) if getattr(body, "echo", False) else ""

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()

    def usage(self) -> dict:
        counts = [c.usage() for c in self.calls]
        prompt, completion = counts[0].prompt_tokens, sum(u.completion_tokens for u in counts)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _logprobs(self, call: Call, entries: list, offset: int = 0) -> dict | None:
        """Tokens' log-probabilities in OpenAI's shape: chat's ``content`` list, or completions'
        parallel lists (``text_offset`` counted from ``offset``); None when not asked for."""
        if call.job.sampling.logprobs is None:
            return None
        tok = call.served.tokenizer
        chosen = tok.pieces([e.token_id for e in entries])
        tops = [list(zip(tok.pieces([i for i, _ in e.top]), (lp for _, lp in e.top))) for e in entries]
        if self.chat:
            raw = tok.token_bytes([e.token_id for e in entries])
            top_raw = [tok.token_bytes([i for i, _ in e.top]) for e in entries]
            return {
                "content": [
                    {
                        "token": token,
                        "logprob": e.logprob,
                        "bytes": list(b),
                        "top_logprobs": [
                            {"token": t, "logprob": lp, "bytes": list(tb)} for (t, lp), tb in zip(top, tb_list)
                        ],
                    }
                    for token, e, top, b, tb_list in zip(chosen, entries, tops, raw, top_raw)
                ]
            }
        offsets = [offset + sum(len(t) for t in chosen[:k]) for k in range(len(chosen))]
        return {
            "tokens": chosen,
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [dict(top) for top in tops],
            "text_offset": offsets,
        }

    async def whole(self) -> dict:
        """Every choice run to its end, concurrently."""

        async def run(call: Call) -> tuple[str, list]:
            parts, logprobs = [], []
            async for event in call.accounted(call.events()):
                parts.append(event.text)
                logprobs.extend(event.logprobs or ())
            return "".join(parts), logprobs

        self.tasks = [asyncio.ensure_future(run(c)) for c in self.calls]
        results = await asyncio.gather(*self.tasks)
        choices = []
        for i, (call, (text, logprobs)) in enumerate(zip(self.calls, results)):
            choice: dict = {
                "index": i,
                "finish_reason": FINISH[call.finish],
                "logprobs": self._logprobs(call, logprobs),
            }
            if self.chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = self.echo + text
            choices.append(choice)
        return {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": self.usage(),
        }

    def _chunk(
        self, index: int, text: str | None, finish: str | None, first: bool = False, logprobs: dict | None = None
    ) -> dict:
        if self.chat:
            delta: dict = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        else:
            choice = {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish}
        chunk = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }
        if self.body.stream_options is not None and self.body.stream_options.include_usage:
            chunk["usage"] = None
        return chunk

    async def _events(self) -> AsyncIterator[tuple[int, Event | None, ServeError | None]]:
        """(choice, event, error) as the choices produce them. One choice is read directly, so a
        slow reader gets fewer, larger chunks (the call merges what queued up, as for gRPC);
        several are read by a task each into one queue."""
        if len(self.calls) == 1:
            try:
                async for event in self.calls[0].accounted(self.calls[0].events()):
                    yield 0, event, None
            except ServeError as exc:
                yield 0, None, exc
            return
        queue: asyncio.Queue = asyncio.Queue()

        async def run(i: int, call: Call) -> None:
            try:
                async for event in call.accounted(call.events()):
                    await queue.put((i, event, None))
            except ServeError as exc:
                await queue.put((i, None, exc))
            finally:
                await queue.put((i, None, None))

        self.tasks = [asyncio.ensure_future(run(i, c)) for i, c in enumerate(self.calls)]
        running = len(self.calls)
        while running:
            i, event, error = await queue.get()
            if event is None and error is None:
                running -= 1
            else:
                yield i, event, error

    async def stream(self) -> AsyncIterator[bytes]:
        """Server-sent events: each choice's pieces as they come, its finish, usage if asked, [DONE].

        An error after the stream began is sent as an ``{"error": ...}`` event (the status line is
        already out); a client that disconnects cancels its calls."""
        events = self._events()
        try:
            if self.chat or self.echo:
                for i in range(len(self.calls)):
                    yield sse(self._chunk(i, self.echo or None, None, first=self.chat))
            sent = [0] * len(self.calls)  # characters sent per choice
            async for i, event, error in events:
                if error is not None:
                    yield sse(errors.from_serve_error(error)[1])
                else:
                    if event.text or event.logprobs:
                        logprobs = self._logprobs(self.calls[i], event.logprobs or [], sent[i])
                        yield sse(self._chunk(i, event.text, None, logprobs=logprobs))
                        sent[i] += len(event.text)
                    if event.finish:
                        yield sse(self._chunk(i, None, FINISH[event.finish]))
            if self.body.stream_options is not None and self.body.stream_options.include_usage:
                usage = {**self._chunk(0, None, None), "choices": [], "usage": self.usage()}
                yield sse(usage)
            yield sse("[DONE]")
        finally:
            await events.aclose()  # a client gone mid-stream: its call is cancelled now, not at collection
            self.close()


class _Invalid(Exception):
    """A body of the wrong shape (pydantic's errors)."""

    def __init__(self, errors_: list[dict]) -> None:
        super().__init__("invalid body")
        self.errors = errors_


async def _serve_error(request: Request, exc: ServeError) -> Response:
    status, content, headers = errors.from_serve_error(exc)
    return JSONResponse(content, status_code=status, headers=headers)


async def _invalid_body(request: Request, exc: _Invalid) -> Response:
    return JSONResponse(errors.from_validation(exc.errors), status_code=400)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    """Unknown paths and methods, in OpenAI's shape."""
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    paths = "/v1/chat/completions, /v1/completions, /v1/models"
    message = f"{request.method} {request.url.path}: {exc.detail}; this server has {paths}"
    return JSONResponse(errors.body(message, kind), status_code=exc.status_code)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)  # a bug: the traceback, no body
    return JSONResponse(errors.body("internal error (logged on the server)", "internal_error"), status_code=500)


def _timestamp(iso: str) -> int:
    try:
        return int(datetime.fromisoformat(iso).timestamp())
    except ValueError:
        return 0
