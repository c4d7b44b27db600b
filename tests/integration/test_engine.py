"""The sending engine in the real daemon, with the test channel double counting at the receiving end."""

from __future__ import annotations

import pathlib
import random
import signal
import threading
import time
import urllib.request
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import campaign_service_pb2_grpc as svc_grpc
from campaignd.v1 import contact_service_pb2 as cs
from campaignd.v1 import resources_pb2 as pb
from tests.integration.campaign_client import ATTESTATION, Client, failure, future, wait_until
from tests.integration.conftest import TEST_CHANNELS, DaemonFactory, DaemonProcess
from tests.integration.sending import (
    FAST,
    double_campaign,
    double_content,
    fast_engine,
    import_list,
    people,
    sink_counts,
    sink_log,
)
from tests.timing import timed


@pytest.fixture
def daemon(daemon_factory: DaemonFactory) -> DaemonProcess:
    """A daemon whose engine ticks fast."""
    return daemon_factory(TEST_CHANNELS + FAST).start()


def test_a_campaign_runs_to_completion_sending_everyone_once(client: Client, tmp_path: pathlib.Path) -> None:
    """Launch → RUNNING → COMPLETED; each of 300 recipients is received exactly once and counted SENT."""
    sink = tmp_path / "received"
    campaign = double_campaign(client, people(client, "run", 300), sink=str(sink))
    client.launch(campaign.name)
    wait_until(lambda: client.channel_state(campaign.name) == pb.Channel.COMPLETED, what="completion")
    addresses = [a for _, a in sink_log(sink)]
    assert len(addresses) == 300
    assert len(set(addresses)) == 300
    report = client.report(campaign.name)
    assert (report.totals.total, report.totals.sent, report.totals.queued) == (300, 300, 0)
    assert report.totals.percent_done == 100
    history = [(e.operation, e.cause) for e in client.history(campaign.name)]
    assert ("activate", pb.CampaignEvent.SCHEDULE) in history
    assert history[-1] == ("complete", pb.CampaignEvent.SYSTEM)


@pytest.mark.slow
def test_pause_is_a_barrier_and_resume_sends_exactly_the_rest(client: Client, tmp_path: pathlib.Path) -> None:
    """No send starts after PauseCampaign returns; resume sends the rest; nobody twice."""
    sink = tmp_path / "received"
    campaign = double_campaign(client, people(client, "barrier", 400), sink=str(sink), delay_ms=10)
    client.launch(campaign.name)
    wait_until(lambda: len(sink_log(sink)) >= 50, what="the first sends")
    client.pause(campaign.name)
    paused_at = time.time()
    time.sleep(1.5)
    late = [a for t, a in sink_log(sink) if t > paused_at]
    assert late == [], f"{len(late)} sends started after Pause returned"
    sent_before = len(sink_log(sink))
    assert sent_before < 400
    report = client.report(campaign.name)
    assert report.totals.sending == 0
    assert report.totals.sent == sent_before
    assert report.totals.queued == 400 - sent_before
    client.resume(campaign.name)
    wait_until(lambda: client.channel_state(campaign.name) == pb.Channel.COMPLETED, what="completion")
    addresses = [a for _, a in sink_log(sink)]
    assert len(addresses) == 400
    assert len(set(addresses)) == 400


def test_stop_cancels_the_rest_and_records_in_flight_sends(client: Client, tmp_path: pathlib.Path) -> None:
    """Stop: what was started is recorded SENT, the rest CANCELLED, and nothing more is sent."""
    sink = tmp_path / "received"
    campaign = double_campaign(client, people(client, "stop", 300), sink=str(sink), delay_ms=10)
    client.launch(campaign.name)
    wait_until(lambda: len(sink_log(sink)) >= 30, what="the first sends")
    client.stop(campaign.name)
    stopped_at = time.time()
    time.sleep(1.0)
    assert [a for t, a in sink_log(sink) if t > stopped_at] == []
    report = client.report(campaign.name)
    received = len(sink_log(sink))
    assert report.totals.sent == received
    assert report.totals.cancelled == 300 - received
    assert report.totals.sending == report.totals.queued == 0
    assert client.get(campaign.name).state == pb.Campaign.STOPPED


def test_deferrals_are_retried_then_fail(client: Client, tmp_path: pathlib.Path) -> None:
    """Deferred sends go RETRYING, are tried max_attempts times, then FAIL as retries_exhausted."""
    sink = tmp_path / "received"
    target = people(client, "defer", 20)
    campaign = double_campaign(client, target, sink=str(sink), defer_matching="p1@")
    client.launch(campaign.name)
    wait_until(lambda: client.channel_state(campaign.name) == pb.Channel.COMPLETED, what="completion")
    report = client.report(campaign.name)
    assert (report.totals.sent, report.totals.failed) == (19, 1)
    assert dict(report.totals.failed_by_reason) == {"retries_exhausted": 1}
    attempts = sink_counts(sink)
    assert attempts["p1@defer.example.org"] == 3
    failed = client.stub.ListMessages(
        svc.ListMessagesRequest(parent=campaign.name, states=[pb.Message.FAILED])
    )
    assert [(m.address, m.attempts, m.reason) for m in failed.messages] == [
        ("p1@defer.example.org", 3, "retries_exhausted")
    ]


def test_the_guard_pauses_a_failing_channel(daemon_factory: DaemonFactory, tmp_path: pathlib.Path) -> None:
    """Over 5 % failures after 20 sends, the guard pauses the channel and says why in the history."""
    daemon = daemon_factory(TEST_CHANNELS + FAST + "guard_min_sends = 20\n").start()
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = double_campaign(client, people(client, "guard", 200), fail_matching="1@", delay_ms=5)
        client.launch(campaign.name)
        wait_until(lambda: client.channel_state(campaign.name) == pb.Channel.PAUSED, what="the guard")
        last = client.history(campaign.name)[-1]
        assert (last.operation, last.cause) == ("guard_pause", pb.CampaignEvent.GUARD)
        assert "failure rate" in last.reason


def test_a_transport_that_fails_fatally_fails_the_channel(client: Client) -> None:
    """When every send is a transport failure, the channel goes FAILED with the error kept, and
    the messages still waiting are CANCELLED with reason channel_failed."""
    campaign = double_campaign(client, people(client, "fatal", 300), fatal=True)
    client.launch(campaign.name)
    wait_until(lambda: client.channel_state(campaign.name) == pb.Channel.FAILED, what="failure")
    failed = client.get(campaign.name).channels[0]
    assert failed.error.code == "TRANSPORT_FAILED"
    assert "535" in failed.error.message

    # FAILED is final: nothing is left waiting to be sent, once the batches in flight are recorded.
    def report() -> Any:
        return client.report(campaign.name).totals

    wait_until(lambda: report().sending == 0, what="the batches in flight")
    totals = report()
    assert totals.queued == totals.retrying == totals.sending == 0
    assert totals.cancelled + totals.failed == 300
    assert totals.cancelled > 0
    cancelled = client.messages(campaign.name, pb.Message.CANCELLED)
    assert {m.reason for m in cancelled} == {"channel_failed"}


@pytest.mark.slow
def test_rate_limit_holds_over_any_second(client: Client, tmp_path: pathlib.Path) -> None:
    """A channel limited to 20/s never has more than 20 sends in any one-second window."""
    sink = tmp_path / "received"
    target = people(client, "rate", 70)
    campaign = client.stub.CreateCampaign(
        svc.CreateCampaignRequest(
            campaign=pb.Campaign(
                display_name="Rate",
                audience=pb.Audience(target_lists=[target]),
                channels=[
                    pb.Channel(
                        channel_id="main",
                        type="test-email",
                        rate_limit=20,
                        content=double_content(sink=str(sink)),
                    )
                ],
            )
        )
    )
    client.launch(campaign.name)
    wait_until(lambda: client.channel_state(campaign.name) == pb.Channel.COMPLETED, what="completion")
    times = sorted(t for t, _ in sink_log(sink))
    assert len(times) == 70
    # The double stamps each send just after the gate admitted it, so allow 10 ms of jitter.
    worst = max(sum(1 for t in times[i:] if t < start + 0.99) for i, start in enumerate(times))
    assert worst <= 20
    assert times[-1] - times[0] >= 3.0


def test_a_scheduled_channel_starts_by_itself(client: Client, tmp_path: pathlib.Path) -> None:
    """A channel scheduled two seconds ahead starts, resolves its audience then, and completes."""
    sink = tmp_path / "received"
    target = people(client, "sched", 5)
    campaign = double_campaign(client, target, sink=str(sink))
    when = future(0)
    when.seconds += 2
    client.stub.ScheduleCampaign(
        svc.ScheduleCampaignRequest(name=campaign.name, schedule_time=when, attestation=ATTESTATION)
    )
    time.sleep(0.5)
    assert client.channel_state(campaign.name) == pb.Channel.SCHEDULED
    wait_until(
        lambda: client.channel_state(campaign.name) == pb.Channel.COMPLETED, what="the scheduled start"
    )
    assert len(sink_log(sink)) == 5
    operations = [e.operation for e in client.history(campaign.name)]
    assert operations[-3:] == ["start", "activate", "complete"]


@pytest.mark.slow
def test_kill_9_loses_nothing_and_sends_nothing_twice(
    daemon_factory: DaemonFactory, tmp_path: pathlib.Path
) -> None:
    """Five kill -9 at random moments of a 20,000-recipient campaign: it still completes, every
    recipient ends in one final state, and nobody counted SENT is received twice."""
    sink = tmp_path / "received"
    daemon = daemon_factory(TEST_CHANNELS + fast_engine(sending_timeout=2.0))
    daemon.start()
    with daemon.channel() as channel:
        client = Client(channel)
        # Only sends that had started are failed after a kill; the guard must not pause for them anyway.
        no_guard = pb.GuardSettings(max_failure_percent=100)
        campaign = double_campaign(
            client, people(client, "crash", 20_000), guard=no_guard, sink=str(sink), delay_ms=0.2
        )
        client.launch(campaign.name)
    rng = random.Random(20_000)
    for _ in range(5):
        time.sleep(rng.uniform(0.3, 1.5))
        daemon.signal(signal.SIGKILL)
        daemon.wait(10)
        daemon.start()
    with daemon.channel() as channel:
        client = Client(channel)
        wait_until(
            lambda: client.get(campaign.name).channels[0].state == pb.Channel.COMPLETED, 240, "completion"
        )
        report = client.report(campaign.name)
        sent = {m.address for m in client.messages(campaign.name, pb.Message.SENT)}
    received = sink_counts(sink)
    assert report.totals.total == 20_000
    assert report.totals.queued == report.totals.sending == report.totals.retrying == 0
    assert report.totals.sent + report.totals.failed == 20_000
    # Failures may only be sends whose result died with a process: ambiguous, never re-sent.
    assert set(report.totals.failed_by_reason) <= {"ambiguous"}
    assert all(received[a] == 1 for a in sent), "a recipient recorded SENT was sent again"
    assert max(received.values()) == 1, "a recipient was sent twice"
    assert len(sent) == report.totals.sent


def test_watch_streams_progress_to_the_end(client: Client) -> None:
    """A watcher sees the campaign move from QUEUED or RUNNING to COMPLETED with counts rising."""
    campaign = double_campaign(client, people(client, "watch", 200), delay_ms=5)
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
    campaign = double_campaign(client, people(client, "eta", 300), delay_ms=10)
    client.launch(campaign.name)
    wait_until(
        lambda: client.report(campaign.name).totals.sent >= 60,
        what="some sends",
    )
    report = client.report(campaign.name)
    assert report.channels[0].progress.current_rate > 10
    assert report.totals.HasField("eta")
    assert report.totals.eta.ToDatetime() > report.report_time.ToDatetime()
    wait_until(lambda: client.channel_state(campaign.name) == pb.Channel.COMPLETED, what="completion")
    final = client.report(campaign.name)
    assert not final.totals.HasField("eta")


def test_refuse_policy_refuses_a_launch_without_a_slot(daemon_factory: DaemonFactory) -> None:
    """With one test-email slot and policy "refuse", a second launch fails with NO_SLOT and stays DRAFT."""
    daemon = daemon_factory(
        TEST_CHANNELS + FAST + 'slots = { "test-email" = 1 }\nslot_policy = "refuse"\n'
    ).start()
    with daemon.channel() as channel:
        client = Client(channel)
        first = double_campaign(client, people(client, "slot-a", 200), delay_ms=20)
        client.launch(first.name)
        wait_until(lambda: client.channel_state(first.name) == pb.Channel.RUNNING, what="the first to run")
        second = double_campaign(client, people(client, "slot-b", 5, start=1000))
        with pytest.raises(grpc.RpcError) as refused:
            client.launch(second.name)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert failure(refused.value).reason == "NO_SLOT"
        assert client.get(second.name).state == pb.Campaign.DRAFT


def test_metrics_endpoint_counts_messages_and_rpcs(daemon_factory: DaemonFactory) -> None:
    """/metrics shows messages by channel type and outcome, queue depth, and RPC latency."""
    daemon = daemon_factory(
        TEST_CHANNELS + FAST + '[metrics]\naddress = "127.0.0.1:0"\n[log]\nformat = "json"\n'
    ).start()
    port = next(e for e in daemon.log_events() if e["event"] == "serving")["metrics_port"]
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = double_campaign(client, people(client, "metrics", 40), fail_matching="p1@")
        client.launch(campaign.name)
        wait_until(lambda: client.channel_state(campaign.name) == pb.Channel.COMPLETED, what="completion")
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


def _metric(port: int, series: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.split()[-1])
    return None


def test_queue_depth_and_rate_fall_to_zero_once_no_channel_runs(daemon_factory: DaemonFactory) -> None:
    """campaignd_queue_depth counts the queued messages of running channels, campaignd_send_rate
    their sends per second: once the only channel is stopped (its queued messages cancelled),
    both read 0, not what they had while sending."""
    daemon = daemon_factory(
        TEST_CHANNELS + FAST + '[metrics]\naddress = "127.0.0.1:0"\n[log]\nformat = "json"\n'
    ).start()
    port = next(e for e in daemon.log_events() if e["event"] == "serving")["metrics_port"]
    depth = 'campaignd_queue_depth{channel_type="test-email"}'
    rate = 'campaignd_send_rate{channel_type="test-email"}'
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = double_campaign(client, people(client, "depth", 600), delay_ms=20)
        client.launch(campaign.name)
        wait_until(lambda: (_metric(port, depth) or 0) > 0, what="a queue depth while sending")
        wait_until(lambda: (_metric(port, rate) or 0) > 0, what="a send rate while sending")
        client.stop(campaign.name)
        wait_until(lambda: client.channel_state(campaign.name) == pb.Channel.STOPPED, what="the stop")
    time.sleep(1.0)  # many engine ticks after the stop
    assert (_metric(port, depth), _metric(port, rate)) == (0, 0)


@pytest.mark.slow
def test_sent_without_receipt_is_assumed_delivered_on_receipt_channels(daemon_factory: DaemonFactory) -> None:
    """On a type with receipts, SENT turns ASSUMED_DELIVERED after the set time; email-like stays SENT."""
    daemon = daemon_factory(TEST_CHANNELS + FAST + "assume_delivered_after = 1.0\n").start()
    with daemon.channel() as channel:
        client = Client(channel)
        rows = [cs.ContactRow(email=f"a{i}@example.org", phone=f"+1202555060{i}") for i in range(5)]
        import_list(client, "assume", rows)
        campaign = client.stub.CreateCampaign(
            svc.CreateCampaignRequest(
                campaign=pb.Campaign(
                    display_name="Receipts",
                    audience=pb.Audience(target_lists=["lists/assume"]),
                    channels=[
                        pb.Channel(channel_id="mail", type="test-email", content=double_content()),
                        pb.Channel(channel_id="text", type="test-sms", content=double_content()),
                    ],
                )
            )
        )
        client.launch(campaign.name)

        def progress() -> list[tuple[int, int]]:
            report = client.report(campaign.name)
            return [(c.progress.sent, c.progress.assumed_delivered) for c in report.channels]

        wait_until(lambda: progress() == [(5, 0), (0, 5)], 30, "SMS receipts to be assumed")
        time.sleep(1.5)
        assert progress() == [(5, 0), (0, 5)]
        assert client.get(campaign.name).state == pb.Campaign.COMPLETED


@pytest.mark.slow
def test_a_schedule_missed_while_down_starts_at_the_next_start(
    daemon_factory: DaemonFactory, tmp_path: pathlib.Path
) -> None:
    """A channel whose time came while the daemon was stopped starts when the daemon starts again."""
    sink = tmp_path / "received"
    daemon = daemon_factory(TEST_CHANNELS + FAST).start()
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = double_campaign(client, people(client, "missed", 5), sink=str(sink))
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
        wait_until(lambda: client.channel_state(campaign.name) == pb.Channel.COMPLETED, what="the late start")
    assert len(sink_log(sink)) == 5


def test_fifty_watchers_see_the_snapshot_and_the_end(daemon: DaemonProcess, client: Client) -> None:
    """50 concurrent WatchCampaign streams each get a snapshot first and see COMPLETED with all sent."""
    campaign = double_campaign(client, people(client, "watchers", 300), delay_ms=5)
    watchers = 50
    snapshotted = threading.Barrier(watchers + 1, timeout=30)
    seen: dict[int, list[svc.WatchCampaignResponse]] = {}
    errors: list[BaseException] = []

    def watch(index: int) -> None:
        updates: list[svc.WatchCampaignResponse] = []
        seen[index] = updates
        try:
            with daemon.channel() as channel:
                stream = svc_grpc.CampaignServiceStub(channel).WatchCampaign(
                    svc.WatchCampaignRequest(name=campaign.name), timeout=60
                )
                for update in stream:
                    updates.append(update)
                    if len(updates) == 1:
                        snapshotted.wait()
                    if update.campaign.state == pb.Campaign.COMPLETED:
                        return  # closing the channel ends the stream
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            snapshotted.abort()

    threads = [threading.Thread(target=watch, args=(i,), daemon=True) for i in range(watchers)]
    for thread in threads:
        thread.start()
    snapshotted.wait()  # every watcher has its snapshot before anything is sent
    client.launch(campaign.name)
    for thread in threads:
        thread.join(90)
    assert not errors, errors[:3]
    assert not any(thread.is_alive() for thread in threads)
    for updates in seen.values():
        assert updates[0].snapshot
        assert updates[0].campaign.state == pb.Campaign.DRAFT
        assert not any(u.snapshot for u in updates[1:])
        last = updates[-1]
        assert (last.campaign.state, last.report.totals.sent) == (pb.Campaign.COMPLETED, 300)
        sent = [u.report.totals.sent for u in updates]
        assert sent == sorted(sent)
    # A client that comes back after the end gets the final state as a snapshot.
    with daemon.channel() as channel:
        stream = svc_grpc.CampaignServiceStub(channel).WatchCampaign(
            svc.WatchCampaignRequest(name=campaign.name), timeout=10
        )
        first = next(iter(stream))
    assert first.snapshot
    assert first.campaign.state == pb.Campaign.COMPLETED
    assert (first.report.totals.total, first.report.totals.sent, first.report.totals.queued) == (300, 300, 0)


@pytest.mark.slow
def test_a_queued_campaign_waits_for_the_slot(daemon_factory: DaemonFactory, tmp_path: pathlib.Path) -> None:
    """With one test-email slot, a second launch stays QUEUED until the first completes, then runs."""
    daemon = daemon_factory(TEST_CHANNELS + FAST + 'slots = { "test-email" = 1 }\nslot_policy = "queue"\n')
    daemon.start()
    first_sink, second_sink = tmp_path / "first", tmp_path / "second"
    with daemon.channel() as channel:
        client = Client(channel)
        # Long enough to watch with several batches in flight: 200 messages of 40 ms over 4 lanes is 2 s.
        first = double_campaign(client, people(client, "slot-a", 200), sink=str(first_sink), delay_ms=40)
        second = double_campaign(client, people(client, "slot-b", 20), sink=str(second_sink))
        client.launch(first.name)
        wait_until(lambda: client.channel_state(first.name) == pb.Channel.RUNNING, 10, "the first to run")
        client.launch(second.name)
        states = []
        while True:
            # The second is read first: seen QUEUED, then the first still RUNNING, it waited meanwhile.
            waiting = client.channel_state(second.name)
            if (running := client.channel_state(first.name)) == pb.Channel.COMPLETED:
                break
            states.append((running, waiting))
            time.sleep(0.05)
        assert len(states) > 10, "the first campaign ran too briefly to watch the second wait"
        assert set(states) == {(pb.Channel.RUNNING, pb.Channel.QUEUED)}
        # The slot is taken as the first completes, so the second may already be sending by now:
        # that nothing of it went out while the first ran is checked on the sends' times below.
        wait_until(lambda: client.channel_state(second.name) == pb.Channel.COMPLETED, 20, "the second")
        first_history, second_history = client.history(first.name), client.history(second.name)
    completed = next(e for e in first_history if e.operation == "complete")
    activated = [e for e in second_history if e.operation == "activate"]
    assert len(activated) == 1
    assert (activated[0].from_state, activated[0].to_state) == (pb.Channel.QUEUED, pb.Channel.RUNNING)
    assert activated[0].cause == pb.CampaignEvent.SCHEDULE
    assert activated[0].time.ToDatetime() >= completed.time.ToDatetime()
    assert min(t for t, _ in sink_log(second_sink)) > max(t for t, _ in sink_log(first_sink))
    assert len({a for _, a in sink_log(second_sink)}) == len(sink_log(second_sink)) == 20


def _message_states(database: pathlib.Path) -> tuple[dict[str, int], dict[str, int]]:
    """Messages per state, counted in the table and in the counters, read behind the daemon's back."""
    engine = sa.create_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT state, count(*) FROM messages GROUP BY state"))
            table = {state: int(n) for state, n in rows}
            rows = conn.execute(sa.text("SELECT state, sum(n) FROM channel_counts GROUP BY state"))
            counters = {state: int(n) for state, n in rows if n}
    finally:
        engine.dispose()
    return table, counters


@timed
@pytest.mark.slow
def test_sigterm_while_sending_records_everything_in_flight(
    daemon_factory: DaemonFactory, tmp_path: pathlib.Path
) -> None:
    """SIGTERM mid-campaign: exit 0 within shutdown_timeout with nothing left SENDING; after a restart the
    campaign completes with everyone received exactly once."""
    sink = tmp_path / "received"
    daemon = daemon_factory(TEST_CHANNELS + FAST)
    daemon.start()
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = double_campaign(client, people(client, "term", 600), sink=str(sink), delay_ms=5)
        client.launch(campaign.name)
        wait_until(lambda: len(sink_log(sink)) >= 75, 20, "the first sends")  # mid-batch
    daemon.signal(signal.SIGTERM)
    signalled = time.monotonic()
    status = daemon.wait(10)
    took = time.monotonic() - signalled
    assert status == 0, daemon.log_text()[-3000:]
    assert took < 5.0, f"shutdown took {took:.1f}s, over shutdown_timeout"
    received_before = sink_counts(sink)
    assert 0 < len(received_before) < 600
    table, counters = _message_states(daemon.workdir / "state" / "campaignd.db")
    assert table.get("sending", 0) == counters.get("sending", 0) == 0
    assert table == counters
    assert table.get("sent", 0) == len(received_before)
    assert table.get("queued", 0) == 600 - len(received_before)
    daemon.start()
    with daemon.channel() as channel:
        client = Client(channel)
        wait_until(lambda: client.channel_state(campaign.name) == pb.Channel.COMPLETED, 30, "completion")
        report = client.report(campaign.name)
    received = sink_counts(sink)
    assert len(received) == 600
    assert max(received.values()) == 1, "a recipient was sent twice"
    assert (report.totals.sent, report.totals.failed) == (600, 0)
