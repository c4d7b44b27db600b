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
from campaignd.errors import DOMAIN, ApiError, Code, internal, new_error_id
from campaignd.store.db import storage_fault

log = logs.get("campaignd.api")

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Context = aio.ServicerContext[Any, Any]


# The status travels in the trailers, and gRPC clients drop a response whose metadata passes
# 8 KiB by default (the details base64-encoded): the message and the violations are bounded
# so that a request with very many or very long problems still gets its answer.
MAX_MESSAGE = 1000
MAX_FIELD = 200
MAX_DESCRIPTION = 300
MAX_VIOLATION_BYTES = 3000


def to_status(error: ApiError) -> status_pb2.Status:
    """A google.rpc.Status carrying the error's reason, metadata and field violations."""
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=dict(error.metadata))
    details: list[Any] = [info]
    if error.violations:
        details.append(_bad_request(error))
    packed = []
    for detail in details:
        any_detail = any_pb2.Any()
        any_detail.Pack(detail)
        packed.append(any_detail)
    return status_pb2.Status(
        code=code_pb2.Code.Value(error.code.value), message=error.message[:MAX_MESSAGE], details=packed
    )


def _bad_request(error: ApiError) -> error_details_pb2.BadRequest:
    bad = error_details_pb2.BadRequest()
    for index, v in enumerate(error.violations):
        item = error_details_pb2.BadRequest.FieldViolation(
            field=v.field[:MAX_FIELD], description=v.description[:MAX_DESCRIPTION]
        )
        if bad.ByteSize() + item.ByteSize() > MAX_VIOLATION_BYTES:
            left = len(error.violations) - index
            bad.field_violations.add(field="", description=f"{left} more problems are not listed")
            break
        bad.field_violations.append(item)
    return bad


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
    # No exception text (SQL, paths, values) reaches the client: it gets the id of the log entry.
    error_id = new_error_id()
    log.error("unexpected error", method=method, error_id=error_id, exc_info=exc)
    return internal(error_id)


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
