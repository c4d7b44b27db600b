"""The published plugin API: everything a channel plugin may import from campaignd.

A plugin is a module (usually an installed distribution registered under the entry-point group
`campaignd.channels`) whose functions are marked with `hookimpl` and named after the hook
specifications in `campaignd.plugin.hookspecs`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import pluggy

from campaignd.errors import FieldViolation
from campaignd.lifecycle import ChannelSemantics, EditPolicy

PROJECT = "campaignd"
ENTRY_POINT_GROUP = "campaignd.channels"
# The version of the hook contract. A plugin that needs a newer one sets a module attribute
# `CAMPAIGND_HOOK_API = N`, and an older daemon refuses to load it rather than call it wrongly.
HOOK_API_VERSION = 6

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
    # For options read from the daemon's config: the value is given as a secret source
    # (`{ file = "..." }` or `{ env = "..." }`) and reaches the plugin as the secret's text.
    secret: bool = False


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
    # Options of the type as a whole, from the config's [channel_types.<name>] table.
    options: tuple[ContentField, ...] = ()
    # Whether channels of this type send through transports defined in the config's
    # [transports.<name>] tables, and the options such a transport takes.
    uses_transports: bool = False
    transport_options: tuple[ContentField, ...] = ()

    def field(self, name: str) -> ContentField | None:
        """The declared field called `name`, if any."""
        return next((f for f in self.fields if f.name == name), None)


Content = dict[str, Any]
Options = Mapping[str, Any]


@dataclass(frozen=True)
class Transport:
    """A transport from the config: how a channel type reaches its provider (e.g. one SMTP relay).

    `rate` is its messages per second (0: no limit), which the gate enforces; `concurrency` is how
    many sends it may have in flight at once, which the plugin must not exceed.
    """

    name: str
    channel_type: str
    rate: float
    concurrency: int
    options: Options


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


@dataclass(frozen=True)
class Rendered:
    """One message as it would be sent: a one-line `summary` (e.g. the subject), a readable `text`,
    the bytes a provider would receive, how many `parts` it is sent as (an SMS of 3 parts: 3),
    and its `encoding` where the type has a choice (e.g. "GSM-7", "UCS-2")."""

    summary: str
    text: str
    data: bytes = b""
    parts: int = 1
    encoding: str = ""


class SendStatus(enum.StrEnum):
    """What became of one message."""

    SENT = "sent"  # the provider accepted it
    DELIVERED = "delivered"  # the provider confirmed delivery at once
    RETRY = "retry"  # not accepted now (connection refused, 4xx, timeout): try again later
    FAILED = "failed"  # refused for good (5xx, invalid address)
    NOT_STARTED = "not_started"  # the gate was closed: it was never handed to the provider


# What the daemon keeps of a SendResult: a longer provider or part id is kept as its first
# PROVIDER_ID_LENGTH characters (a receipt naming the whole id still finds it), a longer reason or
# outcome as its first LABEL_LENGTH.
PROVIDER_ID_LENGTH = 200
LABEL_LENGTH = 63


@dataclass(frozen=True)
class SendResult:
    """The result of one message.

    `transport_down`: the transport could not be reached (connection refused or dropped before
    the message was accepted), so the message was not handed over; the daemon rests the transport
    and sends through another one. `fatal`: the transport is unusable until an operator acts
    (e.g. refused authentication); a channel whose every transport is fatal fails. `parts`: how
    many provider messages it took (an SMS of 3 parts: 3); stored on the message.

    `outcome`: what became of it in the channel's own terms (e.g. a call's "answered", "busy",
    "no_answer"), kept as the message's outcome and counted in reports. `talk_time`: seconds an
    answered call lasted. `retry_delay`: for RETRY, seconds until the next attempt when the plugin
    counts the attempts itself (it answers FAILED once they are used up); the daemon's
    `max_attempts` and back-off then do not apply. None: the daemon decides as for any RETRY.

    `part_ids`: for a SENT message in several parts whose receipts are still to come, the
    provider's id of each part. The daemon keeps them, so that a receipt reported for one part
    (`InboundEvent.part`) finds its message wherever and whenever it comes.
    """

    message_id: int
    status: SendStatus
    provider_id: str = ""
    error: str = ""
    reason: str = ""
    fatal: bool = False
    transport_down: bool = False
    parts: int = 1
    outcome: str = ""
    talk_time: float | None = None
    retry_delay: float | None = None
    part_ids: tuple[str, ...] = ()


class EventKind(enum.StrEnum):
    """What an inbound event says about a message or an address (SPEC §5)."""

    DELIVERED = "delivered"
    FAILED = "failed"
    BOUNCED = "bounced"  # a hard bounce: the address is suppressed
    OPENED = "opened"
    CLICKED = "clicked"
    COMPLAINED = "complained"  # the address is suppressed
    UNSUBSCRIBED = "unsubscribed"  # the address is suppressed
    OPTED_OUT = "opted_out"  # e.g. an SMS "STOP"; the address is suppressed
    OPTED_IN = "opted_in"  # e.g. an SMS "START": the address's opt-out suppression is lifted


@dataclass(frozen=True)
class InboundEvent:
    """An event a provider reported: about a sent message (found by `provider_id`) or about an
    `address` (an opt-out that answers no particular message). `reason`: for FAILED, the
    message's reason (e.g. a receipt's `UNDELIV`); default `failed`.

    `part`: a DELIVERED or FAILED receipt for one part, `provider_id` being the part's id. A
    message whose `SendResult.part_ids` named it is DELIVERED once every part is, FAILED at its
    first failed part; a part no message names is taken as a message's own `provider_id` (a
    message of one part, or one sent before its parts were kept)."""

    kind: EventKind
    provider_id: str = ""
    address: str = ""
    detail: str = ""
    reason: str = ""
    part: bool = False


class EventSink(Protocol):
    """Where a transport reports inbound events; the daemon applies them to messages and
    suppressions."""

    async def record(self, channel_type: str, events: Sequence[InboundEvent]) -> None:
        """Apply events; returns once they are stored."""
        ...


@dataclass(frozen=True)
class MessageEvent:
    """An event about one sent message, recorded once by `event_id` (RecordEvents, or a plugin's
    HTTP route). The message is found by `message` (campaign id, channel id, message id; an
    empty campaign or channel id matches any: message ids are unique in a database), else
    by `provider_id`, else by `recipient` (campaign id, channel id, address). `url`: the link of
    a CLICKED event; `soft`: a BOUNCED event that is a temporary failure."""

    event_id: str
    kind: EventKind
    message: tuple[str, str, int] | None = None
    provider_id: str = ""
    recipient: tuple[str, str, str] | None = None
    url: str = ""
    detail: str = ""
    soft: bool = False


class MessageEventSink(Protocol):
    """Where a plugin's HTTP routes record events about messages."""

    async def record_messages(self, events: Sequence[MessageEvent]) -> list[tuple[str, str]]:
        """Record `events` in one transaction; (status, reason) per event, status one of
        `applied`, `duplicate`, `refused`."""
        ...


@dataclass(frozen=True)
class HttpRoute:
    """A route a plugin mounts on the daemon's HTTP listener, under `/{channel type}/`: `method`
    (GET, POST, ...), `path` relative to that prefix (aiohttp syntax, e.g. `dlr/{id}`), and an
    aiohttp handler taking an `aiohttp.web.Request` and returning a response."""

    method: str
    path: str
    handler: Any


class Gate(Protocol):
    """Admits each send as it starts: it closes when the channel is paused or stopped, and paces
    sends to the channel's rate."""

    async def admit(self, weight: float = 1.0, message_id: int | None = None) -> bool:
        """Wait for the rate to allow `weight` units, then say whether the send of `message_id`
        (the recipient's `message_id`; hook API 3) may start now. Naming the message lets the
        daemon tell, after a crash, which messages never started; without it every message of
        the call counts as started from the first admit on."""
        ...


# Imported last: the templates module names Recipient, defined above.
from campaignd.plugin.templates import ContentError, Renderer, TemplateError, TemplateSet  # noqa: E402

__all__ = [
    "ENTRY_POINT_GROUP",
    "HOOK_API_VERSION",
    "LABEL_LENGTH",
    "PROVIDER_ID_LENGTH",
    "ChannelInfo",
    "ChannelSemantics",
    "ChannelType",
    "Content",
    "ContentError",
    "ContentField",
    "EditPolicy",
    "EventKind",
    "EventSink",
    "FieldViolation",
    "Gate",
    "HttpRoute",
    "InboundEvent",
    "MessageEvent",
    "MessageEventSink",
    "Options",
    "Recipient",
    "Rendered",
    "Renderer",
    "SendResult",
    "SendStatus",
    "TemplateError",
    "TemplateSet",
    "Transport",
    "hookimpl",
    "hookspec",
]
