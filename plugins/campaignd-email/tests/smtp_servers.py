"""Real SMTP servers for the tests: aiosmtpd in a thread, with counters and scripted replies."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import ipaddress
import pathlib
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from campaignd.plugin import ChannelInfo, InboundEvent, Recipient, Transport
from campaignd.rendering.pool import RenderPool

USER, PASSWORD = "campaignd", "s3cret-password"


@dataclass
class Stats:
    """What the server saw. Written by the server's thread, read by the test."""

    opened: int = 0
    active: int = 0
    most_active: int = 0
    mails: int = 0
    quits: int = 0
    messages: list[bytes] = field(default_factory=list)
    sessions: list[Any] = field(default_factory=list)
    recipients: list[str] = field(default_factory=list)
    mail_options: list[list[str]] = field(default_factory=list)
    reads: list[bytes] = field(default_factory=list)  # what each read from a client returned
    lock: threading.Lock = field(default_factory=threading.Lock)


class Handler:
    """Accepts every message, except as scripted: replies to MAIL in turn, a reply per recipient
    address, a delay or a dropped connection at DATA. The hook names are aiosmtpd's."""

    def __init__(self, stats: Stats, *, pipelining: bool = False) -> None:
        self.stats = stats
        self.pipelining = pipelining  # announce PIPELINING in EHLO (aiosmtpd does not by itself)
        self.mail_replies: list[str] = []  # replies to the next MAIL commands, one each
        self.rcpt_replies: dict[str, str] = {}
        self.keep_refused = False  # keep refused recipients, so DATA gets 354 all the same
        self.data_replies: dict[str, str] = {}
        self.drop_data = 0  # how many DATA commands to answer by closing the connection
        self.data_delay = 0.0
        self.session_delay = 0.0  # a pause at MAIL, to keep sessions overlapping

    async def handle_EHLO(  # noqa: N802
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:  # noqa: N802
        with self.stats.lock:
            self.stats.mails += 1
        if self.session_delay:
            await asyncio.sleep(self.session_delay)
        if self.mail_replies:
            return self.mail_replies.pop(0)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:  # noqa: N802
        reply = self.rcpt_replies.get(address)
        if reply:
            if self.keep_refused:
                envelope.rcpt_tos.append(address)
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        if self.drop_data > 0:
            self.drop_data -= 1
            server.transport.abort()
            return "250 never seen"
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        reply = self.data_replies.get(envelope.rcpt_tos[0])
        if reply:
            return reply
        with self.stats.lock:
            self.stats.messages.append(envelope.content)
            self.stats.recipients.extend(envelope.rcpt_tos)
            self.stats.mail_options.append(list(envelope.mail_options))
        return "250 OK queued"

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        with self.stats.lock:
            self.stats.quits += 1
        return "221 Bye"


class _CountingSMTP(SMTP):
    def __init__(self, stats: Stats, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stats = stats

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        with self._stats.lock:
            self._stats.opened += 1
            self._stats.active += 1
            self._stats.most_active = max(self._stats.most_active, self._stats.active)
            self._stats.sessions.append(self)

    def data_received(self, data: bytes) -> None:
        with self._stats.lock:
            self._stats.reads.append(bytes(data))
        super().data_received(data)

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        with self._stats.lock:
            self._stats.active -= 1
            self._stats.sessions.remove(self)


class _Controller(Controller):
    def __init__(self, stats: Stats, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stats = stats

    def factory(self) -> SMTP:
        return _CountingSMTP(self.stats, self.handler, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        # Bound to port 0: learn the port the system chose before the controller connects to it.
        assert isinstance(self.server, asyncio.Server)
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


@dataclass
class Server:
    """A running server: where it listens, its handler and what it saw."""

    port: int
    handler: Handler
    stats: Stats
    loop: asyncio.AbstractEventLoop

    def transport(self, concurrency: int = 2, **options: Any) -> Transport:
        """An email transport to this server (plain SMTP unless `options` say otherwise)."""
        return Transport(
            "relay",
            "email",
            0.0,
            concurrency,
            {"host": "127.0.0.1", "port": self.port, "security": "none"} | options,
        )

    def drop_sessions(self) -> None:
        """Close every open session from the server's side, as an idle timeout would."""
        with self.stats.lock:
            sessions = list(self.stats.sessions)
        for session in sessions:
            self.loop.call_soon_threadsafe(session.transport.close)


@contextlib.contextmanager
def smtp_server(*, pipelining: bool = False, **kwargs: Any) -> Iterator[Server]:
    """An aiosmtpd server on 127.0.0.1, announcing PIPELINING or not; `kwargs` go to aiosmtpd
    (tls_context, authenticator, …)."""
    stats = Stats()
    handler = Handler(stats, pipelining=pipelining)
    controller = _Controller(stats, handler, hostname="127.0.0.1", port=0, **kwargs)
    controller.start()
    try:
        # The controller's own probe connection is not the test's: wait for it to end, then count.
        deadline = time.monotonic() + 2
        while stats.active and time.monotonic() < deadline:
            time.sleep(0.005)
        stats.opened = stats.most_active = 0
        yield Server(controller.port, handler, stats, controller.loop)
    finally:
        controller.stop()


def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    """Accepts USER with PASSWORD only."""
    ok = (
        isinstance(data, LoginPassword) and data.login.decode() == USER and data.password.decode() == PASSWORD
    )
    return AuthResult(success=ok, handled=False)


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate for 127.0.0.1 and localhost."""

    cert_file: pathlib.Path
    key_file: pathlib.Path

    def server_context(self) -> ssl.SSLContext:
        """A server-side context presenting the certificate."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def make_certificate(directory: pathlib.Path) -> Certificate:
    """Write a new key and self-signed certificate into `directory`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "campaignd test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return Certificate(cert_file, key_file)


class Events:
    """An event sink that keeps what it is given."""

    def __init__(self) -> None:
        self.recorded: list[InboundEvent] = []

    async def record(self, channel_type: str, events: Sequence[InboundEvent]) -> None:
        self.recorded.extend(events)


class Gate:
    """A gate that admits while `open`, and counts what it admitted."""

    def __init__(self, admits: int | None = None) -> None:
        self.admits = admits  # None: always open; a number: admit that many, then close
        self.admitted = 0
        self.refused = 0

    async def admit(self, weight: float = 1.0, message_id: int | None = None) -> bool:
        if self.admits is not None and self.admitted >= self.admits:
            self.refused += 1
            return False
        self.admitted += 1
        return True


CONTENT = {
    "subject": "Hello {{ contact.first_name }}",
    "from_address": "news@example.com",
    "from_name": "Example News",
    "text": "Hi {{ contact.first_name }},\nunsubscribe: {{ unsubscribe_url }}\n",
    "html": "<p>Hi {{ contact.first_name }}</p>",
}
OPTIONS = {"unsubscribe_url": "https://example.com/u/{message}?a={address}"}


def channel(**content: Any) -> ChannelInfo:
    """An email channel of campaign `spring`, with CONTENT changed by `content`."""
    return ChannelInfo("campaigns/spring", "mail", "email", CONTENT | content)


def recipient(message_id: int, address: str = "", **attributes: Any) -> Recipient:
    """A recipient with a contact holding `attributes`."""
    address = address or f"user{message_id}@example.org"
    contact = {
        "contact_id": f"c{message_id}",
        "email": address,
        "phone": None,
        "time_zone": "Europe/Paris",
        "attributes": {"first_name": f"Ann{message_id}"} | attributes,
    }
    return Recipient(message_id, address, contact, 1)


def recipients(count: int, start: int = 1) -> list[Recipient]:
    """`count` recipients with ids from `start`."""
    return [recipient(i) for i in range(start, start + count)]


@functools.cache
def renderer() -> RenderPool:
    """The daemon's render pool, started once for these tests (closed by conftest at the end)."""
    return RenderPool(workers=1)
