"""More of the sending engine in the real daemon: send windows, many watchers, PostgreSQL, slots,
two daemons on one database, and a graceful SIGTERM while sending."""

from __future__ import annotations

import collections
import datetime as dt
import functools
import pathlib
import signal
import threading
import time
from collections.abc import Iterator
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import campaign_service_pb2_grpc as svc_grpc
from campaignd.v1 import contact_service_pb2 as cs
from campaignd.v1 import resources_pb2 as pb
from tests.integration import test_engine as engine_tests
from tests.integration.campaign_client import Client
from tests.integration.conftest import DaemonFactory, DaemonProcess
from tests.integration.test_engine import FAST, PLUGINS, _campaign, _content, _people, _received, _wait

# Two zones without daylight saving time, twelve hours apart: a two-hour window around the
# current local time of one is closed in the other, whenever the test runs.
OPEN_ZONE = "Asia/Tokyo"  # UTC+9
CLOSED_ZONE = "America/Sao_Paulo"  # UTC-3


def _report(client: Client, name: str) -> pb.CampaignReport:
    return client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=name))


def _channel_state(client: Client, name: str) -> int:
    return client.get(name).channels[0].state


def _pg(url: str) -> str:
    return f'[database]\nurl = "{url}"\n'


def _zoned_people(client: Client, list_id: str, per_zone: int) -> str:
    """`per_zone` contacts in each of OPEN_ZONE, CLOSED_ZONE and no zone at all."""
    client.contacts.CreateList(
        cs.CreateListRequest(list_id=list_id, list=cs.ContactList(display_name=list_id))
    )
    rows = []
    for tag, zone in (("open", OPEN_ZONE), ("closed", CLOSED_ZONE), ("nozone", "")):
        rows += [
            cs.ContactRow(email=f"{tag}{i}@{list_id}.example.org", time_zone=zone) for i in range(per_zone)
        ]
    requests = [
        cs.ImportContactsRequest(options=cs.ImportOptions(list=f"lists/{list_id}")),
        cs.ImportContactsRequest(rows=rows),
    ]
    assert client.contacts.ImportContacts(iter(requests)).created == len(rows)
    return f"lists/{list_id}"


def _has_received(sink: pathlib.Path, count: int) -> bool:
    return len(_received(sink)) >= count


def _window_around_now(zone: str) -> pb.SendWindow:
    """Every day, from an hour before to an hour after the current local time in `zone`."""
    local = dt.datetime.now(ZoneInfo(zone))
    start = (local - dt.timedelta(hours=1)).strftime("%H:%M")
    end = (local + dt.timedelta(hours=1)).strftime("%H:%M")
    return pb.SendWindow(start_time=start, end_time=end)


def test_a_send_window_sends_only_where_it_is_open(client: Client, tmp_path: pathlib.Path) -> None:
    """Only recipients whose local window is open are sent; the rest wait QUEUED on a RUNNING channel."""
    target = _zoned_people(client, "zones", 10)
    window = _window_around_now(OPEN_ZONE)
    names = {}
    for campaign_zone in (OPEN_ZONE, CLOSED_ZONE):
        sink = tmp_path / f"received-{campaign_zone.replace('/', '-')}"
        campaign = client.stub.CreateCampaign(
            svc.CreateCampaignRequest(
                campaign=pb.Campaign(
                    display_name=f"Window {campaign_zone}",
                    time_zone=campaign_zone,
                    audience=pb.Audience(target_lists=[target]),
                    channels=[
                        pb.Channel(
                            channel_id="main",
                            type="test-email",
                            send_window=window,
                            content=_content(sink=str(sink)),
                        )
                    ],
                )
            )
        )
        client.launch(campaign.name)
        names[campaign_zone] = (campaign.name, sink)
    # Contacts without a zone are local to the campaign: open in the first, closed in the second.
    expected = {OPEN_ZONE: {"open", "nozone"}, CLOSED_ZONE: {"open"}}
    for campaign_zone, (_, sink) in names.items():
        count = 10 * len(expected[campaign_zone])
        _wait(functools.partial(_has_received, sink, count), 30, "the open zones")
    time.sleep(1.0)  # many ticks: nothing more may go out
    for campaign_zone, (name, sink) in names.items():
        addresses = [a for _, a in _received(sink)]
        assert len(addresses) == len(set(addresses)) == 10 * len(expected[campaign_zone])
        assert {a.split("@")[0].rstrip("0123456789") for a in addresses} == expected[campaign_zone]
        assert _channel_state(client, name) == pb.Channel.RUNNING
        assert client.get(name).state == pb.Campaign.RUNNING
        report = _report(client, name)
        waiting = 30 - 10 * len(expected[campaign_zone])
        assert (report.totals.sent, report.totals.queued, report.totals.sending) == (30 - waiting, waiting, 0)
        queued = client.stub.ListMessages(
            svc.ListMessagesRequest(parent=name, states=[pb.Message.QUEUED], page_size=100)
        )
        assert len(queued.messages) == waiting
        assert all(not m.address.startswith(tuple(expected[campaign_zone])) for m in queued.messages)


@pytest.mark.slow
def test_a_types_default_window_applies_when_the_channel_sets_none(
    daemon_factory: DaemonFactory, tmp_path: pathlib.Path
) -> None:
    """A type's default window (quiet hours, for SMS and voice) holds back recipients where it is closed."""
    root = pathlib.Path(__file__).resolve().parents[2]
    load = '[plugins]\nload = ["campaignd.testing.channels", "tests.integration.quiet_channel"]\n'
    daemon = daemon_factory(load + FAST, env={"PYTHONPATH": str(root)}).start()
    with daemon.channel() as channel:
        client = Client(channel)
        target = _zoned_people(client, "quiet", 10)
        sink = tmp_path / "received"
        campaign = client.stub.CreateCampaign(
            svc.CreateCampaignRequest(
                campaign=pb.Campaign(
                    display_name="Quiet hours",
                    time_zone=CLOSED_ZONE,
                    audience=pb.Audience(target_lists=[target]),
                    channels=[
                        pb.Channel(channel_id="main", type="test-quiet", content=_content(sink=str(sink)))
                    ],
                )
            )
        )
        client.launch(campaign.name)
        _wait(functools.partial(_has_received, sink, 10), 30, "the open zone")
        time.sleep(1.0)  # many ticks: nothing more may go out
        report = _report(client, campaign.name)
    addresses = {a for _, a in _received(sink)}
    assert len(addresses) == 10
    assert all(a.startswith("open") for a in addresses)
    assert (report.totals.sent, report.totals.queued) == (10, 20)
    assert report.channels[0].progress.HasField("window_reopens_time")


def test_fifty_watchers_see_the_snapshot_and_the_end(engine_daemon: DaemonProcess, client: Client) -> None:
    """50 concurrent WatchCampaign streams each get a snapshot first and see COMPLETED with all sent."""
    campaign = _campaign(client, _people(client, "watchers", 300), delay_ms=5)
    watchers = 50
    snapshotted = threading.Barrier(watchers + 1, timeout=30)
    seen: dict[int, list[svc.WatchCampaignResponse]] = {}
    errors: list[BaseException] = []

    def watch(index: int) -> None:
        updates: list[svc.WatchCampaignResponse] = []
        seen[index] = updates
        try:
            with engine_daemon.channel() as channel:
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
    with engine_daemon.channel() as channel:
        stream = svc_grpc.CampaignServiceStub(channel).WatchCampaign(
            svc.WatchCampaignRequest(name=campaign.name), timeout=10
        )
        first = next(iter(stream))
    assert first.snapshot
    assert first.campaign.state == pb.Campaign.COMPLETED
    assert (first.report.totals.total, first.report.totals.sent, first.report.totals.queued) == (300, 300, 0)


@pytest.fixture
def engine_daemon(daemon_factory: DaemonFactory) -> DaemonProcess:
    """A daemon whose engine ticks fast, on SQLite."""
    return daemon_factory(PLUGINS + FAST).start()


@pytest.fixture
def client(engine_daemon: DaemonProcess) -> Iterator[Client]:
    """A client of the engine daemon."""
    with engine_daemon.channel() as channel:
        yield Client(channel)


@pytest.fixture
def pg_client(daemon_factory: DaemonFactory, pg_url: str) -> Iterator[Client]:
    """A client of a fast-ticking daemon on PostgreSQL."""
    daemon = daemon_factory(PLUGINS + FAST + _pg(pg_url)).start()
    with daemon.channel() as channel:
        yield Client(channel)


def test_postgresql_runs_a_campaign_to_completion(pg_client: Client, tmp_path: pathlib.Path) -> None:
    """On PostgreSQL, a campaign completes with each of 300 recipients received once and counted SENT."""
    engine_tests.test_a_campaign_runs_to_completion_sending_everyone_once(pg_client, tmp_path)


@pytest.mark.slow
def test_postgresql_pause_is_a_barrier(pg_client: Client, tmp_path: pathlib.Path) -> None:
    """On PostgreSQL, no send starts after Pause returns, and resume sends everyone else exactly once."""
    engine_tests.test_pause_is_a_barrier_and_resume_sends_exactly_the_rest(pg_client, tmp_path)


@pytest.mark.slow
def test_a_queued_campaign_waits_for_the_slot(daemon_factory: DaemonFactory, tmp_path: pathlib.Path) -> None:
    """With one test-email slot, a second launch stays QUEUED until the first completes, then runs."""
    daemon = daemon_factory(PLUGINS + FAST + 'slots = { "test-email" = 1 }\nslot_policy = "queue"\n')
    daemon.start()
    first_sink, second_sink = tmp_path / "first", tmp_path / "second"
    with daemon.channel() as channel:
        client = Client(channel)
        # Long enough to watch with several batches in flight: 200 messages of 40 ms over 4 lanes is 2 s.
        first = _campaign(client, _people(client, "slot-a", 200), sink=str(first_sink), delay_ms=40)
        second = _campaign(client, _people(client, "slot-b", 20), sink=str(second_sink))
        client.launch(first.name)
        _wait(lambda: _channel_state(client, first.name) == pb.Channel.RUNNING, 10, "the first to run")
        client.launch(second.name)
        states = []
        while True:
            # The second is read first: seen QUEUED, then the first still RUNNING, it waited meanwhile.
            waiting = _channel_state(client, second.name)
            if (running := _channel_state(client, first.name)) == pb.Channel.COMPLETED:
                break
            states.append((running, waiting))
            time.sleep(0.05)
        assert len(states) > 10, "the first campaign ran too briefly to watch the second wait"
        assert set(states) == {(pb.Channel.RUNNING, pb.Channel.QUEUED)}
        assert _received(second_sink) == []
        _wait(lambda: _channel_state(client, second.name) == pb.Channel.COMPLETED, 20, "the second")
        first_history, second_history = client.history(first.name), client.history(second.name)
    completed = next(e for e in first_history if e.operation == "complete")
    activated = [e for e in second_history if e.operation == "activate"]
    assert len(activated) == 1
    assert (activated[0].from_state, activated[0].to_state) == (pb.Channel.QUEUED, pb.Channel.RUNNING)
    assert activated[0].cause == pb.CampaignEvent.SCHEDULE
    assert activated[0].time.ToDatetime() >= completed.time.ToDatetime()
    assert min(t for t, _ in _received(second_sink)) > max(t for t, _ in _received(first_sink))
    assert len({a for _, a in _received(second_sink)}) == len(_received(second_sink)) == 20


@pytest.mark.slow
def test_two_daemons_on_one_database_send_everyone_once(
    daemon_factory: DaemonFactory, pg_url: str, tmp_path: pathlib.Path
) -> None:
    """Two daemons on one PostgreSQL database share a 2,000-recipient campaign: each recipient once."""
    sink = tmp_path / "received"
    config = PLUGINS + FAST + _pg(pg_url)
    first = daemon_factory(config, name="a").start()  # migrates the database
    second = daemon_factory(config, name="b").start()
    with first.channel() as channel:
        client = Client(channel)
        campaign = _campaign(client, _people(client, "shared", 2000), sink=str(sink), delay_ms=2)
        client.launch(campaign.name)
    # While it runs, see whose leases hold SENDING messages (owners are "host:pid:random").
    owners: set[str] = set()
    database = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with second.channel() as channel, database.connect() as conn:
        client = Client(channel)

        def done() -> bool:
            rows = conn.execute(sa.text("SELECT DISTINCT lease_owner FROM messages WHERE state = 'sending'"))
            owners.update(owner for (owner,) in rows)
            conn.rollback()
            return _channel_state(client, campaign.name) == pb.Channel.COMPLETED

        _wait(done, 60, "completion")
        report = _report(client, campaign.name)
        history = client.history(campaign.name)
    database.dispose()
    pids = {int(owner.split(":")[1]) for owner in owners}
    assert first.proc is not None
    assert second.proc is not None
    assert pids == {first.proc.pid, second.proc.pid}, "both daemons should have leased batches"
    received = collections.Counter(a for _, a in _received(sink))
    assert len(received) == 2000
    assert max(received.values()) == 1, "a recipient was sent twice"
    assert (report.totals.total, report.totals.sent, report.totals.failed) == (2000, 2000, 0)
    assert (report.totals.queued, report.totals.sending, report.totals.retrying) == (0, 0, 0)
    assert [e.operation for e in history].count("complete") == 1
    assert [e.operation for e in history].count("activate") == 1


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


@pytest.mark.slow
def test_sigterm_while_sending_records_everything_in_flight(
    daemon_factory: DaemonFactory, tmp_path: pathlib.Path
) -> None:
    """SIGTERM mid-campaign: exit 0 within shutdown_timeout with nothing left SENDING; after a restart the
    campaign completes with everyone received exactly once."""
    sink = tmp_path / "received"
    daemon = daemon_factory(PLUGINS + FAST)
    daemon.start()
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = _campaign(client, _people(client, "term", 600), sink=str(sink), delay_ms=5)
        client.launch(campaign.name)
        _wait(lambda: len(_received(sink)) >= 75, 20, "the first sends")  # mid-batch
    daemon.signal(signal.SIGTERM)
    signalled = time.monotonic()
    status = daemon.wait(10)
    took = time.monotonic() - signalled
    assert status == 0, daemon.log_text()[-3000:]
    assert took < 5.0, f"shutdown took {took:.1f}s, over shutdown_timeout"
    received_before = collections.Counter(a for _, a in _received(sink))
    assert 0 < len(received_before) < 600
    table, counters = _message_states(daemon.workdir / "state" / "campaignd.db")
    assert table.get("sending", 0) == counters.get("sending", 0) == 0
    assert table == counters
    assert table.get("sent", 0) == len(received_before)
    assert table.get("queued", 0) == 600 - len(received_before)
    daemon.start()
    with daemon.channel() as channel:
        client = Client(channel)
        _wait(lambda: _channel_state(client, campaign.name) == pb.Channel.COMPLETED, 30, "completion")
        report = _report(client, campaign.name)
    received = collections.Counter(a for _, a in _received(sink))
    assert len(received) == 600
    assert max(received.values()) == 1, "a recipient was sent twice"
    assert (report.totals.sent, report.totals.failed) == (600, 0)
