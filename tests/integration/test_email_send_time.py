"""Send-time opt-outs on the real email channel: the real daemon, the campaignd-email plugin and a
real SMTP server (aiosmtpd) on loopback."""

from __future__ import annotations

from collections.abc import Callable

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import contact_service_pb2 as cs
from campaignd.v1 import resources_pb2 as pb
from tests.integration.campaign_client import Client
from tests.integration.conftest import DaemonFactory
from tests.integration.test_email import (
    ENV,
    FAST,
    UNSUBSCRIBE,
    Server,
    _email_channel,
    _finished,
    _import,
    _readers,
    _recipient,
    _transport,
    smtp,
)

__all__ = ["smtp"]  # the fixture, used by name


def test_email_suppressed_or_deleted_after_launch_is_opted_out_not_sent(
    daemon_factory: DaemonFactory, smtp: Callable[..., Server]
) -> None:
    """Of 600 email recipients sent at 50/s, 60 suppressed (any reason) and 60 deleted after the
    launch become OPTED_OUT and reach no inbox; the report counts them; the rest are delivered."""
    server = smtp()
    # Four batches of 50 in flight share 50/s: the last 120 are leased only after about 5 s.
    engine = FAST + "batch_size = 50\n"
    daemon = daemon_factory(engine + UNSUBSCRIBE + _transport("relay", server.port), env=ENV).start()
    _import(daemon, _readers(600))
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = client.create(
            _email_channel(rate=50), audience=pb.Audience(target_lists=["lists/readers"])
        )
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
        assert _finished(client, campaign.name).state == pb.Campaign.COMPLETED
        final = {
            m.address: m
            for m in client.stub.ListMessages(
                svc.ListMessagesRequest(parent=campaign.name, page_size=1000)
            ).messages
        }
        report = client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name))
    inbox = {_recipient(m) for m in server.inbox.parsed()}
    assert not inbox & suppressed
    assert not inbox & set(deleted)
    assert {(final[a].state, final[a].reason) for a in suppressed} == {(pb.Message.OPTED_OUT, "suppressed")}
    assert {(final[a].state, final[a].reason) for a in deleted} == {(pb.Message.OPTED_OUT, "contact_deleted")}
    assert report.totals.opted_out == 120
    assert report.totals.sent == len(inbox) == 480
