"""The sms channel for campaignd: SMPP 3.4 and Kannel transports, GSM-7/UCS-2 parts, delivery
receipts and opt-out replies. Configuration and behaviour: docs/sms.md."""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import Awaitable, Sequence
from typing import Any

from campaignd.plugin import (
    ChannelInfo,
    ChannelSemantics,
    ChannelType,
    Content,
    EditPolicy,
    EventSink,
    FieldViolation,
    Gate,
    HttpRoute,
    Options,
    Recipient,
    Rendered,
    SendResult,
    SendStatus,
    Transport,
    hookimpl,
)
from campaignd_sms import kannel, settings
from campaignd_sms.encoding import Encoded, encode
from campaignd_sms.link import SmsTransport, open_transport
from campaignd_sms.text import RenderError, check_text, compile_text, render_text

try:
    __version__ = importlib.metadata.version("campaignd-sms")
except importlib.metadata.PackageNotFoundError:
    __version__ = "0"

# SendResult.parts, Rendered.parts/encoding, InboundEvent.reason and EventKind.OPTED_IN (3);
# the kannel callbacks on the daemon's HTTP listener (4).
CAMPAIGND_HOOK_API = 4
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
            capabilities=frozenset({"receipts"}),
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
    text that fits in `max_parts` for a sample recipient."""
    if channel_type != TYPE:
        return []
    problems = settings.check_sender(content.get("sender"))
    text = content.get("text")
    problem = check_text(text)
    if problem:
        problems.append(FieldViolation("text", problem))
    elif launching and isinstance(text, str) and text.strip() == "" and text:
        problems.append(FieldViolation("text", "must not be only spaces"))
    elif launching and isinstance(text, str) and text:
        limit = settings.max_parts(options)
        try:
            # A contact without attributes: the text as its fixed parts make it.
            encoded = encode(render_text(compile_text(text), PREVIEW_NUMBERS[0], {}))
        except RenderError:
            # It needs a contact's attributes; each message is measured when it is sent.
            pass
        else:
            if len(encoded.parts) > limit:
                problems.append(FieldViolation("text", _too_long(encoded, limit)))
    return problems


def _too_long(encoded: Encoded, limit: int) -> str:
    return (
        f"the message takes {len(encoded.parts)} parts ({encoded.units} {encoded.encoding} "
        f"characters); the most is {limit} ([channel_types.sms] max_parts)"
    )


@hookimpl
def campaignd_render(
    channel_type: str, channel: ChannelInfo, recipient: Recipient, options: Options
) -> Rendered | None:
    """The text `recipient` would get, with its encoding and parts; ValueError when the template
    fails or the text is longer than max_parts."""
    if channel_type != TYPE:
        return None
    text = render_text(
        compile_text(str(channel.content.get("text", ""))), recipient.address, recipient.contact
    )
    encoded = encode(text)
    limit = settings.max_parts(options)
    if len(encoded.parts) > limit:
        raise ValueError(_too_long(encoded, limit))
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
) -> Awaitable[list[SendResult]] | None:
    """Send a batch through the transport, each message weighed by its parts at the gate."""
    if channel_type != TYPE:
        return None
    return _send(channel, recipients, gate, client, options)


async def _send(
    channel: ChannelInfo, recipients: Sequence[Recipient], gate: Gate, client: Any, options: Options
) -> list[SendResult]:
    if not isinstance(client, SmsTransport):
        raise TypeError(f"sms channels send through an sms transport, not {type(client).__name__}")
    compiled = compile_text(str(channel.content.get("text", "")))
    sender = settings.parse_sender(str(channel.content.get("sender", "")))
    limit = settings.max_parts(options)
    concatenation = settings.concatenation(options)
    results: list[SendResult] = []
    sends = []
    for recipient in recipients:
        try:
            encoded = encode(render_text(compiled, recipient.address, recipient.contact))
        except RenderError as exc:
            results.append(
                SendResult(recipient.message_id, SendStatus.FAILED, error=str(exc), reason="template")
            )
            continue
        if len(encoded.parts) > limit:
            results.append(
                SendResult(
                    recipient.message_id,
                    SendStatus.FAILED,
                    error=_too_long(encoded, limit),
                    reason="too_long",
                    parts=len(encoded.parts),
                )
            )
            continue
        sends.append(client.send(recipient, encoded, sender, concatenation, gate))
    results.extend(await asyncio.gather(*sends))
    return results


@hookimpl
def campaignd_http_routes(channel_type: str, base_url: str) -> list[HttpRoute]:
    """Kannel's delivery reports and inbound messages, when the daemon's HTTP listener is on:
    kannel transports then open no listener of their own."""
    if channel_type != TYPE:
        return []
    kannel.LISTENER["base_url"] = base_url
    return kannel.routes()
