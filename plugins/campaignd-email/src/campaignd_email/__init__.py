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
    HttpRoute,
    MessageEventSink,
    Options,
    Recipient,
    Rendered,
    Renderer,
    SendResult,
    Transport,
    hookimpl,
)
from campaignd.plugin.templates import check_template
from campaignd_email import settings, web
from campaignd_email.message import TEMPLATE_FIELDS, composer
from campaignd_email.smtp import Pool, open_pool, send_batch

try:
    __version__ = importlib.metadata.version("campaignd-email")
except importlib.metadata.PackageNotFoundError:
    __version__ = "0"

TYPE = settings.TYPE
# Renders through the daemon's renderer and names each message to admit() (API 3), mounts
# routes on its HTTP listener (API 4), and is told whether that listener is on (API 6).
CAMPAIGND_HOOK_API = 6


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
    channel_type: str, options: Options, transport: str | None, http_listener: bool
) -> list[FieldViolation]:
    """Check [channel_types.email] (`transport` None) or one email transport's options."""
    if channel_type != TYPE:
        return []
    if transport is None:
        return settings.check_type_options(options, http_listener=http_listener)
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
        problem = check_template(content.get(field), html=field == "html")
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
        served = bool(web.LISTENER) and bool(options.get("unsubscribe_secret"))
        if content.get("track") is True and not served:
            problems.append(
                FieldViolation(
                    "track", "needs the daemon's [http] listener and [channel_types.email] unsubscribe_secret"
                )
            )
        if not content.get("unsubscribe_url") and not options.get("unsubscribe_url") and not served:
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
    channel_type: str, channel: ChannelInfo, recipient: Recipient, options: Options, renderer: Renderer
) -> Awaitable[Rendered] | None:
    """The message as `recipient` would get it; TemplateError (a ValueError) when a template
    fails, AddressError (also one) when the address cannot be written into a message."""
    if channel_type != TYPE:
        return None
    return _render(channel, recipient, options, renderer)


async def _render(
    channel: ChannelInfo, recipient: Recipient, options: Options, renderer: Renderer
) -> Rendered:
    built_by = composer(channel, options)
    [(url, fields)] = await built_by.render([recipient], renderer)
    if isinstance(fields, Exception):
        raise fields
    built = built_by.build(recipient, fields, url)
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
    renderer: Renderer,
) -> Awaitable[list[SendResult]] | None:
    """Send a batch through the transport's pool, its templates rendered by `renderer`."""
    if channel_type != TYPE:
        return None
    return _send(channel, recipients, gate, client, options, renderer)


async def _send(
    channel: ChannelInfo,
    recipients: Sequence[Recipient],
    gate: Gate,
    client: Any,
    options: Options,
    renderer: Renderer,
) -> list[SendResult]:
    if not isinstance(client, Pool):
        raise TypeError(f"email channels send through an email transport, not {type(client).__name__}")
    return await send_batch(client, composer(channel, options), recipients, gate, renderer)


@hookimpl
def campaignd_http_routes(
    channel_type: str, options: Options, base_url: str, events: MessageEventSink
) -> list[HttpRoute]:
    """One-click unsubscribe, the open pixel and click redirects, when the type has an
    unsubscribe_secret to sign them with."""
    if channel_type != TYPE:
        return []
    return web.routes(options, base_url, events)
