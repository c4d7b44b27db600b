"""The one place where errors become gRPC statuses with ErrorInfo and BadRequest details."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc import aio
from grpc_status import rpc_status

from campaignd import logs
from campaignd.errors import DOMAIN, ApiError, Code
from campaignd.store.db import storage_fault

log = logs.get("campaignd.api")

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Context = aio.ServicerContext[Any, Any]


def to_status(error: ApiError) -> status_pb2.Status:
    """A google.rpc.Status carrying the error's reason, metadata and field violations."""
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=dict(error.metadata))
    details = [info]
    if error.violations:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in error.violations
                ]
            )
        )
    packed = []
    for detail in details:
        any_detail = any_pb2.Any()
        any_detail.Pack(detail)
        packed.append(any_detail)
    return status_pb2.Status(
        code=code_pb2.Code.Value(error.code.value), message=error.message[:2000], details=packed
    )


async def abort(context: Context, error: ApiError) -> None:
    """End the call with `error`."""
    # grpc's typing lacks abort_with_status on the aio context, which has it.
    aio_context: Any = context
    await aio_context.abort_with_status(rpc_status.to_status(to_status(error)))


def _internal(exc: Exception, method: str) -> ApiError:
    cause = storage_fault(exc)
    if cause is not None:
        # Disk full, an I/O error, a lost connection: the call may work later; nothing was written.
        log.warning("the database cannot be used", method=method, cause=cause, error=str(exc).splitlines()[0])
        return ApiError(Code.UNAVAILABLE, "STORAGE_UNAVAILABLE", f"the database cannot be used: {cause}")
    log.exception("unexpected error", method=method)
    return ApiError(Code.INTERNAL, "INTERNAL", f"internal error: {type(exc).__name__}")


def unary(
    fn: Callable[[Any, Req, Context], Awaitable[Resp]],
) -> Callable[[Any, Req, Context], Awaitable[Resp]]:
    """Map ApiError (and anything unexpected, as INTERNAL) raised by a unary servicer method."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Req, context: Context) -> Resp:
        try:
            return await fn(self, request, context)
        except ApiError as exc:
            await abort(context, exc)
        except (aio.AbortError, grpc.RpcError):
            raise
        except Exception as exc:
            await abort(context, _internal(exc, fn.__name__))
        raise AssertionError("unreachable: abort raises")

    return wrapper


def streaming(
    fn: Callable[[Any, Req, Context], AsyncIterator[Resp]],
) -> Callable[[Any, Req, Context], AsyncIterator[Resp]]:
    """The same mapping for a server-streaming servicer method."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Req, context: Context) -> AsyncIterator[Resp]:
        try:
            async for item in fn(self, request, context):
                yield item
        except ApiError as exc:
            await abort(context, exc)
        except (aio.AbortError, grpc.RpcError):
            raise
        except Exception as exc:
            await abort(context, _internal(exc, fn.__name__))

    return wrapper
