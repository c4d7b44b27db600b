"""The sms channel for campaignd: SMPP 3.4 and Kannel transports, GSM-7/UCS-2 parts, delivery
receipts and opt-out replies. Configuration and behaviour: docs/sms.md."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Awaitable, Sequence
from typing import Any

from campaignd.plugin import (
    ChannelInfo,
    ChannelSemantics,
    ChannelType,
    Content,
    ContentError,
    EditPolicy,
    EventSink,
    FieldViolation,
    Gate,
    HttpRoute,
    Options,
    Recipient,
    Rendered,
    Renderer,
    SendResult,
    SendStatus,
    TemplateError,
    TemplateSet,
    Transport,
    hookimpl,
)
from campaignd.plugin.templates import check_template
from campaignd_sms import kannel, settings
from campaignd_sms.encoding import Encoded, encode
from campaignd_sms.link import SmsTransport, open_transport

try:
    __version__ = importlib.metadata.version("campaignd-sms")
except importlib.metadata.PackageNotFoundError:
    __version__ = "0"

# SendResult.parts, Rendered.parts/encoding, InboundEvent.reason, EventKind.OPTED_IN,
# admit(message_id=...) (3); the kannel callbacks on the daemon's HTTP listener (4).
CAMPAIGND_HOOK_API = 5
TYPE = settings.TYPE
# TCPA quiet hours: nothing is sent before 08:00 or after 21:00 in the recipient's time zone.
QUIET_HOURS = {"start_time": "08:00", "end_time": "21:00"}
PREVIEW_NUMBERS = ("+14155550100",)


@hookimpl
def campaignd_channel_types() -> list[ChannelType]:
    """The sms channel type."""
    return [
        ChannelType(
            TYPE,
            address="phone",
            fields=settings.CONTENT_FIELDS,
            description="SMS over SMPP 3.4 or Kannel: GSM-7/UCS-2 parts, delivery receipts, opt-out replies",
            version=__version__,
            # inbound: receipts and replies come through the transport, so it opens at start
            capabilities=frozenset({"receipts", "inbound"}),
            default_window=QUIET_HOURS,
            options=settings.TYPE_OPTIONS,
            uses_transports=True,
            transport_options=settings.TRANSPORT_OPTIONS,
        )
    ]


@hookimpl
def campaignd_channel_semantics(channel_type: str) -> ChannelSemantics | None:
    """Stop leaves the channel restartable, and a SCHEDULED channel may change only its schedule
    (SPEC §6.3)."""
    if channel_type != TYPE:
        return None
    return ChannelSemantics(restartable=True, edit_while_scheduled=EditPolicy.SCHEDULE_ONLY)


@hookimpl
def campaignd_validate_options(
    channel_type: str, options: Options, transport: str | None
) -> list[FieldViolation]:
    """Check [channel_types.sms] (`transport` None) or one sms transport's options."""
    if channel_type != TYPE:
        return []
    if transport is None:
        return settings.check_type_options(options)
    return settings.check_transport_options(options)


@hookimpl
def campaignd_validate_channel(
    channel_type: str, content: Content, launching: bool, options: Options
) -> list[FieldViolation]:
    """A text that compiles, a sender that is an alphanumeric id or a number, and at launch a
    text without template syntax that fits in `max_parts` (a template is measured for each
    recipient when it is rendered: validation renders nothing)."""
    if channel_type != TYPE:
        return []
    problems = settings.check_sender(content.get("sender"))
    text = content.get("text")
    problem = check_template(text)
    if problem:
        problems.append(FieldViolation("text", problem))
    elif launching and isinstance(text, str) and text.strip() == "" and text:
        problems.append(FieldViolation("text", "must not be only spaces"))
    elif launching and isinstance(text, str) and text and not templated(text):
        limit = settings.max_parts(options)
        encoded = encode(text)
        if len(encoded.parts) > limit:
            problems.append(FieldViolation("text", _too_long(encoded, limit)))
    return problems


EMPTY = "the text is empty for this recipient"
# Jinja's delimiters: a text without them is sent as written, "{" (a GSM-7 character) included.
_DELIMITERS = ("{{", "{%", "{#")


def templated(text: str) -> bool:
    """Whether `text` has template syntax, and so must be rendered for each recipient."""
    return any(delimiter in text for delimiter in _DELIMITERS)


class _UnsendableError(ContentError):
    """A rendered text no SMS is sent for: `reason` "empty" or "too_long", and the parts it
    would take."""

    def __init__(self, message: str, reason: str, parts: int = 1) -> None:
        super().__init__(message, field="text")
        self.reason = reason
        self.parts = parts


def _sendable(text: str, limit: int) -> Encoded:
    """The encoded text; _UnsendableError when it is blank (a template can render nothing for
    one recipient) or takes more than `limit` parts."""
    if not text.strip():
        raise _UnsendableError(EMPTY, "empty")
    encoded = encode(text)
    if len(encoded.parts) > limit:
        raise _UnsendableError(_too_long(encoded, limit), "too_long", len(encoded.parts))
    return encoded


def _too_long(encoded: Encoded, limit: int) -> str:
    return (
        f"the message takes {len(encoded.parts)} parts ({encoded.units} {encoded.encoding} "
        f"characters); the most is {limit} ([channel_types.sms] max_parts)"
    )


@hookimpl
def campaignd_render(
    channel_type: str, channel: ChannelInfo, recipient: Recipient, options: Options, renderer: Renderer
) -> Awaitable[Rendered] | None:
    """The text `recipient` would get, with its encoding and parts, rendered by `renderer`;
    a TemplateError when the template fails, a ContentError naming `text` when the text is empty
    or longer than max_parts."""
    if channel_type != TYPE:
        return None
    return _render(channel, recipient, options, renderer)


async def _render(
    channel: ChannelInfo, recipient: Recipient, options: Options, renderer: Renderer
) -> Rendered:
    [text] = await render_texts(channel, [recipient], renderer)
    if isinstance(text, TemplateError):
        raise text
    encoded = _sendable(text, settings.max_parts(options))
    sender = channel.content.get("sender", "")
    parts = len(encoded.parts)
    first_line = text.splitlines()[0] if text else ""
    summary = f"From {sender}: {first_line[:60]}{'…' if len(first_line) > 60 else ''}"
    return Rendered(
        summary=summary,
        text=text,
        data=b"".join(encoded.parts),
        parts=parts,
        encoding=str(encoded.encoding),
    )


async def render_texts(
    channel: ChannelInfo, recipients: Sequence[Recipient], renderer: Renderer
) -> list[str | TemplateError]:
    """Each recipient's text, or the TemplateError that kept it from rendering: one call to the
    daemon's renderer for the whole batch, none for a text without template syntax."""
    source = str(channel.content.get("text", ""))
    if not templated(source):
        return [source] * len(recipients)
    rendered = await renderer.render(TemplateSet({"text": source}), recipients)
    return [fields if isinstance(fields, TemplateError) else fields["text"] for fields in rendered]


@hookimpl
def campaignd_open_transport(
    channel_type: str, transport: Transport, events: EventSink
) -> Awaitable[SmsTransport] | None:
    """An smpp or kannel transport; it connects when the first batch needs it, and reports
    receipts and opt-out replies to `events`."""
    if channel_type != TYPE:
        return None
    return open_transport(transport, events)


@hookimpl
def campaignd_close_transport(channel_type: str, transport: Transport, client: Any) -> Awaitable[None] | None:
    """Unbind (smpp) or stop the callback listener (kannel)."""
    if channel_type != TYPE or not isinstance(client, SmsTransport):
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
    """Send a batch through the transport, its text rendered by `renderer`, each message
    weighed by its parts at the gate."""
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
    if not isinstance(client, SmsTransport):
        raise TypeError(f"sms channels send through an sms transport, not {type(client).__name__}")
    sender = settings.parse_sender(str(channel.content.get("sender", "")))
    limit = settings.max_parts(options)
    concatenation = settings.concatenation(options)
    results: list[SendResult] = []
    sends = []
    texts = await render_texts(channel, recipients, renderer)
    for recipient, text in zip(recipients, texts, strict=True):
        if isinstance(text, TemplateError):
            results.append(
                SendResult(recipient.message_id, SendStatus.FAILED, error=str(text), reason="template_error")
            )
            continue
        try:
            encoded = _sendable(text, limit)
        except _UnsendableError as exc:
            results.append(
                SendResult(
                    recipient.message_id,
                    SendStatus.FAILED,
                    error=str(exc),
                    reason=exc.reason,
                    parts=exc.parts,
                )
            )
            continue
        sends.append((recipient, encoded))
    results.extend(await client.send(sends, sender, concatenation, gate))
    return results


@hookimpl
def campaignd_http_routes(channel_type: str, base_url: str) -> list[HttpRoute]:
    """Kannel's delivery reports and inbound messages, when the daemon's HTTP listener is on:
    kannel transports then open no listener of their own."""
    if channel_type != TYPE:
        return []
    kannel.LISTENER["base_url"] = base_url
    return kannel.routes()
