"""The one place exceptions become gRPC status codes (see serve.errors).

A ServeError aborts the call with its code and message (and trailing metadata such as
``grpc-retry-pushback-ms``); any other exception is a bug: logged with its traceback, answered
with INTERNAL and a request-free message, and the server goes on serving.
"""

from __future__ import annotations

import logging

import grpc

from serve.errors import ServeError

log = logging.getLogger("enclave.serve")


async def _abort(context, exc: BaseException, method: str):
    if isinstance(exc, ServeError):
        if exc.metadata:
            context.set_trailing_metadata(exc.metadata)
        await context.abort(exc.code, exc.message)
    log.error("bug in %s: %s", method, type(exc).__name__, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); the server log has the details")


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
                    return await inner(request, context)
                except Exception as exc:
                    await _abort(context, exc, method)

            return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            async def stream(request, context):
                try:
                    async for item in inner_stream(request, context):
                        yield item
                except Exception as exc:
                    await _abort(context, exc, method)

            return grpc.unary_stream_rpc_method_handler(stream, handler.request_deserializer, handler.response_serializer)
        return handler
