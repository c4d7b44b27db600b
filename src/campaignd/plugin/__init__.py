"""The published plugin API: everything a channel plugin may import from campaignd.

A plugin is a module (usually an installed distribution registered under the entry-point group
`campaignd.channels`) whose functions are marked with `hookimpl` and named after the hook
specifications in `campaignd.plugin.hookspecs`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import pluggy

from campaignd.errors import FieldViolation
from campaignd.lifecycle import ChannelSemantics, EditPolicy

PROJECT = "campaignd"
ENTRY_POINT_GROUP = "campaignd.channels"
HOOK_API_VERSION = 1

hookimpl = pluggy.HookimplMarker(PROJECT)
hookspec = pluggy.HookspecMarker(PROJECT)

FieldKind = Literal["string", "number", "bool", "object", "list"]


@dataclass(frozen=True)
class ContentField:
    """One field of a channel type's content."""

    name: str
    kind: FieldKind = "string"
    required: bool = False
    max_length: int = 100_000
    description: str = ""


@dataclass(frozen=True)
class ChannelType:
    """A channel type a plugin provides: its name, which contact address it uses, its content."""

    name: str
    address: Literal["email", "phone"]
    fields: tuple[ContentField, ...] = ()
    description: str = ""
    version: str = ""
    capabilities: frozenset[str] = field(default_factory=frozenset)
    # The send window used when a channel sets none, in SendWindow's stored form
    # ({"days": [...], "start_time": "HH:MM", "end_time": "HH:MM"}); None means any time.
    default_window: Mapping[str, Any] | None = None

    def field(self, name: str) -> ContentField | None:
        """The declared field called `name`, if any."""
        return next((f for f in self.fields if f.name == name), None)


Content = dict[str, Any]


@dataclass(frozen=True)
class ChannelInfo:
    """The channel a batch belongs to."""

    campaign: str
    channel_id: str
    type: str
    content: Content


@dataclass(frozen=True)
class Recipient:
    """One message to send: its id, the address, the contact's fields, and which attempt this is."""

    message_id: int
    address: str
    contact: Mapping[str, Any]
    attempt: int


class SendStatus(enum.StrEnum):
    """What became of one message."""

    SENT = "sent"  # the provider accepted it
    DELIVERED = "delivered"  # the provider confirmed delivery at once
    RETRY = "retry"  # not accepted now (connection refused, 4xx, timeout): try again later
    FAILED = "failed"  # refused for good (5xx, invalid address)
    NOT_STARTED = "not_started"  # the gate was closed: it was never handed to the provider


@dataclass(frozen=True)
class SendResult:
    """The result of one message. `fatal` marks an error of the transport itself (e.g. refused
    authentication) rather than of this message."""

    message_id: int
    status: SendStatus
    provider_id: str = ""
    error: str = ""
    reason: str = ""
    fatal: bool = False


class Gate(Protocol):
    """Admits each send as it starts: it closes when the channel is paused or stopped, and paces
    sends to the channel's rate."""

    async def admit(self, weight: float = 1.0) -> bool:
        """Wait for the rate to allow `weight` units, then say whether the send may start now."""
        ...


__all__ = [
    "ENTRY_POINT_GROUP",
    "HOOK_API_VERSION",
    "ChannelInfo",
    "ChannelSemantics",
    "ChannelType",
    "Content",
    "ContentField",
    "EditPolicy",
    "FieldViolation",
    "Gate",
    "Recipient",
    "SendResult",
    "SendStatus",
    "hookimpl",
    "hookspec",
]
