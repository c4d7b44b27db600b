"""Sending through real SMTP servers: security modes, AUTH, replies, failures, the pool, the gate."""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import socket
import time
from collections.abc import Sequence
from typing import Any

import aiosmtplib.protocol
import campaignd_email
import pytest
from smtp_servers import (
    OPTIONS,
    PASSWORD,
    USER,
    Certificate,
    Events,
    Gate,
    authenticator,
    channel,
    recipient,
    recipients,
    renderer,
    smtp_server,
)

from campaignd.plugin import ChannelInfo, Recipient, SendResult, SendStatus, Transport


async def _open(transport: Transport) -> Any:
    opening = campaignd_email.campaignd_open_transport(
        channel_type="email", transport=transport, events=Events()
    )
    assert opening is not None
    return await opening


async def _close(transport: Transport, client: Any) -> None:
    closing = campaignd_email.campaignd_close_transport(
        channel_type="email", transport=transport, client=client
    )
    assert closing is not None
    await closing


async def _send(
    client: Any,
    batch: Sequence[Recipient],
    gate: Gate | None = None,
    info: ChannelInfo | None = None,
) -> list[SendResult]:
    sending = campaignd_email.campaignd_send(
        channel_type="email",
        channel=info or channel(),
        recipients=batch,
        gate=gate or Gate(),
        transport=None,
        client=client,
        options=OPTIONS,
        renderer=renderer(),
    )
    assert sending is not None
    return list(await sending)


def send_once(transport: Transport, batch: Sequence[Recipient], gate: Gate | None = None) -> list[SendResult]:
    """Open the transport, send one batch, close it."""

    async def run() -> list[SendResult]:
        client = await _open(transport)
        try:
            return await _send(client, batch, gate)
        finally:
            await _close(transport, client)

    return asyncio.run(run())


def _statuses(results: Sequence[SendResult]) -> list[SendStatus]:
    return [r.status for r in results]


# Run with a server that announces PIPELINING (one write for MAIL, RCPT and DATA) and one that
# does not (aiosmtplib's sendmail).
BOTH = pytest.mark.parametrize("pipelining", [False, True], ids=["sendmail", "pipelined"])


@BOTH
def test_plain_send_delivers_every_message_with_its_message_id(pipelining: bool) -> None:
    with smtp_server(pipelining=pipelining) as server:
        results = send_once(server.transport(), recipients(5))
        assert _statuses(results) == [SendStatus.SENT] * 5
        assert sorted(server.stats.recipients) == sorted(f"user{i}@example.org" for i in range(1, 6))
        parsed = [
            email.parser.BytesParser(policy=email.policy.default).parsebytes(m) for m in server.stats.messages
        ]
        assert sorted(str(p["Message-ID"]) for p in parsed) == sorted(r.provider_id for r in results)
        assert {str(p["Subject"]) for p in parsed} == {f"Hello Ann{i}" for i in range(1, 6)}


def test_other_channel_types_are_not_answered() -> None:
    kwargs: dict[str, Any] = {"channel_type": "sms"}
    transport = Transport("relay", "sms", 0, 1, {})
    assert campaignd_email.campaignd_open_transport(transport=transport, events=Events(), **kwargs) is None
    assert campaignd_email.campaignd_close_transport(transport=transport, client=None, **kwargs) is None
    assert (
        campaignd_email.campaignd_send(
            channel=channel(),
            recipients=[],
            gate=Gate(),
            transport=None,
            client=None,
            options={},
            renderer=renderer(),
            **kwargs,
        )
        is None
    )


@BOTH
def test_starttls_with_the_certificate_trusted_through_ca_file(
    certificate: Certificate, pipelining: bool
) -> None:
    with smtp_server(
        pipelining=pipelining, tls_context=certificate.server_context(), require_starttls=True
    ) as server:
        transport = server.transport(security="starttls", ca_file=str(certificate.cert_file))
        assert _statuses(send_once(transport, recipients(2))) == [SendStatus.SENT] * 2


def test_starttls_refuses_an_untrusted_certificate_as_fatal(certificate: Certificate) -> None:
    with smtp_server(tls_context=certificate.server_context(), require_starttls=True) as server:
        results = send_once(server.transport(security="starttls"), recipients(3))
        assert _statuses(results) == [SendStatus.RETRY] * 3
        assert all(r.fatal and not r.transport_down for r in results)
        assert "certificate" in results[0].error
        assert server.stats.mails == 0


def test_starttls_without_verification_accepts_the_certificate(certificate: Certificate) -> None:
    with smtp_server(tls_context=certificate.server_context(), require_starttls=True) as server:
        transport = server.transport(security="starttls", verify_certificate=False)
        assert _statuses(send_once(transport, recipients(1))) == [SendStatus.SENT]


def test_starttls_not_offered_is_fatal() -> None:
    with smtp_server() as server:
        results = send_once(server.transport(security="starttls"), recipients(2))
        assert all(r.status == SendStatus.RETRY and r.fatal for r in results)
        assert "STARTTLS" in results[0].error


@BOTH
def test_implicit_tls(certificate: Certificate, pipelining: bool) -> None:
    with smtp_server(pipelining=pipelining, ssl_context=certificate.server_context()) as server:
        transport = server.transport(security="tls", ca_file=str(certificate.cert_file))
        assert _statuses(send_once(transport, recipients(3))) == [SendStatus.SENT] * 3


def test_authentication_accepted_over_starttls(certificate: Certificate) -> None:
    with smtp_server(
        tls_context=certificate.server_context(), require_starttls=True, authenticator=authenticator
    ) as server:
        transport = server.transport(
            security="starttls", ca_file=str(certificate.cert_file), username=USER, password=PASSWORD
        )
        assert _statuses(send_once(transport, recipients(2))) == [SendStatus.SENT] * 2


def test_authentication_refused_is_fatal() -> None:
    with smtp_server(authenticator=authenticator, auth_require_tls=False) as server:
        results = send_once(server.transport(username=USER, password=PASSWORD[::-1]), recipients(4))
        assert all(r.status == SendStatus.RETRY and r.fatal and not r.transport_down for r in results)
        assert "535" in results[0].error
        assert server.stats.mails == 0


@BOTH
def test_4xx_defers_and_5xx_rejects_with_the_reply_and_the_session_goes_on(pipelining: bool) -> None:
    with smtp_server(pipelining=pipelining) as server:
        server.handler.rcpt_replies["user2@example.org"] = "451 4.7.1 greylisted, try later"
        server.handler.rcpt_replies["user3@example.org"] = "550 5.1.1 no such user"
        server.handler.data_replies["user4@example.org"] = "554 5.7.1 message refused"
        results = send_once(server.transport(concurrency=1), recipients(5))
        assert _statuses(results) == [
            SendStatus.SENT,
            SendStatus.RETRY,
            SendStatus.FAILED,
            SendStatus.FAILED,
            SendStatus.SENT,
        ]
        assert (results[1].reason, results[1].error) == ("deferred", "451 4.7.1 greylisted, try later")
        assert (results[2].reason, results[2].error) == ("rejected", "550 5.1.1 no such user")
        assert (results[3].reason, results[3].error) == ("rejected", "554 5.7.1 message refused")
        assert not any(r.fatal or r.transport_down for r in results)
        # RSET after each refusal kept the one session usable.
        assert server.stats.opened == 1


@BOTH
def test_a_dropped_connection_retries_that_message_and_the_pool_recovers(pipelining: bool) -> None:
    with smtp_server(pipelining=pipelining) as server:
        server.handler.drop_data = 1
        results = send_once(server.transport(concurrency=1), recipients(4))
        assert _statuses(results) == [SendStatus.RETRY] + [SendStatus.SENT] * 3
        assert results[0].reason == "connection_lost"
        assert not results[0].transport_down
        assert server.stats.opened == 2


@pytest.mark.parametrize("greeting", [b"220 closing at once\r\n", b"554 5.7.1 no service for you\r\n"])
def test_a_server_that_closes_or_refuses_after_its_greeting_is_down(greeting: bytes) -> None:
    async def run() -> list[SendResult]:
        async def greet_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(greeting)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(greet_and_close, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport = Transport("relay", "email", 0, 3, {"host": "127.0.0.1", "port": port, "security": "none"})
        async with server:
            client = await _open(transport)
            results = await _send(client, recipients(6))
            await _close(transport, client)
        return results

    results = asyncio.run(run())
    assert all(r.status == SendStatus.RETRY and r.transport_down and not r.fatal for r in results)


def test_connection_refused_is_down_at_once() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    transport = Transport("relay", "email", 0, 4, {"host": "127.0.0.1", "port": port, "security": "none"})
    started = time.monotonic()
    results = send_once(transport, recipients(50))
    assert time.monotonic() - started < 5
    assert all(r.status == SendStatus.RETRY and r.transport_down and not r.fatal for r in results)
    assert "127.0.0.1" in results[0].error


@BOTH
def test_a_server_that_does_not_answer_times_out_without_holding_the_batch(pipelining: bool) -> None:
    with smtp_server(pipelining=pipelining) as server:
        server.handler.data_delay = 2.0
        started = time.monotonic()
        results = send_once(server.transport(concurrency=2, timeout=0.3), recipients(20))
        assert time.monotonic() - started < 1.5
        timed_out = [r for r in results if r.reason == "timeout"]
        assert len(timed_out) == 2
        assert all(r.status == SendStatus.RETRY for r in results)
        rest = [r for r in results if r.reason != "timeout"]
        assert rest
        assert all(r.transport_down for r in rest)


def test_sends_in_flight_never_exceed_the_concurrency_even_across_batches() -> None:
    with smtp_server() as server:
        server.handler.session_delay = 0.01
        transport = server.transport(concurrency=3)

        async def run() -> tuple[list[SendResult], list[SendResult]]:
            client = await _open(transport)
            try:
                return await asyncio.gather(
                    _send(client, recipients(20, start=1)),
                    _send(client, recipients(20, start=100), info=channel(subject="second")),
                )
            finally:
                await _close(transport, client)

        first, second = asyncio.run(run())
        assert _statuses(first + second) == [SendStatus.SENT] * 40
        assert server.stats.most_active == 3
        assert server.stats.opened == 3


@BOTH
def test_connections_are_reused_across_batches_and_quit_on_close(pipelining: bool) -> None:
    with smtp_server(pipelining=pipelining) as server:
        transport = server.transport(concurrency=2)

        async def run() -> None:
            client = await _open(transport)
            for start in (1, 100, 200):
                results = await _send(client, recipients(10, start=start))
                assert _statuses(results) == [SendStatus.SENT] * 10
            assert server.stats.quits == 0
            await _close(transport, client)

        asyncio.run(run())
        assert server.stats.opened == 2
        assert server.stats.quits == 2
        assert len(server.stats.messages) == 30


@BOTH
def test_messages_per_connection_reconnects(pipelining: bool) -> None:
    with smtp_server(pipelining=pipelining) as server:
        transport = server.transport(concurrency=1, messages_per_connection=3)
        assert _statuses(send_once(transport, recipients(10))) == [SendStatus.SENT] * 10
        assert server.stats.opened == 4
        assert server.stats.quits == 4


def test_a_closed_gate_starts_nothing() -> None:
    with smtp_server() as server:
        gate = Gate(admits=0)
        results = send_once(server.transport(), recipients(5), gate)
        assert _statuses(results) == [SendStatus.NOT_STARTED] * 5
        assert server.stats.mails == 0
        assert gate.refused == 5


def test_the_gate_closing_mid_batch_stops_new_transactions_at_once() -> None:
    with smtp_server() as server:
        gate = Gate(admits=7)
        results = send_once(server.transport(concurrency=3), recipients(20), gate)
        assert _statuses(results).count(SendStatus.SENT) == 7
        assert _statuses(results).count(SendStatus.NOT_STARTED) == 13
        assert server.stats.mails == 7


@BOTH
def test_a_bad_address_fails_that_message_only(pipelining: bool) -> None:
    with smtp_server(pipelining=pipelining) as server:
        batch = [recipient(1), recipient(2, "x@y.z\r\nRCPT TO:<evil@example.net>"), recipient(3)]
        results = send_once(server.transport(), batch)
        assert _statuses(results) == [SendStatus.SENT, SendStatus.FAILED, SendStatus.SENT]
        assert results[1].reason == "invalid_address"
        assert sorted(server.stats.recipients) == ["user1@example.org", "user3@example.org"]


def test_a_session_the_server_closed_while_idle_is_replaced() -> None:
    with smtp_server() as server:
        transport = server.transport(concurrency=1)

        async def run() -> list[SendResult]:
            client = await _open(transport)
            try:
                assert _statuses(await _send(client, recipients(1))) == [SendStatus.SENT]
                server.drop_sessions()
                await asyncio.sleep(0.1)
                return await _send(client, recipients(2, start=10))
            finally:
                await _close(transport, client)

        assert _statuses(asyncio.run(run())) == [SendStatus.SENT] * 2
        assert server.stats.opened == 2


@BOTH
def test_an_idle_session_is_checked_with_noop_and_kept(monkeypatch: Any, pipelining: bool) -> None:
    monkeypatch.setattr(campaignd_email.smtp, "IDLE_CHECK", 0.0)
    with smtp_server(pipelining=pipelining) as server:
        results = send_once(server.transport(concurrency=1), recipients(3))
        assert _statuses(results) == [SendStatus.SENT] * 3
        assert server.stats.opened == 1


@BOTH
def test_mail_from_is_written_before_anything_else_runs_after_admission(
    monkeypatch: Any, pipelining: bool
) -> None:
    written: list[bytes] = []
    write = aiosmtplib.protocol.SMTPProtocol.write

    def spy(self: aiosmtplib.protocol.SMTPProtocol, data: bytes) -> None:
        written.append(data)
        write(self, data)

    monkeypatch.setattr(aiosmtplib.protocol.SMTPProtocol, "write", spy)
    seen: list[bytes] = []

    class Watching(Gate):
        async def admit(self, weight: float = 1.0, message_id: int | None = None) -> bool:
            # Runs at the sender's first suspension after admission: by then MAIL FROM is out.
            asyncio.get_running_loop().call_soon(lambda: seen.append(written[-1]))
            return await super().admit(weight)

    with smtp_server(pipelining=pipelining) as server:
        results = send_once(server.transport(concurrency=1), recipients(5), Watching())
    assert _statuses(results) == [SendStatus.SENT] * 5
    assert len(seen) == 5
    assert all(line.startswith(b"MAIL FROM:<news@example.com>") for line in seen)
    assert all(line.endswith(b"\r\nDATA\r\n") == pipelining for line in seen)


def test_an_error_in_one_send_ends_the_whole_batch() -> None:
    class Failing(Gate):
        async def admit(self, weight: float = 1.0, message_id: int | None = None) -> bool:
            if self.admitted == 3:
                raise RuntimeError("the gate broke")
            return await super().admit(weight)

    with smtp_server() as server:
        server.handler.data_delay = 0.02
        with pytest.raises(RuntimeError, match="the gate broke"):
            send_once(server.transport(concurrency=2), recipients(20), Failing())
        time.sleep(0.1)
        assert server.stats.mails <= 4


def _spy_writes(monkeypatch: Any) -> list[bytes]:
    """Every write of aiosmtplib's protocol, from now on."""
    written: list[bytes] = []
    write = aiosmtplib.protocol.SMTPProtocol.write

    def spy(self: aiosmtplib.protocol.SMTPProtocol, data: bytes) -> None:
        written.append(data)
        write(self, data)

    monkeypatch.setattr(aiosmtplib.protocol.SMTPProtocol, "write", spy)
    return written


def test_pipelining_writes_mail_rcpt_and_data_at_once_then_the_message(monkeypatch: Any) -> None:
    written = _spy_writes(monkeypatch)
    with smtp_server(pipelining=True) as server:
        results = send_once(server.transport(concurrency=1), recipients(3))
        reads = list(server.stats.reads)
        sizes = [len(m) for m in server.stats.messages]
        options = list(server.stats.mail_options)
    assert _statuses(results) == [SendStatus.SENT] * 3
    transactions = [w for w in written if not w.startswith((b"EHLO", b"QUIT"))]
    assert len(transactions) == 6
    for i, (envelope, message) in enumerate(zip(transactions[::2], transactions[1::2], strict=True)):
        size = len(message) - len(b".\r\n")  # nothing to dot-stuff in these messages
        mail = f"MAIL FROM:<news@example.com> SIZE={size}\r\n"
        assert envelope == f"{mail}RCPT TO:<user{i + 1}@example.org>\r\nDATA\r\n".encode()
        assert message.startswith(b"From: ")
        assert message.endswith(b"\r\n.\r\n")
        # The server read the three commands together.
        assert envelope in reads
        assert options[i] == [f"SIZE={size}"]
        assert sizes[i] == size


def test_without_pipelining_each_command_is_its_own_write(monkeypatch: Any) -> None:
    written = _spy_writes(monkeypatch)
    with smtp_server() as server:
        results = send_once(server.transport(concurrency=1), recipients(1))
    assert _statuses(results) == [SendStatus.SENT]
    transaction = [w for w in written if not w.startswith((b"EHLO", b"QUIT"))]
    assert [w.split(b" ")[0].split(b":")[0] for w in transaction[:3]] == [b"MAIL", b"RCPT", b"DATA\r\n"]
    assert transaction[3].endswith(b"\r\n.\r\n")
    assert len(transaction) == 4


def _refusals(pipelining: bool) -> tuple[list[tuple[SendStatus, str, str]], int, list[str]]:
    """Results of a batch meeting a refusal of each kind, the sessions it took and who got mail."""
    with smtp_server(pipelining=pipelining) as server:
        server.handler.mail_replies = ["451 4.3.0 sender deferred", "553 5.1.8 sender refused"]
        server.handler.rcpt_replies["user3@example.org"] = "450 4.2.0 mailbox busy"
        server.handler.rcpt_replies["user4@example.org"] = "550 5.1.1 no such user"
        server.handler.data_replies["user5@example.org"] = "452 4.3.1 out of storage"
        server.handler.data_replies["user6@example.org"] = "554 5.7.1 message refused"
        results = send_once(server.transport(concurrency=1), recipients(8))
        return [(r.status, r.reason, r.error) for r in results], server.stats.opened, server.stats.recipients


def test_refusals_of_pipelined_commands_give_what_sendmail_gives_and_the_session_goes_on() -> None:
    pipelined = _refusals(pipelining=True)
    assert pipelined == _refusals(pipelining=False)
    results, opened, delivered = pipelined
    assert results[:6] == [
        (SendStatus.RETRY, "deferred", "451 4.3.0 sender deferred"),
        (SendStatus.FAILED, "rejected", "553 5.1.8 sender refused"),
        (SendStatus.RETRY, "deferred", "450 4.2.0 mailbox busy"),
        (SendStatus.FAILED, "rejected", "550 5.1.1 no such user"),
        (SendStatus.RETRY, "deferred", "452 4.3.1 out of storage"),
        (SendStatus.FAILED, "rejected", "554 5.7.1 message refused"),
    ]
    assert [status for status, _, _ in results[6:]] == [SendStatus.SENT] * 2
    # RSET after each refused envelope kept the one session in step.
    assert opened == 1
    assert delivered == ["user7@example.org", "user8@example.org"]


@BOTH
@pytest.mark.parametrize("command", ["MAIL", "RCPT"])
def test_421_defers_and_closes_the_session(pipelining: bool, command: str) -> None:
    with smtp_server(pipelining=pipelining) as server:
        if command == "MAIL":
            server.handler.mail_replies = ["421 4.3.2 shutting down"]
        else:
            server.handler.rcpt_replies["user1@example.org"] = "421 4.3.2 shutting down"
        results = send_once(server.transport(concurrency=1), recipients(3))
        assert [(r.status, r.reason, r.error) for r in results[:1]] == [
            (SendStatus.RETRY, "deferred", "421 4.3.2 shutting down")
        ]
        assert _statuses(results[1:]) == [SendStatus.SENT] * 2
        assert server.stats.opened == 2


@BOTH
def test_a_server_that_asks_for_the_message_after_refusing_the_recipient(pipelining: bool) -> None:
    with smtp_server(pipelining=pipelining) as server:
        server.handler.keep_refused = True
        server.handler.rcpt_replies["user1@example.org"] = "550 5.1.1 no such user"
        results = send_once(server.transport(concurrency=1), recipients(2))
        assert [(r.status, r.reason, r.error) for r in results[:1]] == [
            (SendStatus.FAILED, "rejected", "550 5.1.1 no such user")
        ]
        assert _statuses(results[1:]) == [SendStatus.SENT]
        assert server.stats.opened == 1
        # Pipelined, the DATA already sent got 354: an empty message answered it.
        empty = [b""] if pipelining else []
        assert server.stats.messages[:-1] == empty
        assert server.stats.messages[-1].startswith(b"From: ")


@BOTH
def test_lines_starting_with_a_dot_arrive_intact(pipelining: bool) -> None:
    text = "Hi {{ contact.first_name }},\n.hidden\n..two dots\n.\nend\n"
    with smtp_server(pipelining=pipelining) as server:

        async def run() -> list[SendResult]:
            transport = server.transport(concurrency=1)
            client = await _open(transport)
            try:
                return await _send(client, recipients(2), info=channel(text=text, html=""))
            finally:
                await _close(transport, client)

        assert _statuses(asyncio.run(run())) == [SendStatus.SENT] * 2
        for message in server.stats.messages:
            assert b"\r\n\r\nHi Ann" in message
            assert message.endswith(b",\r\n.hidden\r\n..two dots\r\n.\r\nend\r\n")


@BOTH
def test_an_address_smtp_cannot_carry_fails_before_anything_is_written(
    monkeypatch: Any, pipelining: bool
) -> None:
    # Past the composer's own check, as an address it let through would be.
    monkeypatch.setattr(campaignd_email.message, "envelope_address", lambda address: address)
    batch = [
        recipient(1),
        recipient(2, "x@y.z\r\nRCPT TO:<evil@example.net>"),
        recipient(3, "nul\x00@example.org"),
        recipient(4, "two words@example.org"),
        recipient(5, "<angle@example.org>"),
        recipient(6),
    ]
    with smtp_server(pipelining=pipelining) as server:
        results = send_once(server.transport(concurrency=1), batch)
        assert _statuses(results) == [SendStatus.SENT] + [SendStatus.FAILED] * 4 + [SendStatus.SENT]
        assert {r.reason for r in results[1:5]} == {"invalid_address"}
        assert server.stats.recipients == ["user1@example.org", "user6@example.org"]
        assert server.stats.mails == 2
        assert server.stats.opened == 1


@pytest.mark.parametrize(
    "address", ["jörg@example.org", "a\r\n@example.org", "a\x00@example.org", "a b@example.org", 'a"@b.org']
)
def test_addresses_aiosmtplib_would_not_send_are_refused(address: str) -> None:
    with pytest.raises(ValueError, match="not permitted in an SMTP mailbox"):
        campaignd_email.smtp._path(address)


@pytest.mark.parametrize(
    "data",
    [
        b"Subject: x\r\n\r\nplain\r\n",
        b".starts with a dot\r\n.\r\n..\r\nend\r\n",
        b"no final line break",
        b"bare\nline\rfeeds\n.dot\r.dot\r\n",
        b"",
    ],
)
def test_messages_are_sent_as_aiosmtplib_sends_them(data: bytes) -> None:
    normalised = aiosmtplib.protocol.normalize_message_line_endings(data)
    expected = aiosmtplib.protocol.PERIOD_REGEX.sub(b"..", normalised) + b".\r\n"
    assert campaignd_email.smtp._message(data) == (len(normalised), expected)
