"""Errors the server turns into gRPC status codes (one interceptor does it: serve.rpc.interceptors).

Raise the class that says what went wrong; the message names the field, the value and the fix.
Anything else that escapes a handler is a bug and becomes INTERNAL, with the traceback in the log.
"""

from __future__ import annotations

import grpc


class ServeError(Exception):
    """An error with a gRPC status code, caused by the call or by the server's state."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = metadata


class InvalidArgument(ServeError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServeError):
    code = grpc.StatusCode.NOT_FOUND


class ResourceExhausted(ServeError):
    """Over a limit or the queue is full; ``retry_ms`` goes back as ``grpc-retry-pushback-ms``."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_ms: int | None = None) -> None:
        meta = (("grpc-retry-pushback-ms", str(retry_ms)),) if retry_ms is not None else ()
        super().__init__(message if retry_ms is None else f"{message}; retry in about {retry_ms / 1000:.1f} s", meta)


class Unauthenticated(ServeError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServeError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(ServeError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServeError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class FailedPrecondition(ServeError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class OutOfRange(ServeError):
    """The request is over a per-request limit (its prompt is too long): retrying it cannot help."""

    code = grpc.StatusCode.OUT_OF_RANGE


class DataLoss(ServeError):
    """Stored data cannot be read or written as it should (a damaged feedback store)."""

    code = grpc.StatusCode.DATA_LOSS
