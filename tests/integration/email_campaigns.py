"""Email campaigns for the tests: aiosmtpd servers on loopback that keep what they receive,
transports and channels of the email type, and readers to send to."""

from __future__ import annotations

import email
import email.policy
import socket
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

from aiosmtpd.controller import Controller

from campaignd.v1 import contact_service_pb2 as cs
from campaignd.v1 import contact_service_pb2_grpc as cs_grpc
from campaignd.v1 import resources_pb2 as pb
from tests.integration.campaign_client import content, import_contacts

if TYPE_CHECKING:  # conftest imports this module for its smtp fixture
    from tests.integration.conftest import DaemonProcess

FAST = "[engine]\ntick_interval = 0.05\nretry_delay = 0.2\nsending_timeout = 10.0\ntransport_rest = 2.0\n"
UNSUBSCRIBE = (
    "[channel_types.email]\n"
    'unsubscribe_url = "https://news.example.org/u?m={message}&t={token}"\n'
    'unsubscribe_secret = { env = "TEST_UNSUBSCRIBE_SECRET" }\n'
)
ENV = {"TEST_UNSUBSCRIBE_SECRET": "an-unsubscribe-secret-of-some-length"}


@dataclass
class Inbox:
    """An aiosmtpd handler that keeps every message it accepts, with when it arrived."""

    messages: list[tuple[float, bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd
        with self.lock:
            self.messages.append((time.time(), bytes(envelope.content)))
        return "250 2.0.0 queued"

    def parsed(self) -> list[EmailMessage]:
        """Every message received, parsed."""
        with self.lock:
            raw = [data for _, data in self.messages]
        return [email.message_from_bytes(data, policy=email.policy.default) for data in raw]

    def __len__(self) -> int:
        with self.lock:
            return len(self.messages)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    """One SMTP server on loopback."""

    inbox: Inbox
    controller: Controller
    port: int

    def stop(self) -> None:
        """Stop serving."""
        self.controller.stop()


def email_transport(name: str, port: int, extra: str = "") -> str:
    """A [transports.NAME] table of type email, to the server on `port` without TLS."""
    options = f'host = "127.0.0.1", port = {port}, security = "none"{extra}'
    return f'[transports.{name}]\ntype = "email"\nconcurrency = 4\noptions = {{ {options} }}\n'


def import_people(daemon: DaemonProcess, rows: list[cs.ContactRow], list_id: str = "readers") -> None:
    """Import `rows` into `lists/{list_id}` (created unless it exists)."""
    with daemon.channel() as channel:
        import_contacts(cs_grpc.ContactServiceStub(channel), list_id, rows)


def readers(count: int) -> list[cs.ContactRow]:
    """Contacts reader00000@example.org and on, with a first name and a city."""
    rows = []
    for i in range(count):
        row = cs.ContactRow(email=f"reader{i:05d}@example.org")
        row.attributes.update({"first_name": f"Name{i:05d}", "city": "Oslo"})
        rows.append(row)
    return rows


def email_channel(shares: dict[str, int] | None = None, rate: float = 0, **overrides: Any) -> pb.Channel:
    """An email channel `mail` that greets each reader by name, split over `shares` of transports."""
    values = {
        "subject": "Hello {{ contact.first_name }}",
        "from_address": "news@example.org",
        "from_name": "Example News",
        "text": "Dear {{ contact.first_name }} of {{ contact.city }}.\nUnsubscribe: {{ unsubscribe_url }}\n",
        "html": "<p>Dear <b>{{ contact.first_name }}</b></p>",
    }
    values.update(overrides)
    return pb.Channel(
        channel_id="mail",
        type="email",
        content=content(**values),
        transports=[pb.TransportShare(transport=t, percent=p) for t, p in (shares or {}).items()],
        rate_limit=rate,
    )


def recipient(message: EmailMessage) -> str:
    """The address a received message was sent to."""
    return str(message["To"]).strip("<>")
