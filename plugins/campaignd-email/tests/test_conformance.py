"""The email plugin against the conformance kit, with a real SMTP server as the provider."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import campaignd_email
import pytest
from smtp_servers import Server, smtp_server

from campaignd.testing.conformance import Target, TransportChannelContract, closed_port


@pytest.fixture
def server() -> Iterator[Server]:
    """An aiosmtpd server on 127.0.0.1 that takes every message, a little slowly, so that sends
    in flight overlap."""
    with smtp_server() as running:
        running.handler.data_delay = 0.01
        yield running


class TestEmail(TransportChannelContract):
    """The "email" type keeps the contract, through an SMTP transport."""

    @pytest.fixture
    def target(self, server: Server, tmp_path: pathlib.Path) -> Target:
        """Personalised text and HTML with one-click unsubscribe, sent to the local server."""
        secret = tmp_path / "unsubscribe.secret"
        secret.write_text("a-long-enough-unsubscribe-secret\n", encoding="utf-8")
        return Target(
            plugin=campaignd_email,
            channel_type="email",
            content={
                "subject": "Hello {{ contact.first_name }}",
                "from_address": "news@example.com",
                "from_name": "Example News",
                "reply_to": "help@example.com",
                "text": "Hi {{ contact.first_name }},\nyour order has shipped.\n",
                "html": "<p>Hi {{ contact.first_name }}, your order has shipped.</p>",
            },
            addresses=["ada@example.org", "grace@example.org", "linus@example.org"],
            delivered=lambda: len(server.stats.messages),
            options={
                "unsubscribe_url": "https://example.com/unsubscribe?m={message}&t={token}",
                "unsubscribe_secret": {"file": str(secret)},
                "message_id_domain": "mail.example.com",
            },
            transport_options={"host": "127.0.0.1", "port": server.port, "security": "none"},
            unreachable_transport_options={
                "host": "127.0.0.1",
                "port": closed_port(),
                "security": "none",
                "timeout": 5,
            },
            # One message at a time per connection: the most connections open at once bounds the
            # sends in flight.
            peak_in_flight=lambda: server.stats.most_active,
            connections=lambda: server.stats.active,
        )
