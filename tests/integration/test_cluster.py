"""Several daemons on one PostgreSQL database act as one (SPEC §9): real daemon processes, the
real PostgreSQL, the email plugin sending to a real SMTP server.

The server (stamping_smtp.py) listens on one port per daemon, so that every transaction is known
by the daemon that sent it, and stamps each with the kernel's receive time of its MAIL FROM: the
moment the send started, which no load on this machine can delay.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import signal
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
import sqlalchemy as sa

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import cluster_service_pb2 as cl
from campaignd.v1 import cluster_service_pb2_grpc as cl_grpc
from campaignd.v1 import resources_pb2 as pb
from tests.integration.campaign_client import ATTESTATION, Client, wait_until
from tests.integration.conftest import DaemonFactory, DaemonProcess
from tests.integration.ctl import ok
from tests.integration.email_campaigns import ENV, UNSUBSCRIBE, email_channel, import_people, readers
from tests.integration.stamping_smtp import StampingSmtpServer, Transaction

INTERVAL, LEASE = 0.5, 3.0  # [cluster] heartbeat_interval and heartbeat_lease of these daemons
CONCURRENCY = 12  # the transport's, divided among the members
# Seconds after SIGCONT within which the sends a frozen member was making when it froze reach the
# server: the process has to be scheduled again on a loaded machine.
IN_FLIGHT = 2.0


def _config(
    pg_url: str,
    port: int,
    *,
    rate: float = 0,
    concurrency: int = CONCURRENCY,
    batch: int = 100,
    sends: bool = True,
    lease: float = LEASE,
) -> str:
    """A cluster member: fast heartbeats, the email channel, one transport `relay` to `port`."""
    relay = f'host = "127.0.0.1", port = {port}, security = "none"'
    return (
        f"[engine]\nenabled = {str(sends).lower()}\nbatch_size = {batch}\nsending_timeout = 30.0\n"
        "retry_delay = 0.2\n"
        f"[cluster]\nheartbeat_interval = {INTERVAL}\nheartbeat_lease = {lease}\n"
        f'[database]\nurl = "{pg_url}"\n'
        + UNSUBSCRIBE
        + f'[transports.relay]\ntype = "email"\nrate = {rate}\nconcurrency = {concurrency}\n'
        f"options = {{ {relay} }}\n"
    )


@pytest.fixture
def server() -> Iterator[StampingSmtpServer]:
    """The SMTP server, with a port for each of up to three daemons."""
    smtp = StampingSmtpServer(ports=3)
    yield smtp
    smtp.close()


def _cluster(
    daemon_factory: DaemonFactory, pg_url: str, server: StampingSmtpServer, count: int, **options: object
) -> list[DaemonProcess]:
    """`count` daemons, each sending to its own port of `server`; the first one leads."""
    daemons = []
    for i in range(count):
        config = _config(pg_url, server.ports[i], **options)  # type: ignore[arg-type]
        daemons.append(daemon_factory(config, env=ENV, name=f"member{i}").start())
        if i == 0:
            wait_until(lambda: _leader(daemons) is daemons[0], 30, "the first daemon to lead")
    wait_until(lambda: len(_live(daemons[0])) == count, 30, f"{count} live members")
    return daemons


def _members(daemon: DaemonProcess) -> cl.ListClusterMembersResponse:
    with daemon.channel() as channel:
        return cl_grpc.ClusterServiceStub(channel).ListClusterMembers(
            cl.ListClusterMembersRequest(), timeout=10
        )


def _live(daemon: DaemonProcess) -> list[cl.ClusterMember]:
    return [m for m in _members(daemon).members if m.state == cl.ClusterMember.LIVE]


def _member_of(daemon: DaemonProcess, asked: DaemonProcess) -> cl.ClusterMember | None:
    """`daemon`'s live member as `asked` lists it."""
    assert daemon.proc is not None
    return next((m for m in _live(asked) if m.pid == daemon.proc.pid), None)


def _leader(daemons: list[DaemonProcess]) -> DaemonProcess | None:
    """The daemon that leads, as the first live one of `daemons` sees it."""
    asked = next(d for d in daemons if d.proc is not None and d.proc.poll() is None)
    leader = next((m for m in _live(asked) if m.leader), None)
    return next(
        (d for d in daemons if leader is not None and d.proc is not None and d.proc.pid == leader.pid), None
    )


def _launch(daemon: DaemonProcess, recipients: int, list_id: str = "readers") -> str:
    """Import `recipients` contacts into a list and launch an email campaign to it; its name."""
    rows = readers(recipients)
    for row in rows:
        row.email = row.email.replace("reader", f"{list_id}-")
    import_people(daemon, rows, list_id)
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = client.create(
            email_channel({"relay": 100}), audience=pb.Audience(target_lists=[f"lists/{list_id}"])
        )
        client.launch(campaign.name)
    return campaign.name


def _state(daemon: DaemonProcess, name: str) -> int:
    with daemon.channel() as channel:
        return int(Client(channel).get(name).state)


def _report(daemon: DaemonProcess, name: str) -> pb.CampaignReport:
    with daemon.channel() as channel:
        return Client(channel).stub.GetCampaignReport(svc.GetCampaignReportRequest(name=name))


def _received(transactions: list[Transaction]) -> collections.Counter[str]:
    return collections.Counter(r for t in transactions for r in t.recipients)


def _most_in_one_second(starts: list[float]) -> int:
    """The most transactions that started within any one-second window."""
    starts = sorted(starts)
    most, first = 0, 0
    for last, start in enumerate(starts):
        while starts[first] <= start - 1.0:
            first += 1
        most = max(most, last - first + 1)
    return most


def _finishing(transactions: list[Transaction], port: int, woke: float) -> list[Transaction]:
    """Of `transactions`, those a member woken at `woke` had begun when it froze: from its port,
    written as soon as it ran again, no more than its connections."""
    finishing = [t for t in transactions if t.port == port and t.started - woke < IN_FLIGHT]
    assert len(finishing) <= CONCURRENCY, f"{len(finishing)} sends right after the wake"
    return finishing


def _ambiguous(pg_url: str) -> set[str]:
    """The addresses of the messages recorded FAILED `ambiguous`: begun, and not known to be sent."""
    database = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with database.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT address FROM messages WHERE state = 'failed' AND reason = 'ambiguous'")
            )
            return {r.address for r in rows}
    finally:
        database.dispose()


@pytest.mark.slow
def test_pause_on_a_member_that_does_not_lead_stops_every_member(
    daemon_factory: DaemonFactory, pg_url: str, server: StampingSmtpServer
) -> None:
    """Three daemons send 20,000 messages; Pause sent to one that does not lead: the server sees no
    transaction start after the call returned, on any daemon's port; resumed, every recipient is
    received exactly once."""
    daemons = _cluster(daemon_factory, pg_url, server, 3)
    name = _launch(daemons[0], 20_000)

    def everyone_sends() -> bool:
        by_port = collections.Counter(t.port for t in server.transactions())
        return all(by_port[port] >= 300 for port in server.ports)

    wait_until(everyone_sends, 180, "every daemon to send")
    follower = next(d for d in daemons if d is not _leader(daemons))
    asked = time.time()
    with follower.channel() as channel:
        Client(channel).pause(name)
    returned = time.time()
    time.sleep(3.0)  # sends in flight finish and are recorded
    transactions = server.transactions()
    late = [t for t in transactions if t.started > returned]
    assert late == [], f"{len(late)} transactions started after Pause returned"
    # The pause came while every daemon was sending.
    just_before = {t.port for t in transactions if asked - 2.0 < t.started <= asked}
    assert just_before == set(server.ports)
    assert _state(daemons[2], name) == pb.Campaign.PAUSED
    paused_at = len(transactions)
    assert 0 < paused_at < 20_000

    with daemons[2].channel() as channel:
        Client(channel).resume(name)
    wait_until(lambda: _state(daemons[1], name) == pb.Campaign.COMPLETED, 300, "completion")
    received = _received(server.transactions())
    assert len(received) == 20_000
    assert max(received.values()) == 1, "a recipient was sent twice"
    totals = _report(daemons[0], name).totals
    assert (totals.sent, totals.failed, totals.queued, totals.sending) == (20_000, 0, 0, 0)


@pytest.mark.slow
def test_a_pause_waits_for_a_frozen_member_to_lapse_and_it_sends_nothing_after(
    daemon_factory: DaemonFactory, pg_url: str, server: StampingSmtpServer
) -> None:
    """Pause while a member is frozen (SIGSTOP): the call returns once the frozen member's lease
    lapsed (within the lease, tolerance 2 s for a loaded machine), and the member is removed;
    woken, it rejoins under a new id and starts no transaction, nor does any other, until Resume.
    The one exception: the few sends the frozen member had begun when it froze (admitted, MAIL
    FROM not yet written) reach the server as it wakes; they are the ones recorded `ambiguous`."""
    daemons = _cluster(daemon_factory, pg_url, server, 2, rate=200, batch=50)
    name = _launch(daemons[0], 3000)
    frozen = daemons[1]
    wait_until(lambda: any(t.port == server.ports[1] for t in server.transactions()), 120, "both to send")
    before = _member_of(frozen, daemons[0])
    assert before is not None
    frozen.signal(signal.SIGSTOP)
    try:
        asked = time.monotonic()
        with daemons[0].channel() as channel:
            Client(channel).pause(name)
        returned, took = time.time(), time.monotonic() - asked
    finally:
        woke = time.time()
        frozen.signal(signal.SIGCONT)
    assert took <= LEASE + 2.0, f"the pause took {took:.1f} s"
    wait_until(lambda: _member_of(frozen, daemons[0]) is not None, 30, "the frozen member to rejoin")
    rejoined = _member_of(frozen, daemons[0])
    assert rejoined is not None
    assert rejoined.name != before.name
    time.sleep(2.0)
    late = [t for t in server.transactions() if t.started > returned]
    finishing = _finishing(late, server.ports[1], woke)
    others = [t for t in late if t not in finishing]
    assert others == [], f"{len(others)} transactions started after Pause returned"
    with daemons[1].channel() as channel:
        Client(channel).resume(name)
    wait_until(lambda: _state(daemons[0], name) == pb.Campaign.COMPLETED, 300, "completion")
    received = _received(server.transactions())
    assert max(received.values()) == 1, "a recipient was sent twice"
    totals = _report(daemons[0], name).totals
    assert totals.sent + totals.failed == 3000
    assert set(totals.failed_by_reason) <= {"ambiguous"}
    assert {r for t in finishing for r in t.recipients} <= _ambiguous(pg_url)


@pytest.mark.slow
def test_a_pause_waits_for_a_frozen_member_whose_lease_is_longer_than_its_own(
    daemon_factory: DaemonFactory, pg_url: str, server: StampingSmtpServer
) -> None:
    """Each member has its own [cluster] settings: the one that gets a Pause has a 3 s lease, the
    frozen one 15 s. The call waits for the frozen member's lease to lapse and returns then
    (tolerance 2 s), rather than failing CLUSTER_UNREACHABLE after its own 2 x 3 + 5 s."""
    long_lease = 15.0
    daemons = [daemon_factory(_config(pg_url, server.ports[0], rate=100), env=ENV, name="member0").start()]
    wait_until(lambda: _leader(daemons) is daemons[0], 30, "the first daemon to lead")
    config = _config(pg_url, server.ports[1], rate=100, lease=long_lease)
    daemons.append(daemon_factory(config, env=ENV, name="member1").start())
    wait_until(lambda: len(_live(daemons[0])) == 2, 30, "2 live members")
    name = _launch(daemons[0], 3000)
    frozen = daemons[1]
    wait_until(lambda: any(t.port == server.ports[1] for t in server.transactions()), 120, "both to send")
    frozen.signal(signal.SIGSTOP)
    try:
        asked = time.monotonic()
        with daemons[0].channel() as channel:
            Client(channel).pause(name)
        took = time.monotonic() - asked
    finally:
        frozen.signal(signal.SIGCONT)
    assert took <= long_lease + 2.0, f"the pause took {took:.1f} s"
    assert _state(daemons[0], name) == pb.Campaign.PAUSED


@pytest.mark.slow
def test_kill_9_of_the_leader_hands_the_lead_on_within_its_lease(
    daemon_factory: DaemonFactory, pg_url: str, server: StampingSmtpServer
) -> None:
    """The leader is killed mid-campaign: another member leads within the lease (tolerance 1.5 s
    for a loaded machine), a scheduled campaign still starts, the campaign completes, and nobody
    is sent twice; only sends the dead leader had started may be ambiguous."""
    daemons = _cluster(daemon_factory, pg_url, server, 3, rate=300)
    name = _launch(daemons[1], 3000)
    wait_until(lambda: len(server.transactions()) >= 500, 120, "the first sends")
    leader = _leader(daemons)
    assert leader is not None
    assert leader.proc is not None
    survivors = [d for d in daemons if d is not leader]
    old_member = _member_of(leader, survivors[0])
    assert old_member is not None
    leader.proc.kill()
    killed = time.monotonic()
    leader.proc.wait(10)
    wait_until(lambda: _leader(survivors) is not None, 30, "a new leader")
    took = time.monotonic() - killed
    assert took <= LEASE + INTERVAL + 1.5, f"the lead passed on after {took:.1f} s"

    # Only the leader starts scheduled channels: this one starts, so someone leads.
    import_people(survivors[0], readers(20), "later")
    with survivors[0].channel() as channel:
        client = Client(channel)
        later = client.create(
            email_channel({"relay": 100}), audience=pb.Audience(target_lists=["lists/later"])
        )
        when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)
        request = svc.ScheduleCampaignRequest(name=later.name, attestation=ATTESTATION)
        request.schedule_time.FromDatetime(when)
        client.stub.ScheduleCampaign(request)
    wait_until(
        lambda: _state(survivors[1], later.name) == pb.Campaign.COMPLETED, 120, "the scheduled campaign"
    )
    wait_until(lambda: _state(survivors[1], name) == pb.Campaign.COMPLETED, 300, "completion")

    received = _received(server.transactions())
    assert max(received.values()) == 1, "a recipient was sent twice"
    totals = _report(survivors[0], name).totals
    assert totals.sent + totals.failed == 3000
    assert set(totals.failed_by_reason) <= {"ambiguous"}
    assert totals.sent <= sum(1 for r in received if r.startswith("readers-"))
    assert old_member.name not in {m.name for m in _members(survivors[0]).members}


@pytest.mark.slow
def test_a_member_stopped_past_its_lease_sends_nothing_it_had_leased(
    daemon_factory: DaemonFactory, pg_url: str, server: StampingSmtpServer
) -> None:
    """SIGSTOP a member holding leases for longer than its heartbeat lease, then SIGCONT: of the
    messages it had marked started, no member starts one afterwards, except the woken member
    finishing the few it was already sending when it froze (admitted, MAIL FROM not yet
    written); it rejoins under a new id and sends again; nobody is sent twice. (What it had
    leased but not started goes back to the queue, and anyone may send it once.)"""
    daemons = _cluster(daemon_factory, pg_url, server, 2, rate=200, batch=50)
    name = _launch(daemons[0], 3000)
    victim = daemons[1]
    assert victim.proc is not None
    victim_port = server.ports[1]
    wait_until(lambda: any(t.port == victim_port for t in server.transactions()), 120, "the member to send")
    member = _member_of(victim, daemons[0])
    assert member is not None
    database = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    held: set[str] = set()
    started: set[str] = set()
    try:
        for _ in range(50):
            victim.signal(signal.SIGSTOP)
            with database.connect() as conn:
                rows = conn.execute(
                    sa.text(
                        "SELECT address, started IS NOT NULL AS started FROM messages"
                        " WHERE state = 'sending' AND lease_owner = :o"
                    ),
                    {"o": member.owner},
                ).all()
                held = {r.address for r in rows}
                started = {r.address for r in rows if r.started}
            if started:
                break
            victim.signal(signal.SIGCONT)
            time.sleep(0.1)
        assert started, "the member never held a started send when stopped"
        wait_until(lambda: _member_of(victim, daemons[0]) is None, 3 * LEASE, "the stopped member to lapse")
        time.sleep(1.0)
    finally:
        woke = time.time()  # taken before the wake, so that no send after it is missed
        victim.signal(signal.SIGCONT)
        database.dispose()
    wait_until(lambda: _member_of(victim, daemons[0]) is not None, 30, "the member to rejoin")
    rejoined = _member_of(victim, daemons[0])
    assert rejoined is not None
    assert rejoined.name != member.name
    wait_until(lambda: _state(daemons[0], name) == pb.Campaign.COMPLETED, 300, "completion")

    transactions = server.transactions()
    # A stopped process writes nothing: what the server stamps between SIGSTOP and SIGCONT was
    # written before the stop (a loaded server stamps it late), so only sends after the wake count.
    from_victim_after = [t for t in transactions if t.port == victim_port and t.started > woke]
    resent = [t for t in transactions if t.started > woke and set(t.recipients) & started]
    finishing = _finishing(resent, victim_port, woke)
    assert {r for t in finishing for r in t.recipients} <= _ambiguous(pg_url)
    late = [t for t in resent if t not in finishing]
    assert late == [], (
        f"{len(late)} messages it had marked started were sent after it woke (its port {victim_port})"
    )
    assert from_victim_after, "it did not go on sending after rejoining"
    received = _received(transactions)
    assert max(received.values()) == 1, "a recipient was sent twice"
    totals = _report(daemons[0], name).totals
    assert totals.sent + totals.failed == 3000
    assert set(totals.failed_by_reason) <= {"ambiguous"}
    assert totals.failed <= len(held)


@pytest.mark.slow
def test_a_transport_rate_holds_for_the_whole_cluster(
    daemon_factory: DaemonFactory, pg_url: str, server: StampingSmtpServer
) -> None:
    """Two daemons through one transport with rate 200: the server never sees more than 200
    transactions start in any one-second window (tolerance 5 %: a send is counted by the daemon
    when its rate admits it and by the server when MAIL FROM arrives), both daemons send, and
    together they reach at least half the rate."""
    daemons = _cluster(daemon_factory, pg_url, server, 2, rate=200, concurrency=8)
    name = _launch(daemons[0], 2400)
    wait_until(lambda: _state(daemons[1], name) == pb.Campaign.COMPLETED, 300, "completion")
    transactions = server.transactions()
    starts = [t.started for t in transactions]
    assert len(transactions) == 2400
    most = _most_in_one_second(starts)
    assert most <= 210, f"{most} transactions started within one second"
    by_port = collections.Counter(t.port for t in transactions)
    assert set(by_port) == set(server.ports[:2])
    overall = len(starts) / (max(starts) - min(starts))
    assert overall >= 100, f"the cluster sent {overall:.0f}/s"


@pytest.mark.slow
def test_a_watcher_on_one_daemon_sees_the_progress_another_daemon_sends(
    daemon_factory: DaemonFactory, pg_url: str, server: StampingSmtpServer
) -> None:
    """A watcher on an API-only daemon follows a campaign only another daemon sends: many updates
    a second (polling alone gives at most one) with the sent count rising, and the completion
    within 1 s of the other daemon making it (tolerance 0.5 s for a loaded machine)."""
    # Small batches: progress is recorded a batch at a time.
    daemon_factory(_config(pg_url, server.ports[0], rate=100, batch=10), env=ENV, name="sender").start()
    api_only = _config(pg_url, server.ports[1], rate=100, sends=False)
    watched = daemon_factory(api_only, env=ENV, name="api").start()
    wait_until(lambda: len(_live(watched)) == 2, 30, "two members")
    rows = readers(1000)
    import_people(watched, rows)
    with watched.channel() as channel:
        campaign = Client(channel).create(
            email_channel({"relay": 100}), audience=pb.Audience(target_lists=["lists/readers"])
        )
    updates: list[tuple[float, svc.WatchCampaignResponse]] = []

    def watch() -> None:
        with watched.channel() as channel:
            stream = Client(channel).stub.WatchCampaign(
                svc.WatchCampaignRequest(name=campaign.name), timeout=300
            )
            for update in stream:
                updates.append((time.time(), update))
                if update.campaign.state == pb.Campaign.COMPLETED:
                    return

    watcher = threading.Thread(target=watch)
    watcher.start()
    wait_until(lambda: bool(updates), 30, "the first snapshot")
    with watched.channel() as channel:
        Client(channel).launch(campaign.name)
    watcher.join(300)
    assert not watcher.is_alive()
    assert {t.port for t in server.transactions()} == {server.ports[0]}, "only the sending daemon sends"

    progress = [(at, u.report.totals.sent) for at, u in updates if u.campaign.state == pb.Campaign.RUNNING]
    sent = [n for _, n in progress]
    assert sent == sorted(sent)
    assert len(set(sent)) > 10
    moving = [at for at, n in progress if 0 < n < 1000]
    assert len(moving) >= 1.5 * (moving[-1] - moving[0]), "updates came no faster than polling"
    finished_at, finished = updates[-1]
    assert finished.report.totals.sent == 1000
    with watched.channel() as channel:
        history = Client(channel).history(campaign.name)
    completed = next(e for e in history if e.operation == "complete").time.ToDatetime(tzinfo=dt.UTC)
    assert finished_at - completed.timestamp() <= 1.5


def test_a_member_that_does_not_send_never_leads(
    daemon_factory: DaemonFactory, pg_url: str, server: StampingSmtpServer
) -> None:
    """The leader's duties are the engine's: an API-only member started first does not take the
    lead, the sending member that joins after it does, and a campaign scheduled through the
    API-only member starts on time and completes; a test send asked of the API-only member goes
    out through its own transport; with no member that sends, a launch waits in QUEUED."""
    api = daemon_factory(_config(pg_url, server.ports[1], sends=False), env=ENV, name="api").start()
    time.sleep(2 * INTERVAL)
    assert [m.leader for m in _live(api)] == [False]
    sender = daemon_factory(_config(pg_url, server.ports[0]), env=ENV, name="sender").start()
    wait_until(lambda: _leader([api, sender]) is sender, 30, "the sending member to lead")
    import_people(api, readers(20), "later")
    with api.channel() as channel:
        client = Client(channel)
        audience = pb.Audience(target_lists=["lists/later"])
        later = client.create(email_channel({"relay": 100}), audience=audience)
        tested = client.stub.SendTestMessage(
            svc.SendTestMessageRequest(name=later.name, channel_id="mail", addresses=["qa@example.org"])
        )
        assert [r.accepted for r in tested.results] == [True]
        assert [t.port for t in server.transactions()] == [server.ports[1]]
        request = svc.ScheduleCampaignRequest(name=later.name, attestation=ATTESTATION)
        request.schedule_time.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2))
        client.stub.ScheduleCampaign(request)
    wait_until(lambda: _state(api, later.name) == pb.Campaign.COMPLETED, 60, "the scheduled campaign")
    assert collections.Counter(t.port for t in server.transactions()) == {
        server.ports[0]: 20,
        server.ports[1]: 1,
    }
    assert sender.stop() == 0
    # The sender left; the API-only member still does not lead.
    time.sleep(LEASE)
    assert [m.leader for m in _live(api)] == [False]
    # With no member that sends, a launch is accepted and waits in QUEUED until one joins.
    waiting = _launch(api, 10, "waiting")
    time.sleep(2 * INTERVAL)
    assert _state(api, waiting) == pb.Campaign.QUEUED
    daemon_factory(_config(pg_url, server.ports[0]), env=ENV, name="sender2").start()
    wait_until(lambda: _state(api, waiting) == pb.Campaign.COMPLETED, 60, "the waiting campaign")


def test_one_daemon_on_sqlite_is_a_cluster_of_one_that_leads(daemon_factory: DaemonFactory) -> None:
    """On SQLite, ListClusterMembers and `campaignctl cluster` show one live member: the daemon
    that answers, leading and sending."""
    daemon = daemon_factory().start()
    reply = _members(daemon)
    assert len(reply.members) == 1
    member = reply.members[0]
    assert daemon.proc is not None
    assert (member.state, member.leader, member.sends, member.pid) == (
        cl.ClusterMember.LIVE,
        True,
        True,
        daemon.proc.pid,
    )
    assert reply.answered_by == member.name
    listed = json.loads(ok(daemon, "cluster", "--json"))
    assert [m["name"] for m in listed["members"]] == [member.name]
    assert "leader" in ok(daemon, "cluster")


def test_list_cluster_members_refuses_a_negative_page_size(daemon_factory: DaemonFactory) -> None:
    """A negative page_size is INVALID_ARGUMENT naming the field."""
    daemon = daemon_factory().start()
    with daemon.channel() as channel, pytest.raises(grpc.RpcError) as caught:
        cl_grpc.ClusterServiceStub(channel).ListClusterMembers(cl.ListClusterMembersRequest(page_size=-1))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_size" in (caught.value.details() or "")


@pytest.mark.slow
def test_members_list_each_other_and_a_leader_that_stops_hands_on_at_once(
    daemon_factory: DaemonFactory, pg_url: str, server: StampingSmtpServer
) -> None:
    """Two daemons list the same two members, one leading, one page at a time too; the leader
    stopped gracefully leaves, and the other leads without waiting for a lease to lapse."""
    first, second = _cluster(daemon_factory, pg_url, server, 2)
    names = [m.name for m in _members(first).members]
    assert names == [m.name for m in _members(second).members] == sorted(names)
    assert sum(m.leader for m in _members(second).members) == 1
    with second.channel() as channel:
        stub = cl_grpc.ClusterServiceStub(channel)
        page = stub.ListClusterMembers(cl.ListClusterMembersRequest(page_size=1))
        rest = stub.ListClusterMembers(
            cl.ListClusterMembersRequest(page_size=1, page_token=page.next_page_token)
        )
    assert [m.name for m in [*page.members, *rest.members]] == names
    assert rest.next_page_token == ""
    assert _leader([first, second]) is first
    stopped = time.monotonic()
    assert first.stop() == 0
    wait_until(lambda: _leader([second]) is second, 10, "the other daemon to lead")
    assert time.monotonic() - stopped < LEASE
    assert len(_members(second).members) == 1


@pytest.mark.slow
def test_a_transport_rate_holds_while_members_leave_and_join(
    daemon_factory: DaemonFactory, pg_url: str, server: StampingSmtpServer
) -> None:
    """Two daemons send through one transport with rate 200; one stops gracefully in the middle,
    and later a third joins: no one-second window ever has more than 200 transactions starting
    (tolerance 5 %), around the leave and the join too, and every recipient gets one message."""
    daemons = _cluster(daemon_factory, pg_url, server, 2, rate=200, concurrency=8, batch=50)
    name = _launch(daemons[0], 4000)

    def sent_from(port: int) -> int:
        return sum(1 for t in server.transactions() if t.port == port)

    wait_until(lambda: min(sent_from(p) for p in server.ports[:2]) >= 300, 120, "both daemons to send")
    assert daemons[1].stop() == 0
    left = time.time()
    time.sleep(3.0)
    config = _config(pg_url, server.ports[2], rate=200, concurrency=8, batch=50)
    daemon_factory(config, env=ENV, name="member2").start()
    wait_until(lambda: sent_from(server.ports[2]) >= 300, 120, "the new daemon to send")
    wait_until(lambda: _state(daemons[0], name) == pb.Campaign.COMPLETED, 300, "completion")
    transactions = server.transactions()
    assert max(_received(transactions).values()) == 1
    assert len(transactions) == 4000
    starts = [t.started for t in transactions]
    around_leave = [s for s in starts if left - 2.0 <= s <= left + 2.0]
    assert _most_in_one_second(around_leave) <= 210, "too many right after a member left"
    most = _most_in_one_second(starts)
    assert most <= 210, f"{most} transactions started within one second"


@pytest.mark.slow
def test_a_transport_concurrency_holds_when_a_member_joins(
    daemon_factory: DaemonFactory, pg_url: str
) -> None:
    """One daemon keeps a slow server busy through a transport with concurrency 4; a second one
    joins: the server never has more than 4 transactions open at once, before, during and after
    the join."""
    # Each batch takes seconds, longer than a member waits after joining.
    slow = StampingSmtpServer(ports=2, accept_delay=0.25)
    try:
        first = _cluster(daemon_factory, pg_url, slow, 1, concurrency=4, batch=40)[0]
        name = _launch(first, 400)
        wait_until(lambda: len(slow.transactions()) >= 20, 60, "the first daemon to send")
        config = _config(pg_url, slow.ports[1], concurrency=4, batch=40)
        daemon_factory(config, env=ENV, name="member1").start()
        wait_until(lambda: _state(first, name) == pb.Campaign.COMPLETED, 120, "completion")
        transactions = slow.transactions()
    finally:
        slow.close()
    assert {t.port for t in transactions} == set(slow.ports)
    # Transactions on one connection follow each other: those open at once are sends in flight.
    edges = sorted([(t.started, 1) for t in transactions] + [(t.ended, -1) for t in transactions])
    open_now = most = 0
    for _, step in edges:
        open_now += step
        most = max(most, open_now)
    assert most <= 4, f"{most} sends in flight at once"


def test_a_member_whose_shared_settings_differ_is_named_in_the_log(
    daemon_factory: DaemonFactory, pg_url: str, server: StampingSmtpServer
) -> None:
    """Two members with different `engine.slots` and a different rate for their common transport:
    each logs that the other's settings differ, naming those two settings and nothing else (the
    transport's host and port, which may differ per member, are not compared)."""
    first = daemon_factory(_config(pg_url, server.ports[0], rate=100), env=ENV, name="member0").start()
    wait_until(lambda: _leader([first]) is first, 30, "the first daemon to lead")
    config = _config(pg_url, server.ports[1], rate=50).replace(
        "[engine]\n", "[engine]\nslots = { email = 1 }\n", 1
    )
    second = daemon_factory(config, env=ENV, name="member1").start()
    wait_until(lambda: len(_live(first)) == 2, 30, "two live members")

    def warnings(daemon: DaemonProcess) -> list[dict[str, object]]:
        said = "cluster members' settings differ"
        return [e for e in daemon.log_events() if str(e.get("event", "")).startswith(said)]

    wait_until(lambda: bool(warnings(first) and warnings(second)), 10, "both members to log it")
    for daemon in (first, second):
        (found,) = warnings(daemon)
        assert found["level"] == "warning"
        assert found["settings"] == ["engine.slots", "transports.relay"]
