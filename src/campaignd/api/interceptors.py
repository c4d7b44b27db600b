"""Around every call: authentication, authorisation, and a debug log line with its duration."""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
from grpc import aio

from campaignd import logs, metrics
from campaignd.api.auth import RANK, Authenticator, current_principal, required_role
from campaignd.api.errors import abort
from campaignd.config import Role
from campaignd.errors import ApiError, FieldViolation, invalid_argument

log = logs.get("campaignd.api")
Context = aio.ServicerContext[Any, Any]
if TYPE_CHECKING:
    GenericHandler = grpc.GenericRpcHandler[Any, Any]


class CallInterceptor:
    """Refuses calls without a valid token (UNAUTHENTICATED) or with too small a role
    (PERMISSION_DENIED), and logs each call at debug level.

    It wraps each method's handler once, when the service is registered (`wrap`, `generic`),
    rather than as a grpc.aio interceptor, which runs a coroutine and builds a new handler for
    every call."""

    def __init__(
        self, authenticator: Authenticator, observe: Callable[[str, str, float], None] | None = None
    ) -> None:
        self.authenticator = authenticator
        # Each call's method, status code and seconds; by default into this process's metrics.
        self.observe = observe

    def generic(self, handler: GenericHandler) -> GenericHandler:
        """A generic handler whose method handlers are wrapped."""
        return _GenericHandler(handler, self)

    def wrap(self, method: str, handler: Any) -> Any:
        """The method handler of `/package.Service/Method` with auth and logging around it."""
        return _Call(method, required_role(method), self).wrap(handler)

    async def admit(self, method_role: Role | None, context: Context) -> None:
        """Abort the call unless its caller may make it."""
        if method_role is None:
            return
        principal = self.authenticator.authenticate(context.peer(), _Metadata(context))
        if principal is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid bearer token is required")
        elif RANK[principal.role] < RANK[method_role]:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"role {principal.role!r} may not call this; it needs {method_role!r}",
            )
        else:
            current_principal.set(principal)


class _GenericHandler(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    def __init__(self, inner: GenericHandler, interceptor: CallInterceptor) -> None:
        self.inner = inner
        self.interceptor = interceptor
        # Only methods the inner handler knows are kept, so the cache is bounded by the services.
        self.wrapped: dict[str, Any] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method
        wrapped = self.wrapped.get(method)
        if wrapped is None:
            handler = self.inner.service(handler_call_details)
            if handler is None:
                return None
            wrapped = self.wrapped[method] = self.interceptor.wrap(method, handler)
        return wrapped


class _Metadata:
    """A call's metadata, read only when the authenticator looks into it."""

    def __init__(self, context: Context) -> None:
        self.context = context

    def __iter__(self) -> Iterator[tuple[str, str | bytes]]:
        return iter(self.context.invocation_metadata() or ())


class _Call:
    def __init__(self, method: str, role: Role | None, interceptor: CallInterceptor) -> None:
        self.method = method
        self.role = role
        self.interceptor = interceptor
        self._observers: dict[str, Any] = {}

    def _done(self, started: float, context: Context) -> None:
        code = context.code()
        name = code.name if isinstance(code, grpc.StatusCode) else "OK"
        seconds = time.perf_counter() - started
        if self.interceptor.observe is not None:
            self.interceptor.observe(self.method, name, seconds)
        else:
            observer = self._observers.get(name)
            if observer is None:
                observer = self._observers[name] = metrics.RPC_SECONDS.labels(self.method, name)
            observer.observe(seconds)
        if logs.enabled("debug"):
            log.debug("rpc", method=self.method, code=name, ms=round(seconds * 1000, 2))

    def wrap(self, handler: Any) -> Any:
        """The handler with auth and logging around it, of the same kind as the original, reading
        requests with a deserializer that turns bytes that do not parse into INVALID_ARGUMENT."""
        parse = _lenient(handler.request_deserializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._coroutine(handler.unary_unary, streaming_request=False),
                parse,
                handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(handler.unary_stream, streaming_request=False),
                parse,
                handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._coroutine(handler.stream_unary, streaming_request=True),
                parse,
                handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._streaming(handler.stream_stream, streaming_request=True), parse, handler.response_serializer
        )

    async def _admit(self, request: Any, context: Context, *, streaming_request: bool) -> Any:
        await self.interceptor.admit(self.role, context)
        if streaming_request:
            return _checked(request)
        if request is _MALFORMED:
            await abort(context, _malformed())
        return request

    def _coroutine(self, inner: Any, *, streaming_request: bool) -> Any:
        async def coroutine(request: Any, context: Context) -> Any:
            started = time.perf_counter()
            try:
                request = await self._admit(request, context, streaming_request=streaming_request)
                return await inner(request, context)
            finally:
                self._done(started, context)

        return coroutine

    def _streaming(self, inner: Any, *, streaming_request: bool) -> Any:
        # A streaming handler either yields its responses or awaits context.write(); the
        # wrapper must be of the same kind for grpc to drive it.
        if not inspect.isasyncgenfunction(inner):
            return self._coroutine(inner, streaming_request=streaming_request)

        async def generator(request: Any, context: Context) -> AsyncIterator[Any]:
            started = time.perf_counter()
            try:
                request = await self._admit(request, context, streaming_request=streaming_request)
                async for item in inner(request, context):
                    yield item
            finally:
                self._done(started, context)

        return generator


class _Malformed:
    """Stands for a request message whose bytes did not parse."""


_MALFORMED = _Malformed()


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    # grpc answers a deserializer's exception with UNKNOWN before any handler runs; the marker
    # lets the handler answer INVALID_ARGUMENT instead.
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:
            return _MALFORMED

    return parse


def _malformed() -> ApiError:
    return invalid_argument([FieldViolation("request", "cannot be parsed as the method's request message")])


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A request stream that raises INVALID_ARGUMENT (which the servicer reports) at a message
    whose bytes did not parse."""
    async for request in requests:
        if request is _MALFORMED:
            raise _malformed()
        yield request
