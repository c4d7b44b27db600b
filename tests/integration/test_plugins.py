"""Plugins as the daemon sees them: listing, config checks, and a faulty plugin failing only its channel."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import pytest

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import contact_service_pb2 as cs
from campaignd.v1 import contact_service_pb2_grpc as cs_grpc
from campaignd.v1 import resources_pb2 as pb
from tests.integration.campaign_client import Client, content, failure, import_contacts
from tests.integration.conftest import TEST_CHANNELS, DaemonFactory, DaemonProcess
from tests.integration.ctl import ctl_at

FAST = "[engine]\ntick_interval = 0.05\nsending_timeout = 2.0\nbatch_size = 20\n"


@pytest.fixture
def running(daemon_factory: DaemonFactory) -> Iterator[tuple[DaemonProcess, Client]]:
    daemon = daemon_factory(TEST_CHANNELS + FAST).start().ensure_lists("people")
    with daemon.channel() as channel:
        yield daemon, Client(channel)


@pytest.mark.slow
def test_list_channel_types_names_plugins_versions_and_capabilities(
    running: tuple[DaemonProcess, Client],
) -> None:
    """ListChannelTypes and `campaignctl channels` show every loaded type with its plugin."""
    daemon, client = running
    reply = client.stub.ListChannelTypes(svc.ListChannelTypesRequest())
    by_name = {t.name: t for t in reply.channel_types}
    assert {"test-email", "test-sms", "test-voice", "email"} <= set(by_name)
    sms = by_name["test-sms"]
    assert sms.plugin == "campaignd.testing.channels"
    assert list(sms.capabilities) == ["receipts"]
    assert sms.restartable
    assert sms.edit_while_scheduled == "schedule_only"
    assert "text" in {f.name for f in sms.content_fields if f.required}
    email = by_name["email"]
    # The email channel is its own distribution, found through the entry point.
    assert email.distribution == "campaignd-email"
    assert email.distribution_version
    assert email.uses_transports
    assert not email.restartable
    table = ctl_at(daemon, "channels")
    assert table.returncode == 0, table.stderr
    assert "test-sms" in table.stdout
    assert "campaignd-email" in table.stdout
    as_json = json.loads(ctl_at(daemon, "--json", "channels").stdout)
    assert {t["name"] for t in as_json["channel_types"]} == set(by_name)


def test_a_plugin_that_raises_fails_only_its_channel(running: tuple[DaemonProcess, Client]) -> None:
    """The crashing channel goes FAILED naming the log entry of the exception (whose text stays in the
    log); its sibling completes; the daemon serves on."""
    daemon, client = running
    _people(daemon, 30)
    good = pb.Channel(channel_id="good", type="test-email", content=content(text="hi"))
    bad = pb.Channel(channel_id="bad", type="test-email", content=content(text="hi", crash="raise"))
    campaign = client.create(good, bad, audience=pb.Audience(target_lists=["lists/people"]))
    client.launch(campaign.name)
    channels = _wait_channels(client, campaign.name, {"good": pb.Channel.COMPLETED, "bad": pb.Channel.FAILED})
    assert channels["bad"].error.code == "PLUGIN_ERROR"
    message = channels["bad"].error.message
    assert "told to crash" not in message
    error_id = message.rsplit("error_id ", 1)[1]
    [logged] = [e for e in daemon.log_events() if e.get("error_id") == error_id]
    assert "told to crash" in logged["exception"]
    report = client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name))
    by_channel = {c.channel_id: c.progress for c in report.channels}
    assert by_channel["good"].sent == 30
    assert daemon.proc is not None
    assert daemon.proc.poll() is None


def test_a_plugin_that_hangs_fails_its_channel_after_the_timeout(
    running: tuple[DaemonProcess, Client],
) -> None:
    """A send that never finishes fails its channel once `sending_timeout` has passed."""
    daemon, client = running
    _people(daemon, 5)
    hung = pb.Channel(channel_id="hung", type="test-email", content=content(text="hi", crash="hang"))
    campaign = client.create(hung, audience=pb.Audience(target_lists=["lists/people"]))
    client.launch(campaign.name)
    channels = _wait_channels(client, campaign.name, {"hung": pb.Channel.FAILED}, seconds=30)
    assert "within" in channels["hung"].error.message


@pytest.mark.slow
def test_transport_config_problems_stop_the_start_with_their_key_paths(
    daemon_factory: DaemonFactory, tmp_path: pathlib.Path
) -> None:
    """A transport of an unknown type, unknown options and a missing secret: exit 2, every problem named."""
    config = (
        TEST_CHANNELS
        + '[transports.relay]\ntype = "email"\noptions = { host = "127.0.0.1", colour = "blue", '
        + 'password = { env = "NO_SUCH_VARIABLE_SET" } }\n'
        + '[transports.other]\ntype = "fax"\n'
        + '[transports.double]\ntype = "test-email"\n'
        + "[channel_types.nothing]\nx = 1\n"
    )
    daemon = daemon_factory(config).start(wait=False)
    assert daemon.wait(30) == 2
    log = daemon.log_text()
    for expected in (
        "transports.relay.options.colour: unknown key",
        "transports.relay.options.password.env: environment variable NO_SUCH_VARIABLE_SET is not set",
        "transports.other.type: no loaded plugin declares channel type 'fax'",
        "transports.double.type: channel type 'test-email' uses no transports",
        "channel_types.nothing: no loaded plugin declares channel type 'nothing'",
    ):
        assert expected in log
    path = tmp_path / "check.toml"
    path.write_text(config, encoding="utf-8")
    check = subprocess.run(
        [sys.executable, "-m", "campaignd.daemon", "check-config", str(path)], capture_output=True, text=True
    )
    assert check.returncode == 2
    assert "transports.relay.options.colour" in check.stderr


def test_a_channel_naming_an_unknown_transport_is_refused(running: tuple[DaemonProcess, Client]) -> None:
    """Transport shares must name configured transports of the channel's type."""
    _, client = running
    channel = pb.Channel(
        channel_id="m",
        type="email",
        content=content(subject="s", from_address="a@example.org", text="t"),
        transports=[pb.TransportShare(transport="nowhere", percent=100)],
    )
    with pytest.raises(grpc.RpcError) as caught:
        client.create(channel)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no transport 'nowhere'" in (caught.value.details() or "")


def _people(daemon: DaemonProcess, count: int) -> None:
    with daemon.channel() as channel:
        rows = [cs.ContactRow(email=f"p{i}@example.org") for i in range(count)]
        import_contacts(cs_grpc.ContactServiceStub(channel), "people", rows)


def _wait_channels(
    client: Client, name: str, expected: dict[str, int], seconds: float = 60
) -> dict[str, pb.Channel]:
    deadline = time.monotonic() + seconds
    while True:
        channels = {c.channel_id: c for c in client.get(name).channels}
        if all(channels[k].state == v for k, v in expected.items()):
            return channels
        if time.monotonic() > deadline:
            raise AssertionError(f"channels did not reach {expected}: {channels}")
        time.sleep(0.1)


def test_a_test_send_of_an_incomplete_channel_or_to_a_bad_address_is_refused(
    running: tuple[DaemonProcess, Client],
) -> None:
    """SendTestMessage checks the channel as a launch would, and each address for the type's kind."""
    _, client = running
    refused = pb.Channel(channel_id="main", type="test-email", content=content(text="invalid"))
    campaign = client.create(refused, audience=pb.Audience(target_lists=["lists/people"]))
    with pytest.raises(grpc.RpcError) as incomplete:
        client.stub.SendTestMessage(
            svc.SendTestMessageRequest(name=campaign.name, channel_id="main", addresses=["a@example.org"])
        )
    found = failure(incomplete.value)
    assert (found.code, found.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CHANNEL_INCOMPLETE")
    assert found.fields == ["campaign.channels[main].content.text"]
    good = client.create(pb.Channel(channel_id="main", type="test-sms", content=content(text="hi")))
    with pytest.raises(grpc.RpcError) as bad_address:
        client.stub.SendTestMessage(
            svc.SendTestMessageRequest(name=good.name, channel_id="main", addresses=["+14155550100", "nope"])
        )
    found = failure(bad_address.value)
    assert found.code == grpc.StatusCode.INVALID_ARGUMENT
    assert found.fields == ["addresses[1]"]
