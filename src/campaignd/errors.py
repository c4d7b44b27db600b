"""Errors the daemon reports to clients; the API turns each into a google.rpc.Status (AIP-193).

Raised anywhere below the API, mapped in one place (`campaignd.api.errors`).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

DOMAIN = "campaignd.io"


class Code(Enum):
    """The gRPC status codes the daemon uses for client-visible errors."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: its path in the request (e.g. `campaign.channels[0].type`) and why."""

    field: str
    description: str


@dataclass
class ApiError(Exception):
    """An error with a status code, a machine-readable reason, and optional field violations."""

    code: Code
    reason: str
    message: str
    violations: list[FieldViolation] = field(default_factory=list)
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"


def invalid_argument(violations: Iterable[FieldViolation], message: str = "") -> ApiError:
    """INVALID_ARGUMENT listing every bad field."""
    found = list(violations)
    text = message or "; ".join(f"{v.field}: {v.description}" for v in found)
    return ApiError(Code.INVALID_ARGUMENT, "INVALID_ARGUMENT", text, found)


def not_found(resource: str) -> ApiError:
    """NOT_FOUND for a resource name."""
    return ApiError(
        Code.NOT_FOUND, "NOT_FOUND", f"{resource} does not exist", metadata={"resource": resource}
    )


def already_exists(resource: str) -> ApiError:
    """ALREADY_EXISTS for a resource name."""
    return ApiError(
        Code.ALREADY_EXISTS, "ALREADY_EXISTS", f"{resource} already exists", metadata={"resource": resource}
    )


def etag_mismatch(resource: str) -> ApiError:
    """ABORTED: the client acted on a stale version (AIP-154)."""
    return ApiError(
        Code.ABORTED,
        "ETAG_MISMATCH",
        f"{resource} has changed since it was read; read it again and retry",
        metadata={"resource": resource},
    )


def failed_precondition(reason: str, message: str, **metadata: str) -> ApiError:
    """FAILED_PRECONDITION with a machine-readable reason (e.g. ILLEGAL_TRANSITION)."""
    return ApiError(Code.FAILED_PRECONDITION, reason, message, metadata=metadata)


def new_error_id() -> str:
    """An id that ties an error a client sees to the log line holding its details."""
    return secrets.token_hex(8)


def internal_message(error_id: str) -> str:
    """The one sentence clients get for an unexpected failure; the details are only in the log."""
    return f"an unexpected error occurred; the daemon's log has the details under error_id {error_id}"


def internal(error_id: str) -> ApiError:
    """INTERNAL for an unexpected failure, naming the log entry that has the details."""
    return ApiError(Code.INTERNAL, "INTERNAL", internal_message(error_id), metadata={"error_id": error_id})
