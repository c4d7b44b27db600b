"""Around every call: authentication, authorisation, and a debug log line with its duration."""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from campaignd import logs, metrics
from campaignd.api.auth import RANK, Authenticator, current_principal, required_role
from campaignd.config import Role

log = logs.get("campaignd.api")
Context = aio.ServicerContext[Any, Any]


class CallInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses calls without a valid token (UNAUTHENTICATED) or with too small a role
    (PERMISSION_DENIED), and logs each call at debug level."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        # grpc's typing covers the sync handler API only; aio handlers are typed Any here.
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return _Call(handler_call_details.method, required_role(handler_call_details.method), self).wrap(
            handler
        )

    async def admit(self, method_role: Role | None, context: Context) -> None:
        """Abort the call unless its caller may make it."""
        if method_role is None:
            return
        metadata = [(key, value) for key, value in context.invocation_metadata() or ()]
        principal = self.authenticator.authenticate(context.peer(), metadata)
        if principal is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid bearer token is required")
        elif RANK[principal.role] < RANK[method_role]:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"role {principal.role!r} may not call this; it needs {method_role!r}",
            )
        else:
            current_principal.set(principal)


class _Call:
    def __init__(self, method: str, role: Role | None, interceptor: CallInterceptor) -> None:
        self.method = method
        self.role = role
        self.interceptor = interceptor

    def _done(self, started: float, context: Context) -> None:
        code = context.code()
        name = code.name if isinstance(code, grpc.StatusCode) else "OK"
        seconds = time.perf_counter() - started
        metrics.RPC_SECONDS.labels(self.method, name).observe(seconds)
        log.debug("rpc", method=self.method, code=name, ms=round(seconds * 1000, 2))

    def wrap(self, handler: Any) -> Any:
        """The handler with auth and logging around it, of the same kind as the original."""
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._coroutine(handler.unary_unary),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(handler.unary_stream),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._coroutine(handler.stream_unary),
                handler.request_deserializer,
                handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._streaming(handler.stream_stream), handler.request_deserializer, handler.response_serializer
        )

    def _coroutine(self, inner: Any) -> Any:
        async def coroutine(request: Any, context: Context) -> Any:
            started = time.perf_counter()
            try:
                await self.interceptor.admit(self.role, context)
                return await inner(request, context)
            finally:
                self._done(started, context)

        return coroutine

    def _streaming(self, inner: Any) -> Any:
        # A streaming handler either yields its responses or awaits context.write(); the
        # wrapper must be of the same kind for grpc to drive it.
        if not inspect.isasyncgenfunction(inner):
            return self._coroutine(inner)

        async def generator(request: Any, context: Context) -> AsyncIterator[Any]:
            started = time.perf_counter()
            try:
                await self.interceptor.admit(self.role, context)
                async for item in inner(request, context):
                    yield item
            finally:
                self._done(started, context)

        return generator
