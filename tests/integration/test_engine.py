"""The sending engine in the real daemon, with the test channel double counting at the receiving end."""

from __future__ import annotations

import collections
import pathlib
import random
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import contact_service_pb2 as cs
from campaignd.v1 import resources_pb2 as pb
from tests.integration.campaign_client import ATTESTATION, Client, failure, future
from tests.integration.conftest import DaemonFactory, DaemonProcess

PLUGINS = '[plugins]\nload = ["campaignd.testing.channels"]\n'
FAST = "[engine]\ntick_interval = 0.05\nretry_delay = 0.2\nsending_timeout = 3.0\nbatch_size = 50\n"


def _content(**values: Any) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update({"text": "hello", **values})
    return struct


def _people(client: Client, list_id: str, count: int, start: int = 0) -> str:
    client.contacts.CreateList(
        cs.CreateListRequest(list_id=list_id, list=cs.ContactList(display_name=list_id))
    )
    rows = [cs.ContactRow(email=f"p{i}@{list_id}.example.org") for i in range(start, start + count)]
    requests = [cs.ImportContactsRequest(options=cs.ImportOptions(list=f"lists/{list_id}"))]
    requests += [cs.ImportContactsRequest(rows=rows[i : i + 1000]) for i in range(0, len(rows), 1000)]
    assert client.contacts.ImportContacts(iter(requests)).created == count
    return f"lists/{list_id}"


def _campaign(
    client: Client, target: str, guard: pb.GuardSettings | None = None, **content: Any
) -> pb.Campaign:
    return client.stub.CreateCampaign(
        svc.CreateCampaignRequest(
            campaign=pb.Campaign(
                display_name="Engine",
                audience=pb.Audience(target_lists=[target]),
                guard=guard,
                channels=[pb.Channel(channel_id="main", type="test-email", content=_content(**content))],
            )
        )
    )


def _received(sink: pathlib.Path) -> list[tuple[float, str]]:
    if not sink.exists():
        return []
    lines = sink.read_text().splitlines()
    return [(float(t), a) for t, a in (line.split(" ", 1) for line in lines)]


def _wait(predicate: Callable[[], bool], seconds: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _state(client: Client, name: str) -> int:
    return client.get(name).channels[0].state


@pytest.fixture
def engine_daemon(daemon_factory: DaemonFactory) -> DaemonProcess:
    """A daemon whose engine ticks fast."""
    return daemon_factory(PLUGINS + FAST).start()


@pytest.fixture
def client(engine_daemon: DaemonProcess) -> Iterator[Client]:
    """A client of the engine daemon."""
    with engine_daemon.channel() as channel:
        yield Client(channel)


def test_a_campaign_runs_to_completion_sending_everyone_once(client: Client, tmp_path: pathlib.Path) -> None:
    """Launch → RUNNING → COMPLETED; each of 300 recipients is received exactly once and counted SENT."""
    sink = tmp_path / "received"
    campaign = _campaign(client, _people(client, "run", 300), sink=str(sink))
    client.launch(campaign.name)
    _wait(lambda: _state(client, campaign.name) == pb.Channel.COMPLETED, what="completion")
    addresses = [a for _, a in _received(sink)]
    assert len(addresses) == 300
    assert len(set(addresses)) == 300
    report = client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name))
    assert (report.totals.total, report.totals.sent, report.totals.queued) == (300, 300, 0)
    assert report.totals.percent_done == 100
    history = [(e.operation, e.cause) for e in client.history(campaign.name)]
    assert ("activate", pb.CampaignEvent.SCHEDULE) in history
    assert history[-1] == ("complete", pb.CampaignEvent.SYSTEM)


@pytest.mark.slow
def test_pause_is_a_barrier_and_resume_sends_exactly_the_rest(client: Client, tmp_path: pathlib.Path) -> None:
    """No send starts after PauseCampaign returns; resume sends the rest; nobody twice."""
    sink = tmp_path / "received"
    campaign = _campaign(client, _people(client, "barrier", 400), sink=str(sink), delay_ms=10)
    client.launch(campaign.name)
    _wait(lambda: len(_received(sink)) >= 50, what="the first sends")
    client.pause(campaign.name)
    paused_at = time.time()
    time.sleep(1.5)
    late = [a for t, a in _received(sink) if t > paused_at]
    assert late == [], f"{len(late)} sends started after Pause returned"
    sent_before = len(_received(sink))
    assert sent_before < 400
    report = client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name))
    assert report.totals.sending == 0
    assert report.totals.sent == sent_before
    assert report.totals.queued == 400 - sent_before
    client.resume(campaign.name)
    _wait(lambda: _state(client, campaign.name) == pb.Channel.COMPLETED, what="completion")
    addresses = [a for _, a in _received(sink)]
    assert len(addresses) == 400
    assert len(set(addresses)) == 400


def test_stop_cancels_the_rest_and_records_in_flight_sends(client: Client, tmp_path: pathlib.Path) -> None:
    """Stop: what was started is recorded SENT, the rest CANCELLED, and nothing more is sent."""
    sink = tmp_path / "received"
    campaign = _campaign(client, _people(client, "stop", 300), sink=str(sink), delay_ms=10)
    client.launch(campaign.name)
    _wait(lambda: len(_received(sink)) >= 30, what="the first sends")
    client.stop(campaign.name)
    stopped_at = time.time()
    time.sleep(1.0)
    assert [a for t, a in _received(sink) if t > stopped_at] == []
    report = client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name))
    received = len(_received(sink))
    assert report.totals.sent == received
    assert report.totals.cancelled == 300 - received
    assert report.totals.sending == report.totals.queued == 0
    assert client.get(campaign.name).state == pb.Campaign.STOPPED


def test_deferrals_are_retried_then_fail(client: Client, tmp_path: pathlib.Path) -> None:
    """Deferred sends go RETRYING, are tried max_attempts times, then FAIL as retries_exhausted."""
    sink = tmp_path / "received"
    target = _people(client, "defer", 20)
    campaign = _campaign(client, target, sink=str(sink), defer_matching="p1@")
    client.launch(campaign.name)
    _wait(lambda: _state(client, campaign.name) == pb.Channel.COMPLETED, what="completion")
    report = client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name))
    assert (report.totals.sent, report.totals.failed) == (19, 1)
    assert dict(report.totals.failed_by_reason) == {"retries_exhausted": 1}
    attempts = collections.Counter(a for _, a in _received(sink))
    assert attempts["p1@defer.example.org"] == 3
    failed = client.stub.ListMessages(
        svc.ListMessagesRequest(parent=campaign.name, states=[pb.Message.FAILED])
    )
    assert [(m.address, m.attempts, m.reason) for m in failed.messages] == [
        ("p1@defer.example.org", 3, "retries_exhausted")
    ]


def test_the_guard_pauses_a_failing_channel(daemon_factory: DaemonFactory, tmp_path: pathlib.Path) -> None:
    """Over 5 % failures after 20 sends, the guard pauses the channel and says why in the history."""
    daemon = daemon_factory(PLUGINS + FAST + "guard_min_sends = 20\n").start()
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = _campaign(client, _people(client, "guard", 200), fail_matching="1@", delay_ms=5)
        client.launch(campaign.name)
        _wait(lambda: _state(client, campaign.name) == pb.Channel.PAUSED, what="the guard")
        last = client.history(campaign.name)[-1]
        assert (last.operation, last.cause) == ("guard_pause", pb.CampaignEvent.GUARD)
        assert "failure rate" in last.reason


def test_a_transport_that_fails_fatally_fails_the_channel(client: Client) -> None:
    """When every send is a transport failure, the channel goes FAILED with the error kept, and
    the messages still waiting are CANCELLED with reason channel_failed."""
    campaign = _campaign(client, _people(client, "fatal", 300), fatal=True)
    client.launch(campaign.name)
    _wait(lambda: _state(client, campaign.name) == pb.Channel.FAILED, what="failure")
    failed = client.get(campaign.name).channels[0]
    assert failed.error.code == "TRANSPORT_FAILED"
    assert "535" in failed.error.message

    # FAILED is final: nothing is left waiting to be sent, once the batches in flight are recorded.
    def report() -> Any:
        return client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name)).totals

    _wait(lambda: report().sending == 0, what="the batches in flight")
    totals = report()
    assert totals.queued == totals.retrying == totals.sending == 0
    assert totals.cancelled + totals.failed == 300
    assert totals.cancelled > 0
    cancelled = _all_messages(client, campaign.name, pb.Message.CANCELLED)
    assert {m.reason for m in cancelled} == {"channel_failed"}


@pytest.mark.slow
def test_rate_limit_holds_over_any_second(client: Client, tmp_path: pathlib.Path) -> None:
    """A channel limited to 20/s never has more than 20 sends in any one-second window."""
    sink = tmp_path / "received"
    target = _people(client, "rate", 70)
    campaign = client.stub.CreateCampaign(
        svc.CreateCampaignRequest(
            campaign=pb.Campaign(
                display_name="Rate",
                audience=pb.Audience(target_lists=[target]),
                channels=[
                    pb.Channel(
                        channel_id="main", type="test-email", rate_limit=20, content=_content(sink=str(sink))
                    )
                ],
            )
        )
    )
    client.launch(campaign.name)
    _wait(lambda: _state(client, campaign.name) == pb.Channel.COMPLETED, what="completion")
    times = sorted(t for t, _ in _received(sink))
    assert len(times) == 70
    # The double stamps each send just after the gate admitted it, so allow 10 ms of jitter.
    worst = max(sum(1 for t in times[i:] if t < start + 0.99) for i, start in enumerate(times))
    assert worst <= 20
    assert times[-1] - times[0] >= 3.0


def test_a_scheduled_channel_starts_by_itself(client: Client, tmp_path: pathlib.Path) -> None:
    """A channel scheduled two seconds ahead starts, resolves its audience then, and completes."""
    sink = tmp_path / "received"
    target = _people(client, "sched", 5)
    campaign = _campaign(client, target, sink=str(sink))
    when = future(0)
    when.seconds += 2
    client.stub.ScheduleCampaign(
        svc.ScheduleCampaignRequest(name=campaign.name, schedule_time=when, attestation=ATTESTATION)
    )
    time.sleep(0.5)
    assert _state(client, campaign.name) == pb.Channel.SCHEDULED
    _wait(lambda: _state(client, campaign.name) == pb.Channel.COMPLETED, what="the scheduled start")
    assert len(_received(sink)) == 5
    operations = [e.operation for e in client.history(campaign.name)]
    assert operations[-3:] == ["start", "activate", "complete"]


@pytest.mark.slow
def test_kill_9_loses_nothing_and_sends_nothing_twice(
    daemon_factory: DaemonFactory, tmp_path: pathlib.Path
) -> None:
    """Five kill -9 at random moments of a 20,000-recipient campaign: it still completes, every
    recipient ends in one final state, and nobody counted SENT is received twice."""
    sink = tmp_path / "received"
    daemon = daemon_factory(PLUGINS + FAST.replace("sending_timeout = 3.0", "sending_timeout = 2.0"))
    daemon.start()
    with daemon.channel() as channel:
        client = Client(channel)
        # Only sends that had started are failed after a kill; the guard must not pause for them anyway.
        no_guard = pb.GuardSettings(max_failure_percent=100)
        campaign = _campaign(client, _people(client, "crash", 20_000), no_guard, sink=str(sink), delay_ms=0.2)
        client.launch(campaign.name)
    rng = random.Random(20_000)
    for _ in range(5):
        time.sleep(rng.uniform(0.3, 1.5))
        daemon.signal(signal.SIGKILL)
        daemon.wait(10)
        daemon.start()
    with daemon.channel() as channel:
        client = Client(channel)
        _wait(lambda: client.get(campaign.name).channels[0].state == pb.Channel.COMPLETED, 240, "completion")
        report = client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name))
        sent = {m.address for m in _all_messages(client, campaign.name, pb.Message.SENT)}
    received = collections.Counter(a for _, a in _received(sink))
    assert report.totals.total == 20_000
    assert report.totals.queued == report.totals.sending == report.totals.retrying == 0
    assert report.totals.sent + report.totals.failed == 20_000
    # Failures may only be sends whose result died with a process: ambiguous, never re-sent.
    assert set(report.totals.failed_by_reason) <= {"ambiguous"}
    assert all(received[a] == 1 for a in sent), "a recipient recorded SENT was sent again"
    assert max(received.values()) == 1, "a recipient was sent twice"
    assert len(sent) == report.totals.sent


def _all_messages(client: Client, name: str, state: pb.Message.State.ValueType) -> list[pb.Message]:
    found: list[pb.Message] = []
    token = ""
    while True:
        page = client.stub.ListMessages(
            svc.ListMessagesRequest(parent=name, states=[state], page_size=1000, page_token=token)
        )
        found.extend(page.messages)
        token = page.next_page_token
        if not token:
            return found


def test_watch_streams_progress_to_the_end(client: Client) -> None:
    """A watcher sees the campaign move from QUEUED or RUNNING to COMPLETED with counts rising."""
    campaign = _campaign(client, _people(client, "watch", 200), delay_ms=5)
    client.launch(campaign.name)
    seen: list[tuple[int, int]] = []
    for update in client.stub.WatchCampaign(svc.WatchCampaignRequest(name=campaign.name), timeout=60):
        seen.append((update.campaign.state, update.report.totals.sent))
        if update.campaign.state == pb.Campaign.COMPLETED:
            break
    assert seen[-1] == (pb.Campaign.COMPLETED, 200)
    sent_counts = [s for _, s in seen]
    assert sent_counts == sorted(sent_counts)
    with pytest.raises(grpc.RpcError):
        client.stub.PauseCampaign(svc.PauseCampaignRequest(name=campaign.name))


def test_progress_shows_rate_and_eta_while_sending(client: Client) -> None:
    """While a channel sends, its report has a current rate and an ETA; at the end, the ETA is gone."""
    campaign = _campaign(client, _people(client, "eta", 300), delay_ms=10)
    client.launch(campaign.name)
    _wait(
        lambda: (
            client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name)).totals.sent >= 60
        ),
        what="some sends",
    )
    report = client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name))
    assert report.channels[0].progress.current_rate > 10
    assert report.totals.HasField("eta")
    assert report.totals.eta.ToDatetime() > report.report_time.ToDatetime()
    _wait(lambda: _state(client, campaign.name) == pb.Channel.COMPLETED, what="completion")
    final = client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name))
    assert not final.totals.HasField("eta")


def test_refuse_policy_refuses_a_launch_without_a_slot(daemon_factory: DaemonFactory) -> None:
    """With one test-email slot and policy "refuse", a second launch fails with NO_SLOT and stays DRAFT."""
    daemon = daemon_factory(PLUGINS + FAST + 'slots = { "test-email" = 1 }\nslot_policy = "refuse"\n').start()
    with daemon.channel() as channel:
        client = Client(channel)
        first = _campaign(client, _people(client, "slot-a", 200), delay_ms=20)
        client.launch(first.name)
        _wait(lambda: _state(client, first.name) == pb.Channel.RUNNING, what="the first to run")
        second = _campaign(client, _people(client, "slot-b", 5, start=1000))
        with pytest.raises(grpc.RpcError) as refused:
            client.launch(second.name)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert failure(refused.value).reason == "NO_SLOT"
        assert client.get(second.name).state == pb.Campaign.DRAFT


def test_metrics_endpoint_counts_messages_and_rpcs(daemon_factory: DaemonFactory) -> None:
    """/metrics shows messages by channel type and outcome, queue depth, and RPC latency."""
    daemon = daemon_factory(
        PLUGINS + FAST + '[metrics]\naddress = "127.0.0.1:0"\n[log]\nformat = "json"\n'
    ).start()
    port = next(e for e in daemon.log_events() if e["event"] == "serving")["metrics_port"]
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = _campaign(client, _people(client, "metrics", 40), fail_matching="p1@")
        client.launch(campaign.name)
        _wait(lambda: _state(client, campaign.name) == pb.Channel.COMPLETED, what="completion")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert (
        'campaignd_messages_total{channel_type="test-email",outcome="sent",transport="default"} 39.0' in text
    )
    assert (
        'campaignd_messages_total{channel_type="test-email",outcome="failed",transport="default"} 1.0' in text
    )
    assert (
        'campaignd_rpc_duration_seconds_count{code="OK",method="/campaignd.v1.CampaignService/LaunchCampaign"}'
        in text
    )
    assert "campaignd_queue_depth" in text


@pytest.mark.slow
def test_sent_without_receipt_is_assumed_delivered_on_receipt_channels(daemon_factory: DaemonFactory) -> None:
    """On a type with receipts, SENT turns ASSUMED_DELIVERED after the set time; email-like stays SENT."""
    daemon = daemon_factory(PLUGINS + FAST + "assume_delivered_after = 1.0\n").start()
    with daemon.channel() as channel:
        client = Client(channel)
        client.contacts.CreateList(
            cs.CreateListRequest(list_id="assume", list=cs.ContactList(display_name="a"))
        )
        rows = [cs.ContactRow(email=f"a{i}@example.org", phone=f"+1202555060{i}") for i in range(5)]
        options = cs.ImportContactsRequest(options=cs.ImportOptions(list="lists/assume"))
        assert (
            client.contacts.ImportContacts(iter([options, cs.ImportContactsRequest(rows=rows)])).created == 5
        )
        campaign = client.stub.CreateCampaign(
            svc.CreateCampaignRequest(
                campaign=pb.Campaign(
                    display_name="Receipts",
                    audience=pb.Audience(target_lists=["lists/assume"]),
                    channels=[
                        pb.Channel(channel_id="mail", type="test-email", content=_content()),
                        pb.Channel(channel_id="text", type="test-sms", content=_content()),
                    ],
                )
            )
        )
        client.launch(campaign.name)

        def progress() -> list[tuple[int, int]]:
            report = client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name))
            return [(c.progress.sent, c.progress.assumed_delivered) for c in report.channels]

        _wait(lambda: progress() == [(5, 0), (0, 5)], 30, "SMS receipts to be assumed")
        time.sleep(1.5)
        assert progress() == [(5, 0), (0, 5)]
        assert client.get(campaign.name).state == pb.Campaign.COMPLETED


@pytest.mark.slow
def test_a_schedule_missed_while_down_starts_at_the_next_start(
    daemon_factory: DaemonFactory, tmp_path: pathlib.Path
) -> None:
    """A channel whose time came while the daemon was stopped starts when the daemon starts again."""
    sink = tmp_path / "received"
    daemon = daemon_factory(PLUGINS + FAST).start()
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = _campaign(client, _people(client, "missed", 5), sink=str(sink))
        when = future(0)
        when.seconds += 2
        client.stub.ScheduleCampaign(
            svc.ScheduleCampaignRequest(name=campaign.name, schedule_time=when, attestation=ATTESTATION)
        )
    assert daemon.stop() == 0
    time.sleep(3)
    assert not sink.exists()
    daemon.start()
    with daemon.channel() as channel:
        client = Client(channel)
        _wait(lambda: _state(client, campaign.name) == pb.Channel.COMPLETED, what="the late start")
    assert len(_received(sink)) == 5
