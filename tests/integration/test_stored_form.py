"""A campaign's values are stored as JSON in the form databases already hold, so that a database
written by an earlier campaignd reads the same, and one written now reads in an earlier one."""

from __future__ import annotations

import re
import sqlite3

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import resources_pb2 as pb
from tests.integration.campaign_client import Client, channel
from tests.integration.conftest import TEST_CHANNELS, DaemonFactory, DaemonProcess


def _columns(daemon: DaemonProcess, query: str, *args: str) -> tuple[str, ...]:
    with sqlite3.connect(daemon.workdir / "state" / "campaignd.db") as db:
        row = db.execute(query, args).fetchone()
    return tuple(row)


def test_values_are_stored_as_json_in_the_known_form(daemon_factory: DaemonFactory) -> None:
    """Audience, guard, attestation, send window, transports and remarketing source are stored as
    the same JSON text as ever, and read back unchanged."""
    daemon = daemon_factory(TEST_CHANNELS).start()
    with daemon.channel() as grpc_channel:
        client = Client(grpc_channel)
        mail = channel()
        mail.rate_limit = 5
        mail.send_window.CopyFrom(pb.SendWindow(days=[5, 1, 5], start_time="08:00", end_time="21:00"))
        campaign = client.create(mail, guard=pb.GuardSettings(max_failure_percent=7.5, min_sends=20))
        again = pb.Channel(
            channel_id="again",
            type="test-email",
            content=mail.content,
            remarketing=pb.RemarketingSource(campaign=campaign.name, channel_id="main", outcomes=["failed"]),
        )
        client.stub.AddChannel(svc.AddChannelRequest(name=campaign.name, channel=again))
        client.launch(campaign.name, channel_id="main")
        stored = client.get(campaign.name)
    campaign_id = campaign.name.removeprefix("campaigns/")
    audience, guard, attestation = _columns(
        daemon, "SELECT audience, guard, attestation FROM campaigns WHERE id = ?", campaign_id
    )
    assert audience == (
        '{"target_lists": ["lists/x"], "target_segments": [], "exclude_lists": [], "exclude_segments": []}'
    )
    assert guard == '{"max_failure_percent": 7.5, "min_sends": 20}'
    assert re.fullmatch(
        r'\{"accepted_by": "tests", "terms_version": "v1", "accept_time": "\d{4}-\d\d-\d\dT[\d:.]+\+00:00"\}',
        attestation,
    )
    window, transports = _columns(
        daemon,
        "SELECT send_window, transports FROM channels WHERE campaign_id = ? AND channel_id = 'main'",
        campaign_id,
    )
    assert window == '{"days": [1, 5], "start_time": "08:00", "end_time": "21:00"}'
    assert transports == "[]"
    [source] = _columns(
        daemon,
        "SELECT remarketing FROM channels WHERE campaign_id = ? AND channel_id = 'again'",
        campaign_id,
    )
    assert source == f'{{"campaign": "{campaign.name}", "channel_id": "main", "outcomes": ["failed"]}}'
    assert list(stored.channels[0].send_window.days) == [1, 5]
    assert stored.guard == pb.GuardSettings(max_failure_percent=7.5, min_sends=20)
    assert stored.attestation.accepted_by == "tests"
    assert stored.channels[1].remarketing.outcomes == ["failed"]
