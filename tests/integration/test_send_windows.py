"""Send windows in the real daemon: who is sent now and who waits QUEUED follows each
recipient's local time, or the campaign's for contacts without a time zone, and a channel type's
default window applies where a channel sets none."""

from __future__ import annotations

import datetime as dt
import functools
import pathlib
import time
from zoneinfo import ZoneInfo

import pytest

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import contact_service_pb2 as cs
from campaignd.v1 import resources_pb2 as pb
from tests.integration.campaign_client import Client, wait_until
from tests.integration.conftest import TEST_CHANNELS, DaemonFactory, DaemonProcess
from tests.integration.sending import FAST, double_content, import_list, sink_log

# Two zones without daylight saving time, twelve hours apart: a two-hour window around the
# current local time of one is closed in the other, whenever the test runs.
OPEN_ZONE = "Asia/Tokyo"  # UTC+9
CLOSED_ZONE = "America/Sao_Paulo"  # UTC-3


def _zoned_people(client: Client, list_id: str, per_zone: int) -> str:
    """`per_zone` contacts in each of OPEN_ZONE, CLOSED_ZONE and no zone at all."""
    rows = []
    for tag, zone in (("open", OPEN_ZONE), ("closed", CLOSED_ZONE), ("nozone", "")):
        rows += [
            cs.ContactRow(email=f"{tag}{i}@{list_id}.example.org", time_zone=zone) for i in range(per_zone)
        ]
    return import_list(client, list_id, rows)


def _has_received(sink: pathlib.Path, count: int) -> bool:
    return len(sink_log(sink)) >= count


def _window_around_now(zone: str) -> pb.SendWindow:
    """Every day, from an hour before to an hour after the current local time in `zone`."""
    local = dt.datetime.now(ZoneInfo(zone))
    start = (local - dt.timedelta(hours=1)).strftime("%H:%M")
    end = (local + dt.timedelta(hours=1)).strftime("%H:%M")
    return pb.SendWindow(start_time=start, end_time=end)


@pytest.fixture
def daemon(daemon_factory: DaemonFactory) -> DaemonProcess:
    """A daemon whose engine ticks fast."""
    return daemon_factory(TEST_CHANNELS + FAST).start()


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
                            content=double_content(sink=str(sink)),
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
        wait_until(functools.partial(_has_received, sink, count), 30, "the open zones")
    time.sleep(1.0)  # many ticks: nothing more may go out
    for campaign_zone, (name, sink) in names.items():
        addresses = [a for _, a in sink_log(sink)]
        assert len(addresses) == len(set(addresses)) == 10 * len(expected[campaign_zone])
        assert {a.split("@")[0].rstrip("0123456789") for a in addresses} == expected[campaign_zone]
        assert client.channel_state(name) == pb.Channel.RUNNING
        assert client.get(name).state == pb.Campaign.RUNNING
        report = client.report(name)
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
                        pb.Channel(
                            channel_id="main", type="test-quiet", content=double_content(sink=str(sink))
                        )
                    ],
                )
            )
        )
        client.launch(campaign.name)
        wait_until(functools.partial(_has_received, sink, 10), 30, "the open zone")
        time.sleep(1.0)  # many ticks: nothing more may go out
        report = client.report(campaign.name)
    addresses = {a for _, a in sink_log(sink)}
    assert len(addresses) == 10
    assert all(a.startswith("open") for a in addresses)
    assert (report.totals.sent, report.totals.queued) == (10, 20)
    assert report.channels[0].progress.HasField("window_reopens_time")
