"""Stop cancels everything that still waits, whatever it races with: the results of a batch in
flight, written while the stop commits, and the leases of a daemon that died, expired after it."""

from __future__ import annotations

import concurrent.futures
import pathlib
import signal
import time

from campaignd.v1 import contact_service_pb2 as cs
from campaignd.v1 import resources_pb2 as pb
from tests.integration.campaign_client import Client, force_state, wait_until
from tests.integration.conftest import TEST_CHANNELS, DaemonFactory
from tests.integration.sending import double_campaign, import_list, sink_counts


def _phones(list_id: str, count: int) -> list[cs.ContactRow]:
    return [cs.ContactRow(contact_id=f"s{i}", phone=f"+4420790{i:05d}") for i in range(count)]


def _on(url: str) -> str:
    return f'[database]\nurl = "{url}"\n'


def _settled(client: Client, name: str) -> pb.CampaignReport:
    """The report once no message of the campaign is SENDING any more."""
    wait_until(lambda: client.report(name).totals.sending == 0, 30, "the batches to end")
    return client.report(name)


def test_stop_while_a_batch_hands_back_its_rest_cancels_all_of_it(
    daemon_factory: DaemonFactory, database_url: str
) -> None:
    """Stop while several batches are in flight, each handing back what it did not start while
    the stop commits: whichever commits first, every unstarted message ends CANCELLED, none
    QUEUED, on each of several campaigns."""
    engine = "[engine]\ntick_interval = 0.05\nretry_delay = 1\nbatch_size = 10\n"
    daemon = daemon_factory(TEST_CHANNELS + engine + _on(database_url)).start()
    with daemon.channel() as channel:
        client = Client(channel)
        target = import_list(client, "stops", _phones("stops", 100))
        for round_ in range(6):
            campaign = double_campaign(client, target, type_="test-voice", delay_ms=50, defer_matching="0015")
            client.launch(campaign.name)
            time.sleep(0.6 + 0.1 * round_)
            client.stop(campaign.name)
            report = _settled(client, campaign.name)
            assert client.channel_state(campaign.name) == pb.Channel.STOPPED
            totals = report.totals
            assert (totals.queued, totals.retrying) == (0, 0), f"round {round_}: {totals}"
            assert totals.cancelled > 0
            assert totals.cancelled + totals.sent + totals.failed == totals.total == 100


def test_leases_expired_after_a_crash_are_cancelled_on_a_stopped_or_failed_channel(
    daemon_factory: DaemonFactory, database_url: str, tmp_path: pathlib.Path
) -> None:
    """kill -9 while three channels have their only batch SENDING; after the restart one is
    stopped, one (with ambiguous_sends RESEND) is stopped with a send in doubt, and one failed
    while the daemon was down. When the dead daemon's leases expire, nothing goes back to QUEUED
    or RETRYING: the unstarted become CANCELLED (reason `channel_failed` on the failed channel),
    the send in doubt CANCELLED `ambiguous`, counted as an attempt."""
    sink = tmp_path / "received"
    engine = "[engine]\ntick_interval = 0.05\nsending_timeout = 10\n"
    daemon = daemon_factory(TEST_CHANNELS + engine + _on(database_url)).start()
    with daemon.channel() as channel:
        client = Client(channel)
        target = import_list(client, "crash", _phones("crash", 100))
        # One batch each (the default batch size is 200): after the restart nothing is left to lease.
        hung = double_campaign(client, target, type_="test-voice", crash="hang")
        doubt = double_campaign(
            client, target, type_="test-sms", ambiguous=pb.Channel.RESEND, delay_ms=5000, sink=str(sink)
        )
        failed = double_campaign(client, target, type_="test-voice", crash="hang")
        for campaign in (hung, doubt, failed):
            client.launch(campaign.name)
        for campaign in (hung, doubt, failed):

            def leased(name: str = campaign.name) -> bool:
                return client.report(name).totals.sending == 100

            wait_until(leased, 30, "the batches")
        wait_until(lambda: bool(sink_counts(sink)), 30, "a send to start")
    daemon.signal(signal.SIGKILL)
    daemon.wait(10)
    force_state(database_url, failed.name, "failed")
    daemon.start()
    with daemon.channel() as channel:
        client = Client(channel)
        # At once: on PostgreSQL each waits until the dead daemon's heartbeat lapses, when its
        # leases expire too, so that the two may commit in either order.
        with concurrent.futures.ThreadPoolExecutor() as pool:
            list(pool.map(client.stop, [hung.name, doubt.name]))
        for campaign in (hung, doubt, failed):
            report = _settled(client, campaign.name)
            totals = report.totals
            assert (totals.queued, totals.retrying, totals.cancelled) == (0, 0, 100), totals
        assert client.channel_state(hung.name) == client.channel_state(doubt.name) == pb.Channel.STOPPED
        assert client.channel_state(failed.name) == pb.Channel.FAILED
        in_doubt = set(sink_counts(sink))
        assert len(in_doubt) >= 1
        for message in client.messages(doubt.name):
            started = message.address in in_doubt
            assert (message.reason, message.attempts) == (("ambiguous", 1) if started else ("", 0))
        assert {(m.reason, m.attempts) for m in client.messages(hung.name)} == {("", 0)}
        assert {(m.reason, m.attempts) for m in client.messages(failed.name)} == {("channel_failed", 0)}
    expired = [e for e in daemon.log_events() if e.get("event") == "leases of a daemon that stopped expired"]
    cancelled, requeued = (sum(e[key] for e in expired) for key in ("cancelled", "requeued"))
    if database_url.startswith("sqlite"):
        # The stops committed at once; the leases expired only after `sending_timeout`.
        assert (cancelled, requeued) == (300, 0)
    else:
        assert cancelled >= 100
