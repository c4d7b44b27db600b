"""The sending engine on PostgreSQL: a campaign runs to completion, Pause is a barrier, and two
daemons on one database share a campaign, each recipient sent once."""

from __future__ import annotations

import pathlib

import pytest
import sqlalchemy as sa

from campaignd.v1 import resources_pb2 as pb
from tests.integration import test_engine as engine_tests
from tests.integration.campaign_client import Client, wait_until
from tests.integration.conftest import TEST_CHANNELS, DaemonFactory, DaemonProcess
from tests.integration.sending import FAST, double_campaign, people, sink_counts


def _on(url: str) -> str:
    return f'[database]\nurl = "{url}"\n'


@pytest.fixture
def daemon(daemon_factory: DaemonFactory, pg_url: str) -> DaemonProcess:
    """A daemon whose engine ticks fast, on PostgreSQL."""
    return daemon_factory(TEST_CHANNELS + FAST + _on(pg_url)).start()


def test_postgresql_runs_a_campaign_to_completion(client: Client, tmp_path: pathlib.Path) -> None:
    """On PostgreSQL, a campaign completes with each of 300 recipients received once and counted SENT."""
    engine_tests.test_a_campaign_runs_to_completion_sending_everyone_once(client, tmp_path)


@pytest.mark.slow
def test_postgresql_pause_is_a_barrier(client: Client, tmp_path: pathlib.Path) -> None:
    """On PostgreSQL, no send starts after Pause returns, and resume sends everyone else exactly once."""
    engine_tests.test_pause_is_a_barrier_and_resume_sends_exactly_the_rest(client, tmp_path)


@pytest.mark.slow
def test_two_daemons_on_one_database_send_everyone_once(
    daemon_factory: DaemonFactory, pg_url: str, tmp_path: pathlib.Path
) -> None:
    """Two daemons on one PostgreSQL database share a 2,000-recipient campaign: each recipient once."""
    sink = tmp_path / "received"
    config = TEST_CHANNELS + FAST + _on(pg_url)
    first = daemon_factory(config, name="a").start()  # migrates the database
    second = daemon_factory(config, name="b").start()
    with first.channel() as channel:
        client = Client(channel)
        campaign = double_campaign(client, people(client, "shared", 2000), sink=str(sink), delay_ms=2)
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
            return client.channel_state(campaign.name) == pb.Channel.COMPLETED

        wait_until(done, 60, "completion")
        report = client.report(campaign.name)
        history = client.history(campaign.name)
    database.dispose()
    pids = {int(owner.split(":")[1]) for owner in owners}
    assert first.proc is not None
    assert second.proc is not None
    assert pids == {first.proc.pid, second.proc.pid}, "both daemons should have leased batches"
    received = sink_counts(sink)
    assert len(received) == 2000
    assert max(received.values()) == 1, "a recipient was sent twice"
    assert (report.totals.total, report.totals.sent, report.totals.failed) == (2000, 2000, 0)
    assert (report.totals.queued, report.totals.sending, report.totals.retrying) == (0, 0, 0)
    assert [e.operation for e in history].count("complete") == 1
    assert [e.operation for e in history].count("activate") == 1
