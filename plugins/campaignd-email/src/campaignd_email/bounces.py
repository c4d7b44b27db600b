"""The bounce receiver: an SMTP server (aiosmtpd) for the bounce domain. Delivery status
notifications (RFC 3464) become BOUNCED events (soft for 4.x.x), feedback reports (RFC 5965)
COMPLAINED events. A report finds its message by the VERP envelope recipient it was sent to
(`bounces+m<id>-<token>@domain`), else by the Message-ID of the original message it quotes.
Mail that is neither, or that names no message, is counted and logged, and never stops the
receiver."""

from __future__ import annotations

import asyncio
import email
import email.policy
import hashlib
import os
import re
import socket
from collections import Counter
from email.message import Message
from email.parser import HeaderParser
from typing import Any

from aiosmtpd.smtp import SMTP

from campaignd import logs
from campaignd.plugin import EventKind, MessageEvent, MessageEventSink
from campaignd_email import web

log = logs.get("campaignd_email.bounces")
VERP = re.compile(r"^bounces\+m([0-9]{1,18})-([0-9a-f]{16})@", re.IGNORECASE)
MAX_SIZE = 1024 * 1024


def parse(data: bytes, recipients: list[str], keys: tuple[str, ...]) -> list[MessageEvent] | None:
    """The events a report says, [] for a report that needs nothing (e.g. `delivered`), or None
    when the mail is no report this receiver understands."""
    message = email.message_from_bytes(data, policy=email.policy.default)
    if message.get_content_type() != "multipart/report":
        return None
    kind = str(message.get_param("report-type", "")).lower()
    target = _verp(recipients, keys)
    provider_id = "" if target is not None else _original_id(message)
    if target is None and not provider_id:
        return None
    event_id = "email-report:" + hashlib.sha256(data).hexdigest()[:40]
    if kind == "delivery-status":
        found = _delivery_status(message)
        if found is None:
            return None
        action, status, diagnostic = found
        if action not in ("failed", "delayed"):
            return []
        soft = action == "delayed" or status.startswith("4")
        detail = f"{status} {diagnostic}".strip()[:1000]
        return [MessageEvent(event_id, EventKind.BOUNCED, target, provider_id, detail=detail, soft=soft)]
    if kind == "feedback-report":
        feedback = _part(message, "message/feedback-report")
        if feedback is None:
            return None
        fields = HeaderParser().parsestr(_text(feedback))
        detail = f"Feedback-Type: {fields.get('Feedback-Type', 'unknown')}"[:1000]
        return [MessageEvent(event_id, EventKind.COMPLAINED, target, provider_id, detail=detail)]
    return None


def _verp(recipients: list[str], keys: tuple[str, ...]) -> tuple[str, str, int] | None:
    for recipient in recipients:
        found = VERP.match(recipient)
        if found and any(web.verp_token(key, int(found[1])) == found[2].lower() for key in keys):
            return ("", "", int(found[1]))
    return None


def _part(message: Message, content_type: str) -> Message | None:
    for part in message.walk():
        if part.get_content_type() == content_type:
            return part
    return None


def _text(part: Message) -> str:
    payload = part.get_payload()
    if isinstance(payload, list):
        return "".join(str(p) for p in payload)
    if isinstance(payload, str):
        return payload
    raw = part.get_payload(decode=True)
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""


def _original_id(message: Message) -> str:
    """The Message-ID of the original message a report quotes (whole or its headers)."""
    for part in message.walk():
        kind = part.get_content_type()
        if kind == "message/rfc822":
            payload = part.get_payload()
            inner = payload[0] if isinstance(payload, list) and payload else None
            if isinstance(inner, Message) and inner.get("Message-ID"):
                return str(inner["Message-ID"]).strip()
        elif kind == "text/rfc822-headers":
            headers = HeaderParser().parsestr(_text(part))
            if headers.get("Message-ID"):
                return str(headers["Message-ID"]).strip()
    return ""


def _delivery_status(message: Message) -> tuple[str, str, str] | None:
    """(action, status, diagnostic) of the first recipient the DSN reports on."""
    part = _part(message, "message/delivery-status")
    if part is None:
        return None
    payload = part.get_payload()
    blocks = [b for b in payload if isinstance(b, Message)] if isinstance(payload, list) else []
    for block in blocks[1:] if len(blocks) > 1 else blocks:
        action = str(block.get("Action", "")).strip().lower()
        if action:
            status = str(block.get("Status", "")).strip()
            diagnostic = str(block.get("Diagnostic-Code", "")).strip()
            return action, status, diagnostic
    return None


class Receiver:
    """The aiosmtpd handler: applies each report it receives."""

    def __init__(self, address: str, keys: tuple[str, ...], events: MessageEventSink) -> None:
        self.address = address
        # The secrets VERP tokens are checked with; a reload replaces them.
        self.keys = keys
        self.events = events
        self.counts: Counter[str] = Counter()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd
        data = bytes(envelope.content or b"")
        try:
            found = parse(data, [str(r) for r in envelope.rcpt_tos], self.keys)
        except Exception:  # any malformed mail: counted and logged, never a crash
            log.warning("bounce receiver: mail not parsed", exc_info=True)
            found = None
        if found is None:
            self.counts["unparsed"] += 1
            log.warning(
                "bounce receiver: not a report about a sent message",
                so_far=self.counts["unparsed"],
                size=len(data),
                mail_from=str(envelope.mail_from),
                rcpt_to=[str(r) for r in envelope.rcpt_tos],
                start=repr(data[:200]),
            )
            return "250 2.0.0 accepted"
        if found:
            try:
                results = await self.events.record_messages(found)
            except Exception:
                log.exception("bounce receiver: events not recorded")
                return "451 4.3.0 try again later"
            for status, _ in results:
                self.counts[status] += 1
        else:
            self.counts["ignored"] += 1
        return "250 2.0.0 accepted"


# The receiver of this process, once started; `serve` is called again at every reload.
RUNNING: dict[str, Receiver] = {}
SERVERS: list[asyncio.AbstractServer] = []
_CALLED: list[str] = []
_TASKS: set[asyncio.Task[None]] = set()


def serve(address: str, keys: tuple[str, ...], events: MessageEventSink) -> None:
    """Start the receiver on `address` (host:port; "" for none) the first time; called again at a
    reload, give the running receiver the reloaded secrets. A changed address needs a restart.
    OSError with the address when it cannot be bound."""
    first = not _CALLED
    _CALLED.append(address)
    running = RUNNING.get("receiver")
    if running is not None:
        running.keys = keys
        if address != running.address:
            log.warning(
                "bounce_listen changes take effect only after a restart",
                listening=running.address,
                configured=address or None,
            )
        return
    if not address:
        return
    if not first:
        log.warning("bounce_listen changes take effect only after a restart", configured=address)
        return
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        # Bound here, before the daemon reports ready, so that a port in use stops the start.
        sock = socket.create_server((host, int(port)), family=family)
    except OSError as exc:
        cause = os.strerror(exc.errno) if exc.errno else str(exc)
        raise OSError(f"bounce receiver cannot listen on {address}: {cause}") from None
    sock.setblocking(False)
    receiver = Receiver(address, keys, events)
    RUNNING["receiver"] = receiver
    loop = asyncio.get_running_loop()

    async def start() -> None:
        server = await loop.create_server(
            lambda: SMTP(receiver, data_size_limit=MAX_SIZE, hostname="campaignd-bounces"), sock=sock
        )
        SERVERS.append(server)
        log.info("bounce receiver listening", port=sock.getsockname()[1])

    task = loop.create_task(start())
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)
