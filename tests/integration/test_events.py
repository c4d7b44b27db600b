"""Inbound events applied by the daemon's EventRecorder to a real daemon's database."""

from __future__ import annotations

import asyncio

from campaignd.changes import ChangeHub
from campaignd.engine.events import EventRecorder
from campaignd.plugin import EventKind, InboundEvent
from campaignd.store.db import Database, create_engine
from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import contact_service_pb2 as cs
from campaignd.v1 import resources_pb2 as pb
from tests.integration.campaign_client import Client
from tests.integration.conftest import DaemonFactory
from tests.integration.test_engine import FAST, PLUGINS, _campaign, _people, _state, _wait


def test_receipts_move_messages_and_opt_outs_suppress_addresses(daemon_factory: DaemonFactory) -> None:
    """delivered and bounced move SENT messages by provider id; bounces and unsubscribes suppress."""
    daemon = daemon_factory(PLUGINS + FAST).start()
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = _campaign(client, _people(client, "events", 3))
        client.launch(campaign.name)
        _wait(lambda: _state(client, campaign.name) == pb.Channel.COMPLETED, 30, "the campaign")
        messages = client.stub.ListMessages(svc.ListMessagesRequest(parent=campaign.name)).messages
        delivered, bounced, untouched = sorted(messages, key=lambda m: m.address)
        events = [
            InboundEvent(EventKind.DELIVERED, provider_id=delivered.provider_id),
            InboundEvent(EventKind.BOUNCED, provider_id=bounced.provider_id, address=bounced.address),
            InboundEvent(EventKind.UNSUBSCRIBED, address="someone@events.example.org", detail="link"),
            InboundEvent(EventKind.DELIVERED, provider_id="no-such-message"),
        ]
        database = Database(create_engine(f"sqlite:///{daemon.workdir / 'state' / 'campaignd.db'}"))
        try:
            asyncio.run(EventRecorder(database, ChangeHub()).record("test-email", events))
        finally:
            database.close()
        after = {
            m.address: m
            for m in client.stub.ListMessages(svc.ListMessagesRequest(parent=campaign.name)).messages
        }
        report = client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name))

        def suppressed(address: str) -> bool:
            request = cs.CheckSuppressionRequest(address=address, channel_type="test-email")
            return client.contacts.CheckSuppression(request).suppressed

        assert after[delivered.address].state == pb.Message.DELIVERED
        assert (after[bounced.address].state, after[bounced.address].reason) == (pb.Message.FAILED, "bounced")
        assert after[untouched.address].state == pb.Message.SENT
        assert (report.totals.sent, report.totals.delivered, report.totals.failed) == (1, 1, 1)
        assert suppressed(bounced.address)
        assert suppressed("someone@events.example.org")
        assert not suppressed(untouched.address)
