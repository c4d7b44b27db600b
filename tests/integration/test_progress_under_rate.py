"""Progress under a low rate limit, through the real daemon: results are written per batch, so a
lease takes about a second of the rate, and the sent count moves at least every second or so
(SPEC §4.6) instead of once per batch_size / rate seconds."""

from __future__ import annotations

import itertools
import pathlib
import time

from campaignd.v1 import resources_pb2 as pb
from tests.integration.campaign_client import Client, wait_until
from tests.integration.conftest import TEST_CHANNELS, DaemonFactory
from tests.integration.sending import double_campaign, people, sink_log

# The default batch_size (200) and batches_in_flight (4): a batch of 200 at 20/s is 10 s.
ENGINE = "[engine]\ntick_interval = 0.05\n"


def test_sent_count_moves_every_second_under_a_low_rate(daemon_factory: DaemonFactory) -> None:
    """120 recipients at 20 messages/s: the report's sent count is read every 0.1 s and never
    stays still for more than 2 s between the first send and the last (whole batches of 200
    would have shown nothing for 6 s, then everything)."""
    daemon = daemon_factory(TEST_CHANNELS + ENGINE).start()
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = double_campaign(client, people(client, "slow", 120), rate=20)
        client.launch(campaign.name)
        changes: list[float] = []
        last = 0
        deadline = time.monotonic() + 30
        while last < 120 and time.monotonic() < deadline:
            sent = client.report(campaign.name).totals.sent
            if sent != last:
                changes.append(time.monotonic())
                last = sent
            time.sleep(0.1)
        assert last == 120, f"only {last} of 120 sent in 30 s"
        gaps = [b - a for a, b in itertools.pairwise(changes)]
        assert len(changes) >= 4, changes
        assert max(gaps) < 2.0, gaps
        assert client.channel_state(campaign.name) in (pb.Channel.RUNNING, pb.Channel.COMPLETED)


def test_a_rate_below_the_batches_in_flight_sends_at_that_rate(
    daemon_factory: DaemonFactory, tmp_path: pathlib.Path
) -> None:
    """rate_limit = 2 with four batches in flight: 12 sends take about 6 s, never more than 2
    in any one-second window. (Four lanes each holding a unit of a rate of 2 used to wait for
    one another for good: nothing was sent, and the channel failed after sending_timeout.)"""
    sink = tmp_path / "sink"
    daemon = daemon_factory(TEST_CHANNELS + ENGINE).start()
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = double_campaign(client, people(client, "two", 12), rate=2, sink=str(sink))
        client.launch(campaign.name)
        wait_until(lambda: client.channel_state(campaign.name) == pb.Channel.COMPLETED, 30, "the campaign")
    times = sorted(t for t, _ in sink_log(sink))
    assert len(times) == 12
    assert 4.5 < times[-1] - times[0] < 9.0, times
    assert max(sum(1 for t in times if a <= t < a + 1.0) for a in times) <= 2, times
