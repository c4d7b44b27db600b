"""Messages: a channel's templates compiled once, and each recipient's RFC 5322 bytes.

The MIME structure is built by hand from a skeleton prepared once per channel: building an
`email.message.EmailMessage` per recipient costs several times more than the SMTP exchange.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import hmac
import itertools
import json
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.utils import formataddr, formatdate
from typing import Any
from urllib.parse import quote

import idna

from campaignd.plugin import ChannelInfo, Options, Recipient, Renderer, TemplateSet
from campaignd.plugin.templates import Rendering
from campaignd_email import settings, web

# The content fields that are templates; the HTML body is autoescaped.
TEMPLATE_FIELDS = ("subject", "from_name", "text", "html")

CRLF = "\r\n"
_LINE = 78  # the line length RFC 5322 recommends; header values are folded to it
# A body goes as 7bit when it is printable ASCII (tabs and line breaks allowed) in lines of at
# most 998 characters; anything else goes quoted-printable.
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_LONGEST_LINE = 998
# Control characters end header lines or confuse readers: in a header value they become spaces.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
# What an envelope address may not contain (the daemon validated it; this keeps headers safe).
_ADDRESS = re.compile(r"[^\x00-\x20\x7f@<>()\[\],;:\"\\]+@[^\x00-\x20\x7f@<>()\[\],;:\"\\]+")
_ENCODED_WORD_BYTES = 42  # =?utf-8?b?...?= around the base64 of 42 bytes is 68 characters
_LONGEST_WORD = 900  # a longer word cannot be folded within a line: it is encoded instead
_TOKEN_LENGTH = 32
# Where the composer is told the HTTP listener's URL (not a configurable option).
LISTENER_OPTION = " listener"


class AddressError(ValueError):
    """A recipient's address cannot be written into a message."""


@dataclass(frozen=True, slots=True)
class Built:
    """One recipient's message, ready for SMTP."""

    recipient: str  # the envelope recipient, ASCII
    message_id: str  # with its angle brackets
    subject: str
    preview: str  # the text part, or the HTML part when there is no text
    data: bytes
    sender: str = ""  # the envelope sender (MAIL FROM): a VERP address, or "" for from_address


class Composer:
    """One channel's messages: its compiled templates and the header and MIME parts they share."""

    def __init__(self, channel: ChannelInfo, options: Options) -> None:
        content = channel.content
        self.campaign = channel.campaign
        self.sender = str(content.get("from_address") or "")
        self._campaign_id = channel.campaign.rpartition("/")[2]
        self._channel_id = channel.channel_id
        self.templates = TemplateSet(
            {field: str(content.get(field) or "") for field in TEMPLATE_FIELDS}, html=frozenset({"html"})
        )
        domain = str(options.get("message_id_domain") or settings.domain_of(self.sender) or "localhost")
        self._id_prefix = f"<{_atom(self._campaign_id)}.{_atom(self._channel_id)}."
        self._id_suffix = f"@{domain}>"
        self._unsubscribe = str(content.get("unsubscribe_url") or options.get("unsubscribe_url") or "")
        self._quoted_campaign = quote(self._campaign_id, safe="")
        self._quoted_channel = quote(self._channel_id, safe="")
        secret = options.get("unsubscribe_secret")
        self._signer = (
            hmac.new(str(secret).encode(), digestmod=hashlib.sha256)
            if secret and "{token}" in self._unsubscribe
            else None
        )
        # The daemon's HTTP listener, when it is on and the type has a secret to sign links with:
        # it serves the unsubscribe link when none is configured, and the tracking links.
        listener = str(options.get(LISTENER_OPTION) or "")
        self._secret = str(secret or "")
        self._listener = listener if listener and self._secret else ""
        self._track = bool(self._listener) and content.get("track") is True
        domain = str(options.get("bounce_domain") or "")
        self._bounce_domain = domain if domain and self._secret else ""
        self._boundary = f"=_{secrets.token_hex(16)}"
        # Message-IDs are unique by message id and a serial; the random salt, drawn once, keeps
        # them apart across processes and restarts without a getrandom call per message.
        self._salt = secrets.token_hex(6)
        self._serial = itertools.count(1)
        from_name = self.templates.sources["from_name"]
        # A From header without a template is the same for everyone: made once.
        self._from = (
            "" if "{" in from_name else _address_header(" ".join(_clean(from_name).split()), self.sender)
        )
        self._static = self._static_headers(content)
        self._has_text = bool(content.get("text"))
        self._has_html = bool(content.get("html"))

    def _static_headers(self, content: Mapping[str, Any]) -> str:
        lines = []
        reply_to = content.get("reply_to")
        if reply_to:
            lines.append(f"Reply-To: {_clean(str(reply_to))}")
        lines.append("MIME-Version: 1.0")
        return CRLF.join(lines) + CRLF

    def unsubscribe_url(self, recipient: Recipient) -> str:
        """The recipient's unsubscribe URL, or "" when none is configured."""
        if not self._unsubscribe:
            if self._listener:
                return web.unsubscribe_link(
                    self._listener, self._secret, self._campaign_id, self._channel_id, recipient.message_id
                )
            return ""
        token = ""
        if self._signer is not None:
            signer = self._signer.copy()
            message = f"{self._campaign_id}:{self._channel_id}:{recipient.message_id}:{recipient.address}"
            signer.update(message.encode())
            token = signer.hexdigest()[:_TOKEN_LENGTH]
        return self._unsubscribe.format(
            campaign=self._quoted_campaign,
            channel=self._quoted_channel,
            message=recipient.message_id,
            address=quote(recipient.address, safe=""),
            token=token,
        )

    async def render(
        self, recipients: Sequence[Recipient], renderer: Renderer
    ) -> list[tuple[str, Rendering]]:
        """Each recipient's unsubscribe URL and rendered templates (or the TemplateError that kept
        them from rendering), in one call to the renderer."""
        urls = [self.unsubscribe_url(recipient) for recipient in recipients]
        rendered = await renderer.render(
            self.templates,
            recipients,
            [{"unsubscribe_url": url} for url in urls],
            {"campaign": self.campaign},
        )
        return list(zip(urls, rendered, strict=True))

    def build(self, recipient: Recipient, fields: Mapping[str, str], url: str) -> Built:
        """The message for one recipient from its rendered templates and unsubscribe URL;
        AddressError when its address cannot be written into a message."""
        to = envelope_address(recipient.address)
        subject = " ".join(_clean(fields["subject"]).split())
        from_header = self._from
        if not from_header:
            name = " ".join(_clean(fields["from_name"]).split())
            from_header = _address_header(name, self.sender)
        text = fields["text"] if self._has_text else None
        html = fields["html"] if self._has_html else None
        if html is not None and self._track:
            html = web.track(
                html,
                self._listener,
                self._secret,
                self._campaign_id,
                self._channel_id,
                recipient.message_id,
                url,
            )
        message_id = (
            f"{self._id_prefix}{recipient.message_id}.{next(self._serial)}.{self._salt}{self._id_suffix}"
        )
        head = [
            f"From: {from_header}",
            f"To: {to}",
            _header("Subject", subject),
            f"Date: {_date()}",
            f"Message-ID: {message_id}",
        ]
        if url:
            head.append(f"List-Unsubscribe: <{url}>{CRLF}List-Unsubscribe-Post: List-Unsubscribe=One-Click")
        head.append(self._static)
        data = CRLF.join(head).encode("ascii") + self._body(text, html)
        preview = text if text is not None else html or ""
        sender = ""
        if self._bounce_domain and recipient.message_id > 0:
            sender = web.verp_address(self._secret, recipient.message_id, self._bounce_domain)
        return Built(to, message_id, subject, preview, data, sender)

    def _body(self, text: str | None, html: str | None) -> bytes:
        if text is None or html is None:
            kind = "plain" if html is None else "html"
            encoding, body = self._encode(text if text is not None else html or "")
            head = f'Content-Type: text/{kind}; charset="utf-8"{CRLF}Content-Transfer-Encoding: {encoding}'
            return f"{head}{CRLF}{CRLF}".encode() + body + (b"" if body.endswith(b"\r\n") else b"\r\n")
        delimiter = f"--{self._boundary}{CRLF}"
        out = [f'Content-Type: multipart/alternative;{CRLF} boundary="{self._boundary}"{CRLF}{CRLF}'.encode()]
        for kind, source in (("plain", text), ("html", html)):
            encoding, body = self._encode(source)
            out.append(
                f'{delimiter}Content-Type: text/{kind}; charset="utf-8"{CRLF}'
                f"Content-Transfer-Encoding: {encoding}{CRLF}{CRLF}".encode()
            )
            out.append(body)
            out.append(b"\r\n")
        out.append(f"--{self._boundary}--{CRLF}".encode())
        return b"".join(out)

    def _encode(self, body: str) -> tuple[str, bytes]:
        body = body.replace("\r\n", "\n").replace("\r", "\n")
        # Quoted-printable output never holds "=_", which starts the boundary; a 7bit body could.
        if (
            body.isascii()
            and not _ASCII_CONTROL.search(body)
            and (len(body) <= _LONGEST_LINE or max(map(len, body.split("\n"))) <= _LONGEST_LINE)
            and self._boundary not in body
        ):
            return "7bit", body.encode("ascii").replace(b"\n", b"\r\n")
        return "quoted-printable", binascii.b2a_qp(body.encode(), istext=True).replace(b"\n", b"\r\n")


@functools.lru_cache(maxsize=64)
def _composer(campaign: str, channel_id: str, content: str, options: str) -> Composer:
    return Composer(
        ChannelInfo(campaign, channel_id, settings.TYPE, json.loads(content)), json.loads(options)
    )


def composer(channel: ChannelInfo, options: Options) -> Composer:
    """The composer of `channel`, compiled once for each content and options it is sent with."""
    return _composer(
        channel.campaign,
        channel.channel_id,
        json.dumps(channel.content, sort_keys=True, default=str),
        json.dumps(
            {**options, LISTENER_OPTION: web.LISTENER.get("base_url", "")}, sort_keys=True, default=str
        ),
    )


def envelope_address(address: str) -> str:
    """`address` as the envelope and the To header carry it; AddressError when it cannot be."""
    if not _ADDRESS.fullmatch(address) or len(address) > 320:
        raise AddressError(f"{address!r} is not an address a message can be sent to")
    if address.isascii():
        return address
    local, _, domain = address.rpartition("@")
    if not local.isascii():
        raise AddressError(f"{address!r} has a non-ASCII local part, which needs SMTPUTF8")
    try:
        return f"{local}@{idna.encode(domain, uts46=True).decode('ascii')}"
    except idna.IDNAError as exc:
        raise AddressError(f"{address!r} has an invalid domain: {exc}") from None


def _clean(value: str) -> str:
    return _CONTROL.sub(" ", value)


def _atom(value: str) -> str:
    # Message-ID's left part is a dot-atom; ids are [a-z0-9-] already, this only makes sure.
    return re.sub(r"[^A-Za-z0-9-]", "-", value)


def _header(name: str, value: str) -> str:
    """A header line for an unstructured value: RFC 2047 encoded words when it is not ASCII (or
    has a word too long for a line), else folded at spaces when it is long."""
    line = f"{name}: {value}"
    if len(line) <= _LINE and value.isascii():
        return line
    words = value.split(" ")
    if not value.isascii() or max(map(len, words)) > _LONGEST_WORD:
        return f"{name}: {_encoded_words(value)}"
    lines: list[str] = []
    start = current = f"{name}:"
    for word in words:
        if len(current) + 1 + len(word) > _LINE and current != start:
            lines.append(current)
            current = ""
        current += " " + word
    lines.append(current)
    return CRLF.join(lines)


def _encoded_words(value: str) -> str:
    raw = value.encode()
    words = []
    start = 0
    while start < len(raw):
        end = min(start + _ENCODED_WORD_BYTES, len(raw))
        # Never split a UTF-8 sequence between two words: back up over continuation bytes.
        while end < len(raw) and raw[end] & 0xC0 == 0x80:
            end -= 1
        words.append(f"=?utf-8?b?{binascii.b2a_base64(raw[start:end], newline=False).decode()}?=")
        start = end
    return (CRLF + " ").join(words)


def _address_header(name: str, address: str) -> str:
    if not name:
        return address
    if name.isascii():
        return formataddr((name, address))
    return f"{_encoded_words(name)} <{address}>"


def _date() -> str:
    return _format_date(int(time.time()))


@functools.lru_cache(maxsize=1)
def _format_date(second: int) -> str:
    return formatdate(second, usegmt=True)
