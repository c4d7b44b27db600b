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
from tests.integration.campaign_client import Client, wait_until
from tests.integration.conftest import TEST_CHANNELS, DaemonFactory
from tests.integration.sending import FAST, double_campaign, people


def test_receipts_move_messages_and_opt_outs_suppress_addresses(daemon_factory: DaemonFactory) -> None:
    """delivered and bounced move SENT messages by provider id; bounces and unsubscribes suppress."""
    daemon = daemon_factory(TEST_CHANNELS + FAST).start()
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = double_campaign(client, people(client, "events", 3))
        client.launch(campaign.name)
        wait_until(lambda: client.channel_state(campaign.name) == pb.Channel.COMPLETED, 30, "the campaign")
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

        assert after[delivered.address].state == pb.Message.DELIVERED
        assert (after[bounced.address].state, after[bounced.address].reason) == (pb.Message.FAILED, "bounced")
        assert after[untouched.address].state == pb.Message.SENT
        assert (report.totals.sent, report.totals.delivered, report.totals.failed) == (1, 1, 1)
        assert client.suppressed(bounced.address, "test-email")
        assert client.suppressed("someone@events.example.org", "test-email")
        assert not client.suppressed(untouched.address, "test-email")


def test_an_opt_out_outranks_a_suppression_added_by_hand_and_replies_apply_in_order(
    daemon_factory: DaemonFactory,
) -> None:
    """A STOP from a number suppressed by hand on the type makes that suppression an opt-out, so
    lifting the manual one cannot make the number sendable; STOP then START in one batch leaves a
    number sendable, START then STOP leaves it opted out."""
    daemon = daemon_factory(TEST_CHANNELS).start()
    by_hand, stop_start, start_stop = "+12025550101", "+12025550102", "+12025550103"
    with daemon.channel() as channel:
        client = Client(channel)
        client.contacts.AddSuppressions(
            cs.AddSuppressionsRequest(
                suppressions=[
                    cs.Suppression(
                        address=by_hand, channel_type="test-sms", reason=cs.Suppression.MANUAL, source="crm"
                    )
                ]
            )
        )
        events = [
            InboundEvent(EventKind.OPTED_OUT, address=by_hand, detail="STOP"),
            InboundEvent(EventKind.OPTED_OUT, address=stop_start, detail="STOP"),
            InboundEvent(EventKind.OPTED_IN, address=stop_start, detail="START"),
            InboundEvent(EventKind.OPTED_IN, address=start_stop, detail="START"),
            InboundEvent(EventKind.OPTED_OUT, address=start_stop, detail="STOP"),
        ]
        database = Database(create_engine(f"sqlite:///{daemon.workdir / 'state' / 'campaignd.db'}"))
        try:
            asyncio.run(EventRecorder(database, ChangeHub()).record("test-sms", events))
        finally:
            database.close()
        found = client.contacts.ListSuppressions(cs.ListSuppressionsRequest(address=by_hand)).suppressions

        assert [(s.channel_type, s.reason) for s in found] == [("test-sms", cs.Suppression.OPTED_OUT)]
        assert "STOP" in found[0].source
        assert not client.suppressed(stop_start, "test-sms")
        assert client.suppressed(start_stop, "test-sms")


def test_ids_and_reasons_longer_than_kept_are_cut_and_still_found(
    daemon_factory: DaemonFactory, database_url: str
) -> None:
    """A plugin's provider ids of 300 characters and reasons of 100 (the columns keep 200 and 63):
    every result is written, cut, on SQLite and on PostgreSQL (which refuses longer values and
    would lose the whole batch's results), and a receipt naming the full id finds its message."""
    daemon = daemon_factory(TEST_CHANNELS + FAST + f'[database]\nurl = "{database_url}"\n').start()
    with daemon.channel() as channel:
        client = Client(channel)
        target = people(client, "long", 4)
        campaign = double_campaign(client, target, long_words=True, fail_matching="p3@")
        client.launch(campaign.name)
        wait_until(lambda: client.channel_state(campaign.name) == pb.Channel.COMPLETED, 30, "the campaign")
        listed = client.stub.ListMessages(svc.ListMessagesRequest(parent=campaign.name)).messages
        by_address = {m.address: m for m in listed}
        failed = by_address.pop("p3@long.example.org")
        assert (failed.state, failed.reason) == (pb.Message.FAILED, "rejected".ljust(63, "-"))
        assert {m.state for m in by_address.values()} == {pb.Message.SENT}
        kept = [m.provider_id for m in by_address.values()]
        assert all(len(p) == 200 and p.startswith("test-") for p in kept)
        # The ids the plugin gave: what is kept, and then more of the same padding.
        full = {a: m.provider_id.ljust(300, "x") for a, m in by_address.items()}

        receipt = "p0@long.example.org"
        url = database_url.replace("postgresql://", "postgresql+psycopg://", 1)
        database = Database(create_engine(url))
        try:
            events = [InboundEvent(EventKind.DELIVERED, provider_id=full[receipt])]
            asyncio.run(EventRecorder(database, ChangeHub()).record("test-email", events))
        finally:
            database.close()
        after = client.stub.ListMessages(svc.ListMessagesRequest(parent=campaign.name)).messages
        states = {m.address: m.state for m in after}
        assert states.pop(receipt) == pb.Message.DELIVERED
        assert set(states.values()) == {pb.Message.SENT, pb.Message.FAILED}
