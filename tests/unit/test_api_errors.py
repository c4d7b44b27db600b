"""The one error mapping: an unexpected exception reaches the client as a sentence and an error id."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
import structlog.testing
from google.rpc import error_details_pb2, status_pb2

from campaignd.api.errors import unary


class _AbortedError(Exception):
    pass


class RecordingContext:
    """Stands in for grpc.aio's servicer context (a double: only abort_with_status is used)."""

    def __init__(self) -> None:
        self.status: Any = None

    async def abort_with_status(self, status: Any) -> None:
        self.status = status
        raise _AbortedError


class Servicer:
    """A servicer method failing the way a database fault does."""

    @unary
    async def broken(self, request: Any, context: Any) -> Any:
        raise RuntimeError('(sqlite3.OperationalError) no such table [SQL: SELECT secret FROM "x"]')


def test_an_unexpected_error_is_internal_with_an_error_id_and_no_exception_text() -> None:
    """The client gets INTERNAL, one fixed sentence and an error_id; the log entry with that id has
    the exception."""
    context = RecordingContext()
    # The decorated method is typed for a real ServicerContext; a recording one stands in.
    broken: Any = Servicer().broken
    with structlog.testing.capture_logs() as logs, pytest.raises(_AbortedError):
        asyncio.run(broken(object(), context))
    status = context.status
    assert status.code == grpc.StatusCode.INTERNAL
    assert "SQL" not in status.details
    assert "OperationalError" not in status.details
    [detail] = [d for d in _details(status) if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    info = error_details_pb2.ErrorInfo()
    detail.Unpack(info)
    error_id = info.metadata["error_id"]
    assert info.reason == "INTERNAL"
    assert status.details.endswith(f"under error_id {error_id}")
    [logged] = [entry for entry in logs if entry.get("error_id") == error_id]
    assert logged["method"] == "broken"
    assert "no such table" in str(logged["exc_info"])


def _details(status: Any) -> list[Any]:
    for key, value in status.trailing_metadata:
        if key == "grpc-status-details-bin":
            return list(status_pb2.Status.FromString(value).details)
    return []
