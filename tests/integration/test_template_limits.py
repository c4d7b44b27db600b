"""Hostile templates against the real daemon: rendering never blocks the event loop nor grows
the daemon; over a limit, previews answer INVALID_ARGUMENT and launched messages fail."""

from __future__ import annotations

import itertools
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import pytest

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import resources_pb2 as pb
from tests.hostile_templates import GIGABYTE, NESTED_LOOPS
from tests.integration.campaign_client import Client, wait_until
from tests.integration.conftest import DaemonFactory
from tests.integration.email_campaigns import (
    ENV,
    FAST,
    UNSUBSCRIBE,
    Server,
    email_channel,
    email_transport,
    import_people,
    readers,
)


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def watchdog() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd's notify socket, and its path."""
    directory = tempfile.mkdtemp(prefix="cd-notify-", dir="/tmp")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.05)
    yield sock, path
    sock.close()
    os.unlink(path)
    os.rmdir(directory)


def _preview(client: Client, name: str, address: str = "reader00001@example.org") -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        client.stub.PreviewMessage(
            svc.PreviewMessageRequest(name=name, channel_id="mail", address=address), timeout=30
        )
    return refused.value


def test_hostile_previews_are_refused_while_other_calls_and_the_watchdog_go_on(
    daemon_factory: DaemonFactory, smtp: Callable[..., Server], watchdog: tuple[socket.socket, str]
) -> None:
    """A viewer's preview of a runaway loop and of a gigabyte string answers INVALID_ARGUMENT
    within the time limit; meanwhile GetCampaign answers promptly, the watchdog pings keep coming
    and the daemon's RSS stays where it was."""
    notify, notify_path = watchdog
    server = smtp()
    env = {**ENV, "NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "200000"}
    daemon = daemon_factory(FAST + UNSUBSCRIBE + email_transport("a", server.port), env=env).start()
    import_people(daemon, readers(3))
    assert daemon.proc is not None
    with daemon.channel() as channel:
        client = Client(channel)
        loops = client.create(email_channel(subject="Hi " + NESTED_LOOPS))
        big = client.create(email_channel(text=GIGABYTE))
        rss_before = _rss_mb(daemon.proc.pid)
        pings: list[float] = []
        latencies: list[float] = []
        done = threading.Event()

        def listen() -> None:
            while not done.is_set():
                try:
                    if b"WATCHDOG=1" in notify.recv(4096):
                        pings.append(time.monotonic())
                except TimeoutError:
                    pass

        def probe() -> None:
            while not done.is_set():
                started = time.monotonic()
                client.get(loops.name)
                latencies.append(time.monotonic() - started)
                time.sleep(0.02)

        threads = [threading.Thread(target=listen), threading.Thread(target=probe)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(0.3)
            started = time.monotonic()
            slow = _preview(client, loops.name)
            slow_seconds = time.monotonic() - started
            huge = _preview(client, big.name)
            time.sleep(0.3)
        finally:
            done.set()
            for thread in threads:
                thread.join()
        rss_after = _rss_mb(daemon.proc.pid)
    assert slow.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the subject template took longer than the limit of 1 s" in (slow.details() or "")
    assert slow_seconds < 5
    assert huge.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the text template needed more memory than the limit of 256 MiB" in (huge.details() or "")
    assert len(latencies) > 20
    # The slow preview takes the full 1 s limit: a loop it blocked would show here as a second.
    assert max(latencies) < 0.75, f"GetCampaign took up to {max(latencies):.2f} s during the previews"
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert gaps, "no watchdog pings"
    assert max(gaps) < 0.75, f"the watchdog pings stopped for {max(gaps):.2f} s"
    assert rss_after - rss_before < 50, f"RSS went from {rss_before:.0f} MB to {rss_after:.0f} MB"
    assert len(server.inbox) == 0


def test_a_test_send_whose_template_overruns_sends_nothing(
    daemon_factory: DaemonFactory, smtp: Callable[..., Server]
) -> None:
    """SendTestMessage renders every address first: one runaway render answers INVALID_ARGUMENT
    naming the field, and no address gets a message."""
    server = smtp()
    config = FAST + UNSUBSCRIBE + email_transport("a", server.port) + "[templates]\ntimeout = 0.3\n"
    daemon = daemon_factory(config, env=ENV).start()
    import_people(daemon, readers(3))
    with daemon.channel() as channel:
        client = Client(channel)
        text = "{% if contact.first_name == 'Name00002' %}" + NESTED_LOOPS + "{% endif %}Hello"
        campaign = client.create(email_channel(text=text))
        with pytest.raises(grpc.RpcError) as refused:
            client.stub.SendTestMessage(
                svc.SendTestMessageRequest(
                    name=campaign.name,
                    channel_id="mail",
                    addresses=["reader00001@example.org", "reader00002@example.org"],
                ),
                timeout=30,
            )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the text template took longer than the limit of 0.3 s" in (refused.value.details() or "")
    assert len(server.inbox) == 0


def test_messages_whose_template_overruns_fail_and_the_guard_pauses_the_channel(
    daemon_factory: DaemonFactory, smtp: Callable[..., Server]
) -> None:
    """In a launched channel, recipients whose render runs past the limit end FAILED with reason
    template_error and are never sent; the others are sent; the guard then pauses the channel."""
    server = smtp()
    config = (
        FAST
        + "batch_size = 20\nbatches_in_flight = 1\nguard_min_sends = 20\n"
        + UNSUBSCRIBE
        + email_transport("a", server.port)
        + "[templates]\ntimeout = 0.3\n"
    )
    daemon = daemon_factory(config, env=ENV).start()
    rows = readers(200)
    for n, row in enumerate(rows):
        row.attributes.update({"slow": n % 5 == 0})
    import_people(daemon, rows)
    with daemon.channel() as channel:
        client = Client(channel)
        text = "{% if contact.slow %}" + NESTED_LOOPS + "{% endif %}Dear {{ contact.first_name }}"
        campaign = client.create(
            email_channel(text=text), audience=pb.Audience(target_lists=["lists/readers"])
        )
        client.launch(campaign.name)
        wait_until(lambda: client.get(campaign.name).channels[0].state == pb.Channel.PAUSED, 120, "the guard")
        last = client.history(campaign.name)[-1]
        report = client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name))
        failed = client.stub.ListMessages(
            svc.ListMessagesRequest(parent=campaign.name, states=[pb.Message.FAILED], page_size=1000)
        ).messages
    assert (last.operation, last.cause) == ("guard_pause", pb.CampaignEvent.GUARD)
    assert "failure rate" in last.reason
    assert report.totals.failed > 0
    assert dict(report.totals.failed_by_reason) == {"template_error": report.totals.failed}
    assert all("took longer than the limit of 0.3 s" in m.last_error for m in failed)
    slow = {f"reader{n:05d}@example.org" for n in range(0, 200, 5)}
    assert {m.address for m in failed} <= slow
    received = {str(m["To"]) for m in server.inbox.parsed()}
    assert received
    assert not received & slow
    assert report.totals.sent == len(received)
