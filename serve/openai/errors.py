"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` with the HTTP
status its clients act on (the `openai` SDKs retry 429 and 5xx, never 400)."""

from __future__ import annotations

import re

import grpc

from serve.errors import ServeError

# gRPC status -> (HTTP status, OpenAI error type)
STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable"),
    grpc.StatusCode.INTERNAL: (500, "internal_error"),
}
_FIELD = re.compile(r"^([A-Za-z_][\w.\[\]]*): ")


def body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    """The JSON of an error."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def from_serve_error(exc: ServeError) -> tuple[int, dict, dict[str, str]]:
    """(HTTP status, JSON body, headers) of a ServeError: the field its message names becomes
    ``param``, a retry hint ``Retry-After``."""
    status, kind = STATUS.get(exc.code, (500, "internal_error"))
    m = _FIELD.match(exc.message)
    headers = {}
    retry_ms = dict(exc.metadata).get("grpc-retry-pushback-ms")
    if retry_ms is not None:
        headers["Retry-After"] = str(max(1, -(-int(retry_ms) // 1000)))  # whole seconds, rounded up
    return status, body(exc.message, kind, _param(m.group(1)) if m else None, exc.code.name.lower()), headers


def _param(field: str) -> str:
    """A field as the gRPC request names it, as the OpenAI body does (``sampling.max_tokens`` ->
    ``max_tokens``, ``chat.messages[0]`` -> ``messages[0]``)."""
    for grpc_prefix, http_prefix in (("sampling.", ""), ("chat.", "")):
        if field.startswith(grpc_prefix):
            return http_prefix + field[len(grpc_prefix) :]
    return field


def from_validation(errors: list[dict]) -> dict:
    """A 400's body for request fields of the wrong type or missing (pydantic's errors)."""
    first = errors[0]
    where = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(where) or None
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return body(f"{param or 'body'}: {first.get('msg', 'invalid')}{more}", "invalid_request_error", param)
