"""Email campaigns end to end: the real daemon, the campaignd-email plugin, real SMTP servers.

The servers are aiosmtpd instances in the test process; every message they receive is parsed
back to check personalisation and headers.
"""

from __future__ import annotations

import collections
import email
import email.policy
import signal
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from google.protobuf import field_mask_pb2

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import contact_service_pb2 as cs
from campaignd.v1 import resources_pb2 as pb
from tests.integration.campaign_client import Client, wait_until
from tests.integration.conftest import DaemonFactory
from tests.integration.ctl import ctl_at
from tests.integration.email_campaigns import (
    ENV,
    FAST,
    UNSUBSCRIBE,
    Inbox,
    Server,
    email_channel,
    email_transport,
    free_port,
    import_people,
    readers,
    recipient,
)


@pytest.mark.slow
def test_ten_thousand_across_two_transports_split_seventy_thirty(
    daemon_factory: DaemonFactory, smtp: Callable[..., Server]
) -> None:
    """Every recipient gets one correct, personalised message; the split is within 2 points of 70/30."""
    a, b = smtp(), smtp()
    daemon = daemon_factory(
        FAST + UNSUBSCRIBE + email_transport("a", a.port) + email_transport("b", b.port), env=ENV
    )
    daemon.start()
    import_people(daemon, readers(10_000))
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = client.create(
            email_channel({"a": 70, "b": 30}), audience=pb.Audience(target_lists=["lists/readers"])
        )
        client.launch(campaign.name)
        assert client.finished(campaign.name).state == pb.Campaign.COMPLETED
        report = client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name))
    received_a, received_b = a.inbox.parsed(), b.inbox.parsed()
    assert len(received_a) + len(received_b) == 10_000
    assert abs(len(received_a) / 10_000 - 0.70) <= 0.02
    recipients = [recipient(m) for m in received_a + received_b]
    assert len(set(recipients)) == 10_000
    message_ids = set()
    for message in received_a + received_b:
        number = recipient(message)[len("reader") : len("reader") + 5]
        assert message["Subject"] == f"Hello Name{number}"
        text = message.get_body(preferencelist=("plain",))
        html = message.get_body(preferencelist=("html",))
        assert text is not None
        assert html is not None
        assert f"Dear Name{number} of Oslo." in text.get_content()
        assert f"<b>Name{number}</b>" in html.get_content()
        assert str(message["List-Unsubscribe"]).startswith("<https://news.example.org/u?m=")
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert str(message["From"]) == "Example News <news@example.org>"
        message_ids.add(str(message["Message-ID"]))
    assert len(message_ids) == 10_000
    [mail] = report.channels
    assert mail.progress.sent == 10_000
    assert mail.by_transport["a"].sent == len(received_a)
    assert mail.by_transport["b"].sent == len(received_b)


@pytest.mark.slow
def test_a_transport_that_goes_down_fails_over_to_the_other(
    daemon_factory: DaemonFactory, smtp: Callable[..., Server]
) -> None:
    """Stopping one server mid-campaign moves its recipients to the other; everyone is reached, none fails."""
    a, b = smtp(), smtp()
    daemon = daemon_factory(
        FAST + UNSUBSCRIBE + email_transport("a", a.port) + email_transport("b", b.port), env=ENV
    )
    daemon.start()
    import_people(daemon, readers(2000))
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = client.create(
            email_channel({"a": 50, "b": 50}, rate=400), audience=pb.Audience(target_lists=["lists/readers"])
        )
        client.launch(campaign.name)
        wait_until(lambda: len(b.inbox) >= 200, what="b to receive 200")
        b.stop()
        at_stop = len(b.inbox)
        ended = client.finished(campaign.name)
        report = client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name))
    assert ended.state == pb.Campaign.COMPLETED
    reached = {recipient(m) for m in a.inbox.parsed() + b.inbox.parsed()}
    assert len(reached) == 2000
    assert report.totals.failed == 0
    assert len(b.inbox) == at_stop
    assert len(a.inbox) >= 2000 - at_stop
    assert any(e.get("event") == "transport down; resting it" for e in daemon.log_events())


def test_injection_through_attributes_and_content_adds_no_header(
    daemon_factory: DaemonFactory, smtp: Callable[..., Server]
) -> None:
    """CR/LF in an attribute, the subject template and the from name cannot add a header."""
    a = smtp()
    daemon = daemon_factory(FAST + UNSUBSCRIBE + email_transport("a", a.port), env=ENV).start()
    row = cs.ContactRow(email="victim@example.org")
    row.attributes.update({"first_name": "Eve\r\nBcc: spy@example.org\r\nX-Injected: yes"})
    import_people(daemon, [row])
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = client.create(
            email_channel(
                subject="Hi {{ contact.first_name }}\r\nX-Subject-Injected: yes",
                from_name="News\r\nX-From-Injected: yes",
            ),
            audience=pb.Audience(target_lists=["lists/readers"]),
        )
        client.launch(campaign.name)
        assert client.finished(campaign.name).state == pb.Campaign.COMPLETED
    [message] = a.inbox.parsed()
    headers = {k.lower() for k in message}
    assert not headers & {"bcc", "x-injected", "x-subject-injected", "x-from-injected"}
    assert "\n" not in str(message["Subject"])
    assert "Eve" in str(message["Subject"])


@pytest.mark.slow
def test_send_test_message_in_draft_and_per_transport_rate(
    daemon_factory: DaemonFactory, smtp: Callable[..., Server]
) -> None:
    """A test send arrives personalised; a transport's rate holds over any second at the server."""
    a = smtp()
    transport = email_transport("a", a.port).replace("concurrency = 4", "concurrency = 4\nrate = 100")
    daemon = daemon_factory(FAST + UNSUBSCRIBE + transport, env=ENV).start()
    import_people(daemon, readers(300))
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = client.create(email_channel(), audience=pb.Audience(target_lists=["lists/readers"]))
        reply = client.stub.SendTestMessage(
            svc.SendTestMessageRequest(
                name=campaign.name,
                channel_id="mail",
                addresses=["reader00007@example.org", "nobody@example.org"],
            )
        )
        assert [r.accepted for r in reply.results] == [True, True]
        parsed = {recipient(m): m for m in a.inbox.parsed()}
        assert parsed["reader00007@example.org"]["Subject"] == "Hello Name00007"
        assert str(parsed["nobody@example.org"]["Subject"]).strip() == "Hello"
        assert client.get(campaign.name).channels[0].state == pb.Channel.DRAFT
        a.inbox.messages.clear()
        client.launch(campaign.name)
        assert client.finished(campaign.name).state == pb.Campaign.COMPLETED
    times = sorted(t for t, _ in a.inbox.messages)
    assert len(times) == 300
    # Arrivals lag the starts by a little; allow 10 % over the limit for that, no more.
    busiest = max(sum(1 for u in times if t <= u < t + 1.0) for t in times)
    assert busiest <= 110
    assert times[-1] - times[0] >= 1.8


def test_refused_authentication_fails_the_channel_with_the_reply(
    daemon_factory: DaemonFactory, smtp: Callable[..., Server]
) -> None:
    """The only transport refuses AUTH: the channel goes FAILED with the server's reply kept."""

    def refuse(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        return AuthResult(success=False, handled=False)

    a = smtp(authenticator=refuse, auth_require_tls=False)
    transport = email_transport(
        "a", a.port, ', username = "campaignd", password = { env = "TEST_SMTP_PASSWORD" }'
    )
    daemon = daemon_factory(
        FAST + UNSUBSCRIBE + transport, env={**ENV, "TEST_SMTP_PASSWORD": "wrong"}
    ).start()
    import_people(daemon, readers(20))
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = client.create(email_channel(), audience=pb.Audience(target_lists=["lists/readers"]))
        client.launch(campaign.name)
        ended = client.finished(campaign.name)
    assert ended.state == pb.Campaign.FAILED
    assert ended.channels[0].error.code == "TRANSPORT_FAILED"
    assert "535" in ended.channels[0].error.message
    assert len(a.inbox) == 0


def test_email_semantics_stop_is_final_and_editing_scheduled_returns_to_draft(
    daemon_factory: DaemonFactory, smtp: Callable[..., Server]
) -> None:
    """SPEC §6.3 for email, decided by the plugin: restart refused, a scheduled edit goes back to DRAFT."""
    a = smtp()
    daemon = daemon_factory(FAST + UNSUBSCRIBE + email_transport("a", a.port), env=ENV).start()
    import_people(daemon, readers(50))
    with daemon.channel() as channel:
        client = Client(channel)
        audience = pb.Audience(target_lists=["lists/readers"])
        scheduled = client.create(email_channel(), audience=audience)
        client.schedule(scheduled.name)
        edited = client.stub.UpdateCampaign(
            svc.UpdateCampaignRequest(
                campaign=pb.Campaign(name=scheduled.name, channels=[email_channel(subject="Changed")]),
                update_mask=field_mask_pb2.FieldMask(paths=["channels"]),
            )
        )
        assert edited.channels[0].state == pb.Channel.DRAFT
        stopped = client.create(email_channel(rate=5), audience=audience)
        client.launch(stopped.name)
        client.stop(stopped.name)
        with pytest.raises(grpc.RpcError) as refused:
            client.stub.RestartCampaign(svc.RestartCampaignRequest(name=stopped.name))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.slow
def test_reload_moves_a_transport_to_another_server(
    daemon_factory: DaemonFactory, smtp: Callable[..., Server]
) -> None:
    """SIGHUP with a changed transport: later messages go to the new server, without a restart."""
    first, second = smtp(), smtp()
    daemon = daemon_factory(FAST + UNSUBSCRIBE + email_transport("a", first.port), env=ENV).start()
    import_people(daemon, readers(10))
    with daemon.channel() as channel:
        client = Client(channel)
        audience = pb.Audience(target_lists=["lists/readers"])
        before = client.create(email_channel(), audience=audience)
        client.launch(before.name)
        client.finished(before.name)
        daemon.write_config(FAST + UNSUBSCRIBE + email_transport("a", second.port))
        daemon.signal(signal.SIGHUP)
        wait_until(lambda: any(e.get("event") == "reloaded" for e in daemon.log_events()), 30, "the reload")
        after = client.create(email_channel(), audience=audience)
        client.launch(after.name)
        assert client.finished(after.name).state == pb.Campaign.COMPLETED
    assert len(first.inbox) == 10
    assert len(second.inbox) == 10
    assert collections.Counter(recipient(m) for m in second.inbox.parsed()).most_common(1)[0][1] == 1


@pytest.mark.slow
def test_a_reload_that_removes_the_transports_pauses_the_channel(
    daemon_factory: DaemonFactory, smtp: Callable[..., Server]
) -> None:
    """Its transports gone from the config, the channel waits PAUSED; configured again, resume ends it."""
    a = smtp()
    daemon = daemon_factory(FAST + UNSUBSCRIBE + email_transport("a", a.port), env=ENV).start()
    import_people(daemon, readers(200))
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = client.create(
            email_channel({"a": 100}, rate=50), audience=pb.Audience(target_lists=["lists/readers"])
        )
        client.launch(campaign.name)
        wait_until(lambda: len(a.inbox) >= 20, 30, "the first messages")
        daemon.write_config(FAST + UNSUBSCRIBE)
        daemon.signal(signal.SIGHUP)
        wait_until(lambda: client.get(campaign.name).state == pb.Campaign.PAUSED, 30, "the pause")
        assert "no configured transport: a" in client.history(campaign.name)[-1].reason
        daemon.write_config(FAST + UNSUBSCRIBE + email_transport("a", a.port))
        daemon.signal(signal.SIGHUP)
        time.sleep(1)
        client.resume(campaign.name)
        assert client.finished(campaign.name).state == pb.Campaign.COMPLETED
    assert {recipient(m) for m in a.inbox.parsed()} == {f"reader{i:05d}@example.org" for i in range(200)}


@pytest.mark.slow
def test_messages_wait_while_the_only_transport_is_down(
    daemon_factory: DaemonFactory, smtp: Callable[..., Server]
) -> None:
    """A relay that is down loses nobody: messages wait unattempted and go out once it is back."""
    port = free_port()
    daemon = daemon_factory(FAST + UNSUBSCRIBE + email_transport("a", port), env=ENV).start()
    import_people(daemon, readers(50))
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = client.create(email_channel(), audience=pb.Audience(target_lists=["lists/readers"]))
        client.launch(campaign.name)
        time.sleep(5)  # two and a half rest periods of the transport
        report = client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name))
        assert report.totals.failed == 0
        assert report.totals.queued == 50
        assert client.get(campaign.name).state == pb.Campaign.RUNNING
        inbox = Inbox()
        controller = Controller(inbox, hostname="127.0.0.1", port=port)
        controller.start()
        try:
            assert client.finished(campaign.name).state == pb.Campaign.COMPLETED
        finally:
            controller.stop()
        messages = client.stub.ListMessages(svc.ListMessagesRequest(parent=campaign.name, page_size=100))
    assert len(inbox) == 50
    assert {m.attempts for m in messages.messages} == {1}


def test_preview_renders_a_contacts_message_without_sending(
    daemon_factory: DaemonFactory, smtp: Callable[..., Server]
) -> None:
    """PreviewMessage shows the personalised message as it would be sent; nothing is sent."""
    a = smtp()
    daemon = daemon_factory(FAST + UNSUBSCRIBE + email_transport("a", a.port), env=ENV).start()
    import_people(daemon, readers(5))
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = client.create(email_channel(), audience=pb.Audience(target_lists=["lists/readers"]))
        reply = client.stub.PreviewMessage(
            svc.PreviewMessageRequest(
                name=campaign.name, channel_id="mail", address="Reader00003@example.org"
            )
        )
        with pytest.raises(grpc.RpcError) as bad:
            client.stub.PreviewMessage(
                svc.PreviewMessageRequest(name=campaign.name, channel_id="mail", address="not an address")
            )
    assert reply.summary == "Hello Name00003"
    assert "Dear Name00003 of Oslo." in reply.text
    parsed = email.message_from_bytes(reply.data, policy=email.policy.default)
    assert parsed["To"] == "reader00003@example.org"
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(a.inbox) == 0
    shown = ctl_at(daemon, "preview", campaign.name, "--channel", "mail", "reader00001@example.org")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("Hello Name00001\n")
