"""The email channel's bounce receiver in the real daemon: messages sent with VERP envelope
senders to aiosmtpd, then DSNs (RFC 3464) and an ARF report (RFC 5965) sent back to it by SMTP."""

from __future__ import annotations

import os
import pathlib
import smtplib
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from email.message import EmailMessage, Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import contact_service_pb2 as cs
from campaignd.v1 import resources_pb2 as pb
from tests.integration.campaign_client import Client
from tests.integration.conftest import DaemonFactory
from tests.integration.email_campaigns import (
    ENV,
    FAST,
    email_channel,
    email_transport,
    free_port,
    import_people,
    readers,
)


@dataclass
class Envelopes:
    """An aiosmtpd handler that keeps each message's envelope sender and recipient."""

    got: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd
        with self.lock:
            self.got.append((str(envelope.mail_from), str(envelope.rcpt_tos[0])))
        return "250 2.0.0 queued"


def dsn(recipient: str, action: str, status: str, diagnostic: str) -> bytes:
    """A delivery status notification shaped like RFC 3464's examples."""
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = "MAILER-DAEMON@mx.example.net"
    report["Subject"] = "Delivery Status Notification"
    report.attach(MIMEText(f"Your message to {recipient} could not be delivered.\n"))
    per_message, per_recipient = Message(), Message()
    per_message["Reporting-MTA"] = "dns; mx.example.net"
    per_recipient["Final-Recipient"] = f"rfc822; {recipient}"
    per_recipient["Action"] = action
    per_recipient["Status"] = status
    per_recipient["Diagnostic-Code"] = f"smtp; {diagnostic}"
    status_part = MIMEBase("message", "delivery-status")
    status_part.set_payload([per_message, per_recipient])
    report.attach(status_part)
    return report.as_bytes()


def arf(original_message_id: str) -> bytes:
    """An abuse report shaped like RFC 5965's example, quoting the original message."""
    report = MIMEMultipart("report", report_type="feedback-report")
    report["From"] = "abuse@isp.example"
    report["Subject"] = "FW: Hello"
    report.attach(MIMEText("This is an email abuse report.\n"))
    feedback = MIMEBase("message", "feedback-report")
    feedback.set_payload("Feedback-Type: abuse\nUser-Agent: SomeGenerator/1.0\nVersion: 1\n")
    report.attach(feedback)
    original = EmailMessage()
    original["Message-ID"] = original_message_id
    original["Subject"] = "Hello"
    original.set_content("the message as the recipient got it\n")
    quoted = MIMEBase("message", "rfc822")
    quoted.set_payload([original])
    report.attach(quoted)
    return report.as_bytes()


def test_dsns_and_complaints_by_mail_bounce_suppress_and_survive_junk(daemon_factory: DaemonFactory) -> None:
    """A hard DSN fails and suppresses, a delayed one only counts, an ARF report is a complaint
    found by Message-ID; junk and forged VERP tokens are counted and change nothing."""
    inbox = Envelopes()
    relay = Controller(inbox, hostname="127.0.0.1", port=free_port())
    relay.start()
    try:
        bounce_port = free_port()
        options = (
            '[http]\naddress = "127.0.0.1:0"\n[channel_types.email]\n'
            'unsubscribe_secret = { env = "TEST_UNSUBSCRIBE_SECRET" }\n'
            f'bounce_domain = "bounces.example.org"\nbounce_listen = "127.0.0.1:{bounce_port}"\n'
        )
        daemon = daemon_factory(FAST + options + email_transport("a", relay.port), env=ENV).start()
        import_people(daemon, readers(4))
        with daemon.channel() as channel:
            client = Client(channel)
            campaign = client.create(
                email_channel({"a": 100}), audience=pb.Audience(target_lists=["lists/readers"])
            )
            client.launch(campaign.name)
            assert client.finished(campaign.name).state == pb.Campaign.COMPLETED
            messages = {
                m.address: m
                for m in client.stub.ListMessages(svc.ListMessagesRequest(parent=campaign.name)).messages
            }
    finally:
        relay.stop()
    senders = dict((rcpt, sender) for sender, rcpt in inbox.got)
    r0, r1, r2, r3 = (f"reader{i:05d}@example.org" for i in range(4))
    for address, message in messages.items():
        assert senders[address].startswith(f"bounces+m{message.name.rsplit('/', 1)[1]}-")
        assert senders[address].endswith("@bounces.example.org")

    forged = senders[r3].rsplit("-", 1)[0] + "-0123456789abcdef@bounces.example.org"
    with smtplib.SMTP("127.0.0.1", bounce_port, timeout=10) as smtp:
        smtp.sendmail("", [senders[r0]], dsn(r0, "failed", "5.1.1", "550 5.1.1 user unknown"))
        smtp.sendmail(
            "", [senders[r0]], dsn(r0, "failed", "5.1.1", "550 5.1.1 user unknown")
        )  # the same again
        smtp.sendmail("", [senders[r1]], dsn(r1, "delayed", "4.2.2", "452 4.2.2 mailbox full"))
        smtp.sendmail("", [forged], dsn(r3, "failed", "5.1.1", "550 5.1.1 user unknown"))
        smtp.sendmail("", ["bounces@bounces.example.org"], b"Subject: hello\r\n\r\nnot a report at all\r\n")
        smtp.sendmail("", ["bounces@bounces.example.org"], b"\xff\xfe garbage \x00 without headers")
        smtp.sendmail("", ["abuse-reports@bounces.example.org"], arf(messages[r2].provider_id))

    with daemon.channel() as channel:
        client = Client(channel)
        report = client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name))
        assert (report.totals.bounced, report.totals.complained) == (2, 1)
        after = {
            m.address: m
            for m in client.stub.ListMessages(svc.ListMessagesRequest(parent=campaign.name)).messages
        }
        assert (after[r0].state, after[r0].reason) == (pb.Message.FAILED, "bounced")
        assert "5.1.1" in after[r0].last_error
        assert after[r1].state == pb.Message.SENT
        assert after[r2].outcome == "complained"
        assert after[r3].state == pb.Message.SENT

        def suppressed(address: str) -> bool:
            request = cs.CheckSuppressionRequest(address=address, channel_type="email")
            return client.contacts.CheckSuppression(request).suppressed

        assert [suppressed(a) for a in (r0, r1, r2, r3)] == [True, False, True, False]
    daemon.wait_serving()  # junk did not take the daemon down
    # JSON lines like every other part of the daemon's log.
    warnings = [
        e
        for e in daemon.log_events()
        if e.get("event") == "bounce receiver: not a report about a sent message"
    ]
    assert [(w["level"], w["so_far"]) for w in warnings] == [("warning", 1), ("warning", 2), ("warning", 3)]
    assert not [line for line in daemon.log_text().splitlines() if line.startswith("WARNING:")]


def test_a_bounce_port_in_use_stops_the_start(daemon_factory: DaemonFactory) -> None:
    """The daemon does not start without its bounce receiver: exit 1 with one line naming it."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        options = (
            '[http]\naddress = "127.0.0.1:0"\n[channel_types.email]\n'
            'unsubscribe_secret = { env = "TEST_UNSUBSCRIBE_SECRET" }\n'
            f'bounce_listen = "127.0.0.1:{port}"\n'
        )
        daemon = daemon_factory(FAST + options, env=ENV).start(wait=False)
        assert daemon.wait(30) == 1
    [line] = [line for line in daemon.log_text().splitlines() if line.startswith("campaignd:")]
    reason = "channel type email: bounce receiver cannot listen on"
    assert line.startswith(f"campaignd: cannot start the http routes: {reason} 127.0.0.1:{port}: ")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            'bounce_listen = "127.0.0.1:2525"\n',
            "channel_types.email.bounce_listen: needs the daemon's HTTP listener: set [http] address",
        ),
        (
            '[http]\naddress = "127.0.0.1:0"\n[channel_types.email]\nbounce_listen = "127.0.0.1:99999"\n',
            "channel_types.email.bounce_listen: must be host:port with a port from 1 to 65535",
        ),
    ],
)
def test_check_config_refuses_a_bounce_receiver_that_could_not_run(
    tmp_path: pathlib.Path, options: str, expected: str
) -> None:
    """bounce_listen without the HTTP listener, or with a port out of range, is a config problem."""
    config = tmp_path / "config.toml"
    secret = 'unsubscribe_secret = { env = "TEST_UNSUBSCRIBE_SECRET" }\n'
    table = options if options.startswith("[http]") else "[channel_types.email]\n" + options
    config.write_text(table + secret, encoding="utf-8")
    checked = subprocess.run(
        [sys.executable, "-m", "campaignd.daemon", "check-config", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, **ENV},
        check=False,
    )
    assert checked.returncode == 2
    assert expected in checked.stdout + checked.stderr
