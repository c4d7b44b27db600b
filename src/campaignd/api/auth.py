"""Who is calling, and may they: Unix-socket peers are trusted by file mode, TCP peers need a token."""

from __future__ import annotations

import contextvars
import hmac
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio

from campaignd.config import Role, TokenSettings

_RANK: dict[Role, int] = {"viewer": 0, "operator": 1, "admin": 2}

# Methods that only read; everything not listed here or in ADMIN_METHODS needs `operator`.
VIEWER_METHODS = frozenset(
    {
        "GetCampaign",
        "ListCampaigns",
        "EstimateRecipients",
        "GetCampaignReport",
        "ListMessages",
        "ListCampaignHistory",
        "WatchCampaign",
        "ServerReflectionInfo",
    }
)
ADMIN_METHODS = frozenset({"DeleteCampaign"})
# Load balancers and supervisors probe health without credentials.
OPEN_SERVICES = frozenset({"grpc.health.v1.Health"})


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    name: str
    role: Role


SYSTEM = Principal("system", "admin")
current_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("principal", default=SYSTEM)


def required_role(full_method: str) -> Role | None:
    """The least role that may call `/package.Service/Method`; None when anyone may."""
    service, _, method = full_method.lstrip("/").partition("/")
    if service in OPEN_SERVICES:
        return None
    if method in VIEWER_METHODS:
        return "viewer"
    if method in ADMIN_METHODS:
        return "admin"
    return "operator"


class Authenticator:
    """Maps a call's peer and metadata to a Principal; the token list can be swapped on reload."""

    def __init__(self, tokens: Sequence[TokenSettings]) -> None:
        self.set_tokens(tokens)

    def set_tokens(self, tokens: Sequence[TokenSettings]) -> None:
        """Replace the accepted tokens (read from their secret sources now)."""
        self._tokens = [(t.secret.read().get_secret_value().encode(), Principal(t.name, t.role)) for t in tokens]

    def authenticate(self, peer: str, metadata: Sequence[tuple[str, str | bytes]]) -> Principal | None:
        """The principal, or None when a TCP caller presents no valid token."""
        if peer.startswith("unix:"):
            # The socket's file mode already decided who may connect.
            return Principal("local", "admin")
        presented = b""
        for key, value in metadata:
            if key == "authorization":
                text = value.decode() if isinstance(value, bytes) else value
                scheme, _, token = text.partition(" ")
                if scheme.lower() == "bearer":
                    presented = token.strip().encode()
        if not presented:
            return None
        for secret, principal in self._tokens:
            if hmac.compare_digest(secret, presented):
                return principal
        return None


class AuthInterceptor(aio.ServerInterceptor):
    """Refuses calls without a valid token (UNAUTHENTICATED) or with too small a role (PERMISSION_DENIED)."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        role = required_role(handler_call_details.method)
        if handler is None or role is None:
            return handler
        return _wrap(handler, self.authenticator, role)


def _wrap(handler: grpc.RpcMethodHandler, authenticator: Authenticator, role: Role) -> grpc.RpcMethodHandler:
    async def admit(context: aio.ServicerContext[Any, Any]) -> None:
        principal = authenticator.authenticate(context.peer(), context.invocation_metadata() or ())
        if principal is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid bearer token is required")
        elif _RANK[principal.role] < _RANK[role]:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"role {principal.role!r} may not call this; it needs {role!r}"
            )
        else:
            current_principal.set(principal)

    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            await admit(context)
            return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream is not None:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            await admit(context)
            async for item in inner_us(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_unary is not None:
        inner_su = handler.stream_unary

        async def stream_unary(requests: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            await admit(context)
            return await inner_su(requests, context)

        return grpc.stream_unary_rpc_method_handler(
            stream_unary, handler.request_deserializer, handler.response_serializer
        )
    inner_ss = handler.stream_stream

    async def stream_stream(requests: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        await admit(context)
        async for item in inner_ss(requests, context):
            yield item

    return grpc.stream_stream_rpc_method_handler(
        stream_stream, handler.request_deserializer, handler.response_serializer
    )
