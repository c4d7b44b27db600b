"""Send-time opt-outs and crash recovery on the real email channel: the real daemon, the
campaignd-email plugin and a real SMTP server (aiosmtpd) on loopback."""

from __future__ import annotations

import collections
import signal
from collections.abc import Callable

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import contact_service_pb2 as cs
from campaignd.v1 import resources_pb2 as pb
from tests.integration.campaign_client import Client, wait_until
from tests.integration.conftest import DaemonFactory
from tests.integration.email_campaigns import (
    ENV,
    FAST,
    UNSUBSCRIBE,
    Server,
    email_channel,
    email_transport,
    import_people,
    readers,
    recipient,
)
from tests.timing import timed


def test_email_suppressed_or_deleted_after_launch_is_opted_out_not_sent(
    daemon_factory: DaemonFactory, smtp: Callable[..., Server]
) -> None:
    """Of 600 email recipients sent at 50/s, 60 suppressed (any reason) and 60 deleted after the
    launch become OPTED_OUT and reach no inbox; the report counts them; the rest are delivered."""
    server = smtp()
    # Four batches of 50 in flight share 50/s: the last 120 are leased only after about 5 s.
    engine = FAST + "batch_size = 50\n"
    daemon = daemon_factory(engine + UNSUBSCRIBE + email_transport("relay", server.port), env=ENV).start()
    import_people(daemon, readers(600))
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = client.create(email_channel(rate=50), audience=pb.Audience(target_lists=["lists/readers"]))
        client.launch(campaign.name)
        messages = client.stub.ListMessages(
            svc.ListMessagesRequest(parent=campaign.name, page_size=1000)
        ).messages
        late = sorted(messages, key=lambda m: m.address)[-120:]
        reasons = ["UNSUBSCRIBED", "BOUNCED", "COMPLAINED", "OPTED_OUT", "MANUAL"]
        suppressed = {m.address for m in late[:60]}
        client.contacts.AddSuppressions(
            cs.AddSuppressionsRequest(
                suppressions=[
                    cs.Suppression(
                        address=address,
                        channel_type="email" if i % 2 else "",
                        reason=cs.Suppression.Reason.Value(reasons[i % len(reasons)]),
                    )
                    for i, address in enumerate(sorted(suppressed))
                ]
            )
        )
        deleted = {m.address: m.contact for m in late[60:]}
        for contact in deleted.values():
            client.contacts.DeleteContact(cs.DeleteContactRequest(name=contact))
        assert client.finished(campaign.name).state == pb.Campaign.COMPLETED
        final = {
            m.address: m
            for m in client.stub.ListMessages(
                svc.ListMessagesRequest(parent=campaign.name, page_size=1000)
            ).messages
        }
        report = client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name))
    inbox = {recipient(m) for m in server.inbox.parsed()}
    assert not inbox & suppressed
    assert not inbox & set(deleted)
    assert {(final[a].state, final[a].reason) for a in suppressed} == {(pb.Message.OPTED_OUT, "suppressed")}
    assert {(final[a].state, final[a].reason) for a in deleted} == {(pb.Message.OPTED_OUT, "contact_deleted")}
    assert report.totals.opted_out == 120
    assert report.totals.sent == len(inbox) == 480


@timed
def test_email_kill_9_sends_everyone_once_but_the_ambiguous(
    daemon_factory: DaemonFactory, smtp: Callable[..., Server]
) -> None:
    """Three kill -9 while 2,000 emails go out at 200/s: the campaign completes unpaused; every
    recipient recorded SENT reached the server exactly once, every other one is FAILED
    `ambiguous` and reached it at most once, and the guard never paused the channel."""
    server = smtp()
    engine = FAST.replace("sending_timeout = 10.0", "sending_timeout = 3.0") + "batch_size = 50\n"
    daemon = daemon_factory(engine + UNSUBSCRIBE + email_transport("relay", server.port), env=ENV).start()
    import_people(daemon, readers(2000))
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = client.create(
            email_channel(rate=200), audience=pb.Audience(target_lists=["lists/readers"])
        )
        client.launch(campaign.name)
    for _ in range(3):
        before = len(server.inbox)

        def more_sent(b: int = before) -> bool:
            return len(server.inbox) > b + 150

        wait_until(more_sent, what="sends before the kill")
        daemon.signal(signal.SIGKILL)
        daemon.wait(10)
        daemon.start()
    with daemon.channel() as channel:
        client = Client(channel)
        assert client.finished(campaign.name).state == pb.Campaign.COMPLETED
        messages: list[pb.Message] = []
        token = ""
        while True:
            page = client.stub.ListMessages(
                svc.ListMessagesRequest(parent=campaign.name, page_size=1000, page_token=token)
            )
            messages += page.messages
            token = page.next_page_token
            if not token:
                break
        history = client.history(campaign.name)
    received = collections.Counter(recipient(m) for m in server.inbox.parsed())
    sent = {m.address for m in messages if m.state == pb.Message.SENT}
    ambiguous = {m.address for m in messages if m.state == pb.Message.FAILED and m.reason == "ambiguous"}
    assert len(sent) + len(ambiguous) == 2000
    assert all(received[a] == 1 for a in sent), "a recipient recorded SENT was not received exactly once"
    assert all(received[a] <= 1 for a in ambiguous), "an ambiguous message was sent again"
    # In doubt: at most the batches in flight at each kill; few of them never reached the server.
    assert len(ambiguous) <= 3 * 4 * 50
    # Marked ahead but never sent: about 250 ms of each batch's sends (12 at 50/s) per kill.
    marked_unsent = [a for a in ambiguous if not received[a]]
    assert len(marked_unsent) <= 3 * 4 * 15
    assert not [e for e in history if e.operation == "guard_pause"]
