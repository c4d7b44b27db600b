"""The email channel for campaignd: SMTP transports, personalised MIME messages, RFC 8058
one-click unsubscribe. Configuration and behaviour: docs/email.md."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Awaitable, Sequence
from typing import Any

from campaignd.plugin import (
    ChannelInfo,
    ChannelSemantics,
    ChannelType,
    Content,
    EventSink,
    FieldViolation,
    Gate,
    Options,
    Recipient,
    Rendered,
    SendResult,
    Transport,
    hookimpl,
)
from campaignd_email import settings
from campaignd_email.message import composer
from campaignd_email.smtp import Pool, open_pool, send_batch
from campaignd_email.templates import TEMPLATE_FIELDS, check_template

try:
    __version__ = importlib.metadata.version("campaignd-email")
except importlib.metadata.PackageNotFoundError:
    __version__ = "0"

TYPE = settings.TYPE
# Hook API 3: the gate is told which message each send is (`admit(message_id=...)`).
CAMPAIGND_HOOK_API = 3


@hookimpl
def campaignd_channel_types() -> list[ChannelType]:
    """The email channel type."""
    return [
        ChannelType(
            TYPE,
            address="email",
            fields=settings.CONTENT_FIELDS,
            description="email over SMTP: personalised text and HTML, one-click unsubscribe",
            version=__version__,
            capabilities=frozenset(),
            options=settings.TYPE_OPTIONS,
            uses_transports=True,
            transport_options=settings.TRANSPORT_OPTIONS,
        )
    ]


@hookimpl
def campaignd_channel_semantics(channel_type: str) -> ChannelSemantics | None:
    """Stopping is final, and editing a SCHEDULED channel returns it to DRAFT (SPEC §6.3)."""
    return ChannelSemantics() if channel_type == TYPE else None


@hookimpl
def campaignd_validate_options(
    channel_type: str, options: Options, transport: str | None
) -> list[FieldViolation]:
    """Check [channel_types.email] (`transport` None) or one email transport's options."""
    if channel_type != TYPE:
        return []
    if transport is None:
        return settings.check_type_options(options)
    return settings.check_transport_options(options)


@hookimpl
def campaignd_validate_channel(
    channel_type: str, content: Content, launching: bool, options: Options
) -> list[FieldViolation]:
    """Templates that compile in the sandbox, valid addresses, and at launch a body and an
    unsubscribe URL."""
    if channel_type != TYPE:
        return []
    problems = []
    for field in TEMPLATE_FIELDS:
        problem = check_template(field, content.get(field))
        if problem:
            problems.append(FieldViolation(field, problem))
    problems += settings.check_address("from_address", content.get("from_address"))
    problems += settings.check_address("reply_to", content.get("reply_to"))
    problems += settings.check_url_template(
        "unsubscribe_url", content.get("unsubscribe_url"), have_secret=bool(options.get("unsubscribe_secret"))
    )
    if launching:
        if not content.get("text") and not content.get("html"):
            problems.append(FieldViolation("text", "a body is required: set text, html or both"))
        if not content.get("unsubscribe_url") and not options.get("unsubscribe_url"):
            problems.append(
                FieldViolation(
                    "unsubscribe_url",
                    "required: set it in the channel's content or in the daemon's"
                    " [channel_types.email] unsubscribe_url",
                )
            )
    return problems


@hookimpl
def campaignd_render(
    channel_type: str, channel: ChannelInfo, recipient: Recipient, options: Options
) -> Rendered | None:
    """The message as `recipient` would get it; ValueError when a template fails."""
    if channel_type != TYPE:
        return None
    built = composer(channel, options).build(recipient)
    return Rendered(summary=built.subject, text=built.preview, data=built.data)


@hookimpl
def campaignd_open_transport(
    channel_type: str, transport: Transport, events: EventSink
) -> Awaitable[Pool] | None:
    """A connection pool for an email transport; it connects when the first batch needs it.
    SMTP reports everything in its replies, so no inbound events come from it."""
    if channel_type != TYPE:
        return None
    return open_pool(transport)


@hookimpl
def campaignd_close_transport(channel_type: str, transport: Transport, client: Any) -> Awaitable[None] | None:
    """QUIT the pool's connections."""
    if channel_type != TYPE or not isinstance(client, Pool):
        return None
    return client.close()


@hookimpl
def campaignd_send(
    channel_type: str,
    channel: ChannelInfo,
    recipients: Sequence[Recipient],
    gate: Gate,
    transport: Transport | None,
    client: Any,
    options: Options,
) -> Awaitable[list[SendResult]] | None:
    """Send a batch through the transport's pool."""
    if channel_type != TYPE:
        return None
    return _send(channel, recipients, gate, client, options)


async def _send(
    channel: ChannelInfo, recipients: Sequence[Recipient], gate: Gate, client: Any, options: Options
) -> list[SendResult]:
    if not isinstance(client, Pool):
        raise TypeError(f"email channels send through an email transport, not {type(client).__name__}")
    return await send_batch(client, composer(channel, options), recipients, gate)
