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
from collections.abc import Callable
from typing import Any

from google.protobuf import struct_pb2

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import contact_service_pb2 as cs
from campaignd.v1 import resources_pb2 as pb
from tests.integration.campaign_client import Client
from tests.integration.conftest import DaemonFactory, DaemonProcess

PLUGINS = '[plugins]\nload = ["campaignd.testing.channels"]\n'
FAST = "[engine]\ntick_interval = 0.05\nretry_delay = 0.2\nsending_timeout = 2.0\nbatch_size = 50\n"


def _wait(predicate: Callable[[], bool], seconds: float = 120.0, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _received(sink: pathlib.Path) -> collections.Counter[str]:
    if not sink.exists():
        return collections.Counter()
    return collections.Counter(line.split(" ", 1)[1] for line in sink.read_text().splitlines())


def _people(client: Client, list_id: str, rows: list[cs.ContactRow]) -> str:
    client.contacts.CreateList(
        cs.CreateListRequest(list_id=list_id, list=cs.ContactList(display_name=list_id))
    )
    requests = [cs.ImportContactsRequest(options=cs.ImportOptions(list=f"lists/{list_id}"))]
    requests += [cs.ImportContactsRequest(rows=rows[i : i + 1000]) for i in range(0, len(rows), 1000)]
    assert client.contacts.ImportContacts(iter(requests)).created == len(rows)
    return f"lists/{list_id}"


def _emails(list_id: str, count: int) -> list[cs.ContactRow]:
    return [cs.ContactRow(contact_id=f"c{i}", email=f"p{i}@{list_id}.example.org") for i in range(count)]


def _campaign(
    client: Client,
    target: str,
    *,
    type_: str = "test-email",
    guard: pb.GuardSettings | None = None,
    ambiguous: pb.Channel.AmbiguousSends.ValueType = pb.Channel.AMBIGUOUS_SENDS_UNSPECIFIED,
    rate: float = 0,
    **content: Any,
) -> pb.Campaign:
    struct = struct_pb2.Struct()
    struct.update({"text": "hello", **content})
    channel = pb.Channel(
        channel_id="main", type=type_, content=struct, ambiguous_sends=ambiguous, rate_limit=rate
    )
    return client.stub.CreateCampaign(
        svc.CreateCampaignRequest(
            campaign=pb.Campaign(
                display_name="Recovery",
                audience=pb.Audience(target_lists=[target]),
                guard=guard,
                channels=[channel],
            )
        )
    )


def _messages(client: Client, name: str) -> list[pb.Message]:
    found: list[pb.Message] = []
    token = ""
    while True:
        page = client.stub.ListMessages(
            svc.ListMessagesRequest(parent=name, page_size=1000, page_token=token)
        )
        found.extend(page.messages)
        token = page.next_page_token
        if not token:
            return found


def _kill_mid_campaign(daemon: DaemonProcess, sink: pathlib.Path, kills: int, seed: int) -> None:
    """kill -9 the daemon `kills` times while it sends, restarting it each time."""
    rng = random.Random(seed)
    for _ in range(kills):
        before = sum(_received(sink).values())

        def more_sent(b: int = before) -> bool:
            return sum(_received(sink).values()) > b + 50

        _wait(more_sent, what="sends before the kill")
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
    daemon = daemon_factory(PLUGINS + FAST).start()
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = _campaign(
            client, _people(client, "crash", _emails("crash", 3000)), sink=str(sink), delay_ms=2
        )
        client.launch(campaign.name)
    _kill_mid_campaign(daemon, sink, kills=3, seed=3000)
    with daemon.channel() as channel:
        client = Client(channel)
        _wait(lambda: client.get(campaign.name).channels[0].state == pb.Channel.COMPLETED, 180, "completion")
        messages = _messages(client, campaign.name)
        history = client.history(campaign.name)
        report = client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name))
    received = _received(sink)
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


def test_kill_9_with_resend_sends_ambiguous_messages_again(
    daemon_factory: DaemonFactory, tmp_path: pathlib.Path
) -> None:
    """A channel with ambiguous_sends RESEND: after a kill -9, every recipient ends SENT, each
    received once or, for sends that were in doubt, twice — at least once, never lost."""
    sink = tmp_path / "received"
    daemon = daemon_factory(PLUGINS + FAST).start()
    with daemon.channel() as channel:
        client = Client(channel)
        target = _people(client, "resend", _emails("resend", 1500))
        campaign = _campaign(client, target, ambiguous=pb.Channel.RESEND, sink=str(sink), delay_ms=2)
        assert campaign.channels[0].ambiguous_sends == pb.Channel.RESEND
        client.launch(campaign.name)
    _kill_mid_campaign(daemon, sink, kills=1, seed=1500)
    with daemon.channel() as channel:
        client = Client(channel)
        _wait(lambda: client.get(campaign.name).channels[0].state == pb.Channel.COMPLETED, 180, "completion")
        messages = _messages(client, campaign.name)
    received = _received(sink)
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
    daemon = daemon_factory(PLUGINS + FAST.replace("sending_timeout = 2.0", "sending_timeout = 10.0")).start()
    with daemon.channel() as channel:
        client = Client(channel)
        for type_, rows in (
            ("test-email", _emails("optout", 400)),
            ("test-sms", [cs.ContactRow(contact_id=f"s{i}", phone=f"+4420790{i:05d}") for i in range(400)]),
        ):
            sink = tmp_path / f"{type_}.received"
            list_id = type_.replace("test-", "o")
            campaign = _campaign(client, _people(client, list_id, rows), type_=type_, rate=50, sink=str(sink))
            client.launch(campaign.name)
            messages = _messages(client, campaign.name)
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

            _wait(completed)
            final = {m.address: m for m in _messages(client, campaign.name)}
            report = client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name))
            received = _received(sink)
            assert not set(suppressed) & set(received)
            assert not set(deleted) & set(received)
            assert {final[a].state for a in suppressed} == {pb.Message.OPTED_OUT}
            assert {final[a].reason for a in suppressed} == {"suppressed"}
            assert {final[a].reason for a in deleted} == {"contact_deleted"}
            assert set(other) <= set(received)
            assert report.totals.opted_out == len(suppressed) + len(deleted)
            assert report.totals.sent == 400 - report.totals.opted_out == sum(received.values())
