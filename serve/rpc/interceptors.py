"""The one place exceptions become gRPC status codes (see serve.errors).

A ServeError aborts the call with its code and message (and trailing metadata such as
``grpc-retry-pushback-ms``); any other exception is a bug: logged with its traceback, answered
with INTERNAL and a request-free message, and the server goes on serving. Bytes that do not
parse as the request message (invalid UTF-8 in a string, garbled or truncated fields) are the
caller's error, INVALID_ARGUMENT, where grpc itself would answer INTERNAL.
"""

from __future__ import annotations

import logging

import grpc

from serve.errors import InvalidArgument, ServeError

log = logging.getLogger("enclave.serve")


async def _abort(context, exc: BaseException, method: str):
    if isinstance(exc, ServeError):
        if exc.metadata:
            context.set_trailing_metadata(exc.metadata)
        await context.abort(exc.code, exc.message)
    log.error("bug in %s: %s", method, type(exc).__name__, exc_info=exc)
    await context.abort(
        grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); the server log has the details"
    )


class _Malformed:
    """What a request that did not parse becomes; the handler refuses it."""

    def __init__(self, message: str, error: Exception) -> None:
        self.message, self.error = message, error

    def refuse(self) -> None:
        raise InvalidArgument(
            f"request: not a valid {self.message} message ({type(self.error).__name__}); "
            "send one built from proto/enclave/v1/inference.proto (strings must be UTF-8)"
        )


def _tolerant(deserialize):
    message = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)
    name = message.full_name if message is not None else "request"

    def read(data: bytes):
        try:
            return deserialize(data)
        except Exception as exc:  # protobuf's DecodeError, whatever the implementation
            return _Malformed(name, exc)

    return read


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        method = details.method
        if handler is None or not method.startswith("/enclave.v1."):  # health and reflection are grpc's own
            return handler
        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary(request, context):
                try:
                    if isinstance(request, _Malformed):
                        request.refuse()
                    return await inner(request, context)
                except Exception as exc:
                    await _abort(context, exc, method)

            return grpc.unary_unary_rpc_method_handler(
                unary, _tolerant(handler.request_deserializer), handler.response_serializer
            )
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            async def stream(request, context):
                try:
                    if isinstance(request, _Malformed):
                        request.refuse()
                    async for item in inner_stream(request, context):
                        yield item
                except Exception as exc:
                    await _abort(context, exc, method)

            return grpc.unary_stream_rpc_method_handler(
                stream, _tolerant(handler.request_deserializer), handler.response_serializer
            )
        return handler
