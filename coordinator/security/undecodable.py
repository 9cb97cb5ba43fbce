"""``RejectUndecodable``: a server interceptor that answers a request gRPC cannot decode
(random bytes) INVALID_ARGUMENT with one line, instead of UNKNOWN and a traceback per
request (the deserializer raises inside grpc otherwise).

Both kinds of server put it first in their interceptors: a coordinator node
(coordinator/runtime/serve.py) and a participant (participant_sdk/server.py).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

__all__ = ["RejectUndecodable"]


@dataclasses.dataclass(frozen=True, slots=True)
class _Undecodable:
    why: str


class RejectUndecodable(grpc.aio.ServerInterceptor):
    """A request gRPC cannot decode is answered INVALID_ARGUMENT, with one line that
    names the method and the message type, and no traceback; ``refused`` counts them.
    Put it first in the server's interceptors, so no other one sees such a request."""

    def __init__(self) -> None:
        self.refused = 0
        # method -> (the handler gRPC gave, its guarded twin): built once per method,
        # not per call (this sits in front of every call of the hot path)
        self._guarded: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        cached = self._guarded.get(method)
        if cached is None or cached[0] is not handler:
            cached = self._guarded[method] = (handler, self._guard(handler, method))
        return cached[1]

    def _guard(self, handler: Any, method: str) -> Any:
        decode = handler.request_deserializer
        message_type = getattr(decode, "__self__", None)
        descriptor = getattr(message_type, "DESCRIPTOR", None)
        type_name = descriptor.full_name if descriptor is not None else "request"

        def deserialize(data: bytes) -> Any:
            try:
                return decode(data)
            except Exception as error:
                self.refused += 1
                why = " ".join(str(error).split()) or type(error).__name__
                return _Undecodable(
                    f"{method}: the request ({len(data)} bytes) is not a valid "
                    f"{type_name} ({why[:200]})"
                )

        async def check(request: Any, context: Any) -> None:
            if isinstance(request, _Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.why)

        async def checked(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            async for request in requests:
                await check(request, context)
                yield request

        serialize = handler.response_serializer
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: Any) -> Any:
                await check(request, context)
                return await _maybe_await(inner_uu(request, context))

            return grpc.unary_unary_rpc_method_handler(unary_unary, deserialize, serialize)
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream
            if inspect.isasyncgenfunction(inner_us):

                async def unary_stream(request: Any, context: Any) -> Any:
                    await check(request, context)
                    async for reply in inner_us(request, context):
                        yield reply

                return grpc.unary_stream_rpc_method_handler(unary_stream, deserialize, serialize)

            async def unary_writer(request: Any, context: Any) -> None:
                await check(request, context)
                await _maybe_await(inner_us(request, context))

            return grpc.unary_stream_rpc_method_handler(unary_writer, deserialize, serialize)
        if handler.stream_unary is not None:
            inner_su = handler.stream_unary

            async def stream_unary(requests: Any, context: Any) -> Any:
                return await _maybe_await(inner_su(checked(requests, context), context))

            return grpc.stream_unary_rpc_method_handler(stream_unary, deserialize, serialize)
        inner_ss = handler.stream_stream
        if inspect.isasyncgenfunction(inner_ss):

            async def stream_stream(requests: Any, context: Any) -> Any:
                async for reply in inner_ss(checked(requests, context), context):
                    yield reply

            return grpc.stream_stream_rpc_method_handler(stream_stream, deserialize, serialize)

        async def stream_writer(requests: Any, context: Any) -> None:
            await _maybe_await(inner_ss(checked(requests, context), context))

        return grpc.stream_stream_rpc_method_handler(stream_writer, deserialize, serialize)


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value
