"""Crash recovery and send-time opt-outs in the real daemon, counted at the receiving end.

The test channel double records each send that starts in a sink file before it counts as sent,
so a test can tell exactly who was contacted, however often the daemon was killed.
"""

from __future__ import annotations

import collections
import pathlib
import random
import signal
import time

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import contact_service_pb2 as cs
from campaignd.v1 import resources_pb2 as pb
from tests.integration.campaign_client import Client, wait_until
from tests.integration.conftest import TEST_CHANNELS, DaemonFactory, DaemonProcess
from tests.integration.sending import double_campaign, fast_engine, import_list, sink_counts
from tests.timing import timed

FAST = fast_engine(sending_timeout=2.0)


def _emails(list_id: str, count: int) -> list[cs.ContactRow]:
    return [cs.ContactRow(contact_id=f"c{i}", email=f"p{i}@{list_id}.example.org") for i in range(count)]


def _kill_mid_campaign(daemon: DaemonProcess, sink: pathlib.Path, kills: int, seed: int) -> None:
    """kill -9 the daemon `kills` times while it sends, restarting it each time."""
    rng = random.Random(seed)
    for _ in range(kills):
        before = sum(sink_counts(sink).values())

        def more_sent(b: int = before) -> bool:
            return sum(sink_counts(sink).values()) > b + 50

        wait_until(more_sent, what="sends before the kill")
        time.sleep(rng.uniform(0.0, 0.5))
        daemon.signal(signal.SIGKILL)
        daemon.wait(10)
        daemon.start()


def test_kill_9_sends_the_unstarted_once_and_writes_off_only_started_sends(
    daemon_factory: DaemonFactory, tmp_path: pathlib.Path
) -> None:
    """Three kill -9 while 3,000 recipients are sent, the default guard on: the campaign completes
    unpaused; everyone not ambiguous was received exactly once and is SENT; ambiguous messages
    (FAILED `ambiguous`) were received at most once and are few; the guard never paused it."""
    sink = tmp_path / "received"
    daemon = daemon_factory(TEST_CHANNELS + FAST).start()
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = double_campaign(
            client, import_list(client, "crash", _emails("crash", 3000)), sink=str(sink), delay_ms=2
        )
        client.launch(campaign.name)
    _kill_mid_campaign(daemon, sink, kills=3, seed=3000)
    with daemon.channel() as channel:
        client = Client(channel)
        wait_until(
            lambda: client.get(campaign.name).channels[0].state == pb.Channel.COMPLETED, 180, "completion"
        )
        messages = client.messages(campaign.name)
        history = client.history(campaign.name)
        report = client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name))
    received = sink_counts(sink)
    by_state = collections.defaultdict(set)
    for message in messages:
        by_state[(message.state, message.reason)].add(message.address)
    ambiguous = by_state[(pb.Message.FAILED, "ambiguous")]
    sent = by_state[(pb.Message.SENT, "")]
    assert len(messages) == 3000
    assert len(sent) + len(ambiguous) == 3000, {k: len(v) for k, v in by_state.items()}
    assert all(received[a] == 1 for a in sent), "a recipient recorded SENT was not received exactly once"
    assert all(received[a] <= 1 for a in ambiguous), "an ambiguous message was sent again"
    assert set(received) <= sent | ambiguous
    # At most the sends in flight at each kill: 4 batches of 50, less what was recorded.
    assert len(ambiguous) <= 3 * 4 * 50
    assert dict(report.totals.failed_by_reason) == ({"ambiguous": len(ambiguous)} if ambiguous else {})
    assert not [e for e in history if e.operation == "guard_pause"]


@timed
def test_kill_9_with_resend_sends_ambiguous_messages_again(
    daemon_factory: DaemonFactory, tmp_path: pathlib.Path
) -> None:
    """A channel with ambiguous_sends RESEND: after a kill -9, every recipient ends SENT, each
    received once or, for sends that were in doubt, twice — at least once, never lost."""
    sink = tmp_path / "received"
    daemon = daemon_factory(TEST_CHANNELS + FAST).start()
    with daemon.channel() as channel:
        client = Client(channel)
        target = import_list(client, "resend", _emails("resend", 1500))
        # 20 ms a send: a batch's sends take about a second, so the kill lands while some are in
        # doubt (with 2 ms, on a slow machine, every lane could still be waiting for its batch's
        # rendering when it came).
        campaign = double_campaign(client, target, ambiguous=pb.Channel.RESEND, sink=str(sink), delay_ms=20)
        assert campaign.channels[0].ambiguous_sends == pb.Channel.RESEND
        client.launch(campaign.name)
    _kill_mid_campaign(daemon, sink, kills=1, seed=1500)
    with daemon.channel() as channel:
        client = Client(channel)
        wait_until(
            lambda: client.get(campaign.name).channels[0].state == pb.Channel.COMPLETED, 180, "completion"
        )
        messages = client.messages(campaign.name)
    received = sink_counts(sink)
    assert {m.state for m in messages} == {pb.Message.SENT}
    assert set(received) == {m.address for m in messages}
    assert max(received.values()) <= 2
    # A resent message was attempted twice: the ambiguous send counts as an attempt.
    resent = {m.address for m in messages if m.attempts == 2}
    assert {a for a, n in received.items() if n == 2} <= resent
    assert resent, "the kill left no send in doubt"


def test_suppressed_or_deleted_after_launch_are_opted_out_not_sent(
    daemon_factory: DaemonFactory, tmp_path: pathlib.Path
) -> None:
    """On the email and SMS test types, addresses suppressed (any reason, global or for the type)
    and contacts deleted after launch become OPTED_OUT (reason suppressed / contact_deleted), are
    never sent, and are counted opted out in the report; everyone else is sent."""
    # Four batches of 50 share 50/s: each may take 4 s, within the send timeout.
    daemon = daemon_factory(TEST_CHANNELS + fast_engine(sending_timeout=10.0)).start()
    with daemon.channel() as channel:
        client = Client(channel)
        for type_, rows in (
            ("test-email", _emails("optout", 400)),
            ("test-sms", [cs.ContactRow(contact_id=f"s{i}", phone=f"+4420790{i:05d}") for i in range(400)]),
        ):
            sink = tmp_path / f"{type_}.received"
            list_id = type_.replace("test-", "o")
            campaign = double_campaign(
                client, import_list(client, list_id, rows), type_=type_, rate=50, sink=str(sink)
            )
            client.launch(campaign.name)
            messages = client.messages(campaign.name)
            # The last 160 are leased only after about 4 s at 50/s: time to change their fate.
            late = messages[-160:]
            reasons = ["UNSUBSCRIBED", "BOUNCED", "COMPLAINED", "OPTED_OUT", "MANUAL"]
            suppressed = [m.address for m in late[110:]]
            # Half for every type, half for this type only; every reason.
            rules = [
                cs.Suppression(
                    address=address,
                    channel_type="" if i % 2 else type_,
                    reason=cs.Suppression.Reason.Value(reasons[i % len(reasons)]),
                )
                for i, address in enumerate(suppressed)
            ]
            # Suppressed for another type only: still sent.
            other = [m.address for m in late[:10]]
            rules += [
                cs.Suppression(address=a, channel_type="test-voice", reason=cs.Suppression.MANUAL)
                for a in other
            ]
            client.contacts.AddSuppressions(cs.AddSuppressionsRequest(suppressions=rules))
            deleted = {m.address: m.contact for m in late[10:110]}
            for contact in deleted.values():
                client.contacts.DeleteContact(cs.DeleteContactRequest(name=contact))

            def completed(name: str = campaign.name) -> bool:
                return client.get(name).channels[0].state == pb.Channel.COMPLETED

            wait_until(completed)
            final = {m.address: m for m in client.messages(campaign.name)}
            report = client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name))
            received = sink_counts(sink)
            assert not set(suppressed) & set(received)
            assert not set(deleted) & set(received)
            assert {final[a].state for a in suppressed} == {pb.Message.OPTED_OUT}
            assert {final[a].reason for a in suppressed} == {"suppressed"}
            assert {final[a].reason for a in deleted} == {"contact_deleted"}
            assert set(other) <= set(received)
            assert report.totals.opted_out == len(suppressed) + len(deleted)
            assert report.totals.sent == 400 - report.totals.opted_out == sum(received.values())
