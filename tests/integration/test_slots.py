"""The slot limit (SPEC §4.4) on every way into RUNNING, in the real daemon with one slot per
test channel type: a scheduled start, Resume (of a channel paused while QUEUED too), Restart and
RetryFailedMessages, under both policies, and two daemons on one PostgreSQL database. Launch and
activation are in test_engine.py.

A campaign that ran and was paused holds the slot for as long as a test needs it."""

from __future__ import annotations

import datetime as dt
import itertools
import pathlib
import time
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import contact_service_pb2 as cs
from campaignd.v1 import resources_pb2 as pb
from tests.integration.campaign_client import ATTESTATION, Client, failure, wait_until
from tests.integration.conftest import TEST_CHANNELS, DaemonFactory, DaemonProcess
from tests.integration.sending import FAST, double_campaign, import_list, sink_log

SLOTS = 'slots = { "test-email" = 1, "test-sms" = 1 }\n'
_lists = itertools.count()

pytestmark = pytest.mark.slow


def _daemon(factory: DaemonFactory, policy: str, extra: str = "") -> DaemonProcess:
    return factory(TEST_CHANNELS + FAST + SLOTS + f'slot_policy = "{policy}"\n' + extra).start()


def _create(
    client: Client, list_id: str, count: int, type_: str = "test-email", **content: Any
) -> pb.Campaign:
    """A campaign of one `type_` channel to a new list of `count` contacts, each with an email
    address and a phone number."""
    block = next(_lists)
    rows = [
        cs.ContactRow(email=f"p{i}@{list_id}.example.org", phone=f"+12025{block:02d}{i:04d}")
        for i in range(count)
    ]
    return double_campaign(client, import_list(client, list_id, rows), type_=type_, **content)


def _report(client: Client, campaign: pb.Campaign) -> pb.Progress:
    return client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name)).totals


def _state(client: Client, campaign: pb.Campaign) -> int:
    return client.get(campaign.name).channels[0].state


def _wait_state(client: Client, campaign: pb.Campaign, state: int, seconds: float = 30) -> None:
    wait_until(lambda: _state(client, campaign) == state, seconds, f"{campaign.name} in state {state}")


def _holder(client: Client, type_: str = "test-email") -> pb.Campaign:
    """A campaign of `type_` that ran and was paused: it keeps the type's one slot."""
    # 400 sends of 25 ms in batches of 50 over 4 lanes: 2.5 s to pause it in, each batch well
    # within the 3 s sending_timeout.
    campaign = _create(client, f"holder-{type_}", 400, type_, delay_ms=25)
    client.launch(campaign.name)
    _wait_state(client, campaign, pb.Channel.RUNNING)
    client.pause(campaign.name)
    return campaign


def _moves(client: Client, campaign: pb.Campaign) -> list[tuple[str, int, int]]:
    return [(e.operation, e.from_state, e.to_state) for e in client.history(campaign.name) if e.channel_id]


def _stays(
    client: Client, campaign: pb.Campaign, state: int, sink: pathlib.Path, seconds: float = 1.0
) -> None:
    """The channel stays in `state` for `seconds`, and its sink receives nothing meanwhile."""
    received = len(sink_log(sink))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert _state(client, campaign) == state
        time.sleep(0.1)
    assert len(sink_log(sink)) == received


def _no_slot(call: Any) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    found = failure(refused.value)
    assert (found.reason, found.metadata) == ("NO_SLOT", {"channel_id": "main"})


def test_a_scheduled_start_waits_for_the_slot_and_a_resume_without_one_is_refused(
    daemon_factory: DaemonFactory, tmp_path: pathlib.Path
) -> None:
    """Policy "refuse": a channel whose time comes while the slot is held starts into QUEUED; paused
    there it holds no slot, so Resume is NO_SLOT until the slot frees, then it runs."""
    daemon = _daemon(daemon_factory, "refuse")
    sink = tmp_path / "scheduled"
    with daemon.channel() as channel:
        client = Client(channel)
        holder = _holder(client)
        scheduled = _create(client, "scheduled", 10, sink=str(sink))
        soon = timestamp_pb2.Timestamp()
        soon.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2))
        client.stub.ScheduleCampaign(
            svc.ScheduleCampaignRequest(name=scheduled.name, schedule_time=soon, attestation=ATTESTATION)
        )
        _wait_state(client, scheduled, pb.Channel.QUEUED)
        _stays(client, scheduled, pb.Channel.QUEUED, sink)
        client.pause(scheduled.name)
        _no_slot(lambda: client.resume(scheduled.name))
        assert _state(client, scheduled) == pb.Channel.PAUSED
        client.stop(holder.name)
        assert client.resume(scheduled.name).channels[0].state == pb.Channel.RUNNING
        _wait_state(client, scheduled, pb.Channel.COMPLETED)
        moves = _moves(client, scheduled)
    assert len(sink_log(sink)) == 10
    assert moves == [
        ("schedule", pb.Channel.DRAFT, pb.Channel.SCHEDULED),
        ("start", pb.Channel.SCHEDULED, pb.Channel.QUEUED),
        ("pause", pb.Channel.QUEUED, pb.Channel.PAUSED),
        ("resume", pb.Channel.PAUSED, pb.Channel.RUNNING),
        ("complete", pb.Channel.RUNNING, pb.Channel.COMPLETED),
    ]


def test_resume_of_a_channel_paused_while_queued_waits_for_the_slot(
    daemon_factory: DaemonFactory, tmp_path: pathlib.Path
) -> None:
    """Policy "queue": resuming a channel paused while QUEUED, with the slot held, puts it back in
    QUEUED, sending nothing; it is activated once the slot frees."""
    daemon = _daemon(daemon_factory, "queue")
    sink = tmp_path / "waiting"
    with daemon.channel() as channel:
        client = Client(channel)
        holder = _holder(client)
        waiting = _create(client, "waiting", 10, sink=str(sink))
        client.launch(waiting.name)
        client.pause(waiting.name)
        assert client.resume(waiting.name).channels[0].state == pb.Channel.QUEUED
        _stays(client, waiting, pb.Channel.QUEUED, sink)
        client.stop(holder.name)
        _wait_state(client, waiting, pb.Channel.COMPLETED)
        moves = _moves(client, waiting)
    assert len(sink_log(sink)) == 10
    assert moves == [
        ("launch", pb.Channel.DRAFT, pb.Channel.QUEUED),
        ("pause", pb.Channel.QUEUED, pb.Channel.PAUSED),
        ("resume", pb.Channel.PAUSED, pb.Channel.QUEUED),
        ("activate", pb.Channel.QUEUED, pb.Channel.RUNNING),
        ("complete", pb.Channel.RUNNING, pb.Channel.COMPLETED),
    ]


def test_a_channel_paused_while_queued_holds_no_slot(daemon_factory: DaemonFactory) -> None:
    """A channel paused before it ever ran does not keep a later launch from its type's slot."""
    daemon = _daemon(daemon_factory, "queue")
    with daemon.channel() as channel:
        client = Client(channel)
        running = _create(client, "running", 20, delay_ms=20)
        client.launch(running.name)
        _wait_state(client, running, pb.Channel.RUNNING)
        paused = _create(client, "paused", 5)
        client.launch(paused.name)
        client.pause(paused.name)
        _wait_state(client, running, pb.Channel.COMPLETED)
        later = _create(client, "later", 5)
        client.launch(later.name)
        _wait_state(client, later, pb.Channel.COMPLETED)
        assert _state(client, paused) == pb.Channel.PAUSED


def test_a_channel_paused_after_it_ran_keeps_its_slot(
    daemon_factory: DaemonFactory, tmp_path: pathlib.Path
) -> None:
    """A paused campaign that ran keeps its slot: a later launch waits in QUEUED, and the paused
    one resumes straight into RUNNING."""
    daemon = _daemon(daemon_factory, "queue")
    sink = tmp_path / "later"
    with daemon.channel() as channel:
        client = Client(channel)
        holder = _holder(client)
        later = _create(client, "later", 5, sink=str(sink))
        client.launch(later.name)
        _stays(client, later, pb.Channel.QUEUED, sink)
        assert client.resume(holder.name).channels[0].state == pb.Channel.RUNNING
        _wait_state(client, holder, pb.Channel.COMPLETED, 60)
        _wait_state(client, later, pb.Channel.COMPLETED)


@pytest.mark.parametrize("policy", ["queue", "refuse"])
def test_restart_is_held_to_the_slot(
    daemon_factory: DaemonFactory, tmp_path: pathlib.Path, policy: str
) -> None:
    """Restarting a stopped channel while its type's slot is held waits in QUEUED ("queue"), or is
    NO_SLOT and changes nothing ("refuse"); once the slot frees, every recipient is sent once."""
    daemon = _daemon(daemon_factory, policy)
    sink = tmp_path / "restarted"
    with daemon.channel() as channel:
        client = Client(channel)
        stopped = _create(client, "restarted", 10, "test-sms", sink=str(sink), delay_ms=200)
        client.launch(stopped.name)
        # Stopped at once: at most a few were sent, the rest are CANCELLED.
        client.pause(stopped.name)
        client.stop(stopped.name)
        before = _report(client, stopped)
        assert before.cancelled > 0
        holder = _holder(client, "test-sms")

        def restart() -> pb.Campaign:
            return client.stub.RestartCampaign(svc.RestartCampaignRequest(name=stopped.name))

        if policy == "queue":
            assert restart().channels[0].state == pb.Channel.QUEUED
            assert _report(client, stopped).queued == before.cancelled
            _stays(client, stopped, pb.Channel.QUEUED, sink)
        else:
            _no_slot(restart)
            assert _state(client, stopped) == pb.Channel.STOPPED
            assert _report(client, stopped) == before
        client.stop(holder.name)
        if policy == "refuse":
            restart()
        _wait_state(client, stopped, pb.Channel.COMPLETED)
        numbers = [
            m.address for m in client.stub.ListMessages(svc.ListMessagesRequest(parent=stopped.name)).messages
        ]
    received = [a for _, a in sink_log(sink)]
    assert sorted(received) == sorted(numbers)
    assert len(set(received)) == 10


@pytest.mark.parametrize("policy", ["queue", "refuse"])
def test_retry_failed_is_held_to_the_slot(
    daemon_factory: DaemonFactory, tmp_path: pathlib.Path, policy: str
) -> None:
    """RetryFailedMessages while the slot is held waits in QUEUED with the failed messages queued
    ("queue"), or is NO_SLOT and changes nothing ("refuse"); once the slot frees, they are sent."""
    daemon = _daemon(daemon_factory, policy)
    sink = tmp_path / "retried"
    with daemon.channel() as channel:
        client = Client(channel)
        # p1@ fails: one of twelve.
        retried = _create(client, "retried", 12, sink=str(sink), fail_matching="p1@")
        client.launch(retried.name)
        _wait_state(client, retried, pb.Channel.COMPLETED)
        assert _report(client, retried).failed == 1
        sent_before = len(sink_log(sink))
        holder = _holder(client)

        def retry() -> pb.Campaign:
            return client.stub.RetryFailedMessages(svc.RetryFailedMessagesRequest(name=retried.name))

        if policy == "queue":
            assert retry().channels[0].state == pb.Channel.QUEUED
            report = _report(client, retried)
            assert (report.queued, report.failed) == (1, 0)
        else:
            _no_slot(retry)
            report = _report(client, retried)
            assert (_state(client, retried), report.queued, report.failed) == (
                pb.Channel.COMPLETED,
                0,
                1,
            )
        time.sleep(1.0)
        assert len(sink_log(sink)) == sent_before
        client.stop(holder.name)
        if policy == "refuse":
            retry()
        _wait_state(client, retried, pb.Channel.COMPLETED)
        moves = _moves(client, retried)
    assert len(sink_log(sink)) == sent_before + 1
    assert (
        "retry_failed",
        pb.Channel.COMPLETED,
        pb.Channel.QUEUED if policy == "queue" else pb.Channel.RUNNING,
    ) in (moves)


def test_two_daemons_on_postgresql_never_share_one_slot(daemon_factory: DaemonFactory, pg_url: str) -> None:
    """Two daemons activating queued campaigns on one PostgreSQL database: one slot, one campaign
    RUNNING at a time, and every campaign completes."""
    config = TEST_CHANNELS + FAST + SLOTS + f'[database]\nurl = "{pg_url}"\n'
    first = daemon_factory(config, name="a").start()
    daemon_factory(config, name="b").start()
    with first.channel() as channel:
        client = Client(channel)
        campaigns = [_create(client, f"race{i}", 10, delay_ms=20) for i in range(4)]
        for campaign in campaigns:
            client.launch(campaign.name)
        seen = set()
        deadline = time.monotonic() + 90
        while True:
            listed = client.stub.ListCampaigns(svc.ListCampaignsRequest(page_size=100)).campaigns
            states = [c.state for c in listed if c.name in {x.name for x in campaigns}]
            seen.add(states.count(pb.Campaign.RUNNING))
            if states.count(pb.Campaign.COMPLETED) == len(campaigns):
                break
            assert time.monotonic() < deadline, f"not all completed: {states}"
            time.sleep(0.02)
    assert seen <= {0, 1}
    assert 1 in seen
