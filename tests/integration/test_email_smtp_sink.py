"""Email campaigns against Postfix's smtp-sink: a C SMTP server, accepting or refusing on command."""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import resources_pb2 as pb
from tests.integration.campaign_client import Client
from tests.integration.conftest import DaemonFactory
from tests.integration.email_campaigns import (
    ENV,
    FAST,
    UNSUBSCRIBE,
    email_channel,
    import_people,
    readers,
)

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"


@pytest.fixture
def smtp_sink() -> Iterator[Callable[..., tuple[int, pathlib.Path]]]:
    """Start smtp-sink with extra flags; returns its port and the directory it dumps messages to."""
    if not pathlib.Path(SMTP_SINK).exists():
        pytest.skip("smtp-sink is not installed (Debian package postfix)")
    procs: list[subprocess.Popen[bytes]] = []
    dumps: list[pathlib.Path] = []

    def start(*flags: str) -> tuple[int, pathlib.Path]:
        # smtp-sink drops to `nobody` when started as root, so the dump directory must be
        # reachable by anyone, which pytest's private tmp_path is not.
        dump = pathlib.Path(tempfile.mkdtemp(prefix="smtp-sink-", dir="/tmp"))
        dump.chmod(0o777)
        dumps.append(dump)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        args = [SMTP_SINK, *user, "-d", f"{dump}/%Y%m%d%H%M%S.", *flags, f"127.0.0.1:{port}", "256"]
        procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                return port, dump
            time.sleep(0.05)
        raise AssertionError("smtp-sink did not start")

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)
    for dump in dumps:
        shutil.rmtree(dump, ignore_errors=True)


def _sink_transport(port: int) -> str:
    options = f'host = "127.0.0.1", port = {port}, security = "none"'
    return f'[transports.sink]\ntype = "email"\nconcurrency = 8\noptions = {{ {options} }}\n'


@pytest.mark.slow
def test_smtp_sink_receives_every_message_once(
    daemon_factory: DaemonFactory, smtp_sink: Callable[..., tuple[int, pathlib.Path]]
) -> None:
    """2,000 personalised messages through smtp-sink: every recipient once, all recorded SENT."""
    port, dump = smtp_sink()
    daemon = daemon_factory(FAST + UNSUBSCRIBE + _sink_transport(port), env=ENV).start()
    import_people(daemon, readers(2000))
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = client.create(email_channel(), audience=pb.Audience(target_lists=["lists/readers"]))
        client.launch(campaign.name)
        assert client.finished(campaign.name).state == pb.Campaign.COMPLETED
        report = client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name))
    assert report.totals.sent == 2000
    recipients = []
    for path in dump.iterdir():
        text = path.read_text(errors="replace")
        recipients += [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("To:")]
    assert len(recipients) == 2000
    assert set(recipients) == {f"reader{i:05d}@example.org" for i in range(2000)}


def test_smtp_sink_soft_and_hard_rejections(
    daemon_factory: DaemonFactory, smtp_sink: Callable[..., tuple[int, pathlib.Path]]
) -> None:
    """4xx on RCPT: retried, then FAILED as retries_exhausted; 5xx on DATA: FAILED with the reply."""
    soft, _ = smtp_sink("-r", "rcpt")
    hard, _ = smtp_sink("-f", "data")
    engine = FAST.replace("[engine]\n", "[engine]\nmax_attempts = 2\nguard_min_sends = 1000\n")
    transports = _sink_transport(soft).replace("sink", "soft") + _sink_transport(hard).replace("sink", "hard")
    daemon = daemon_factory(engine + UNSUBSCRIBE + transports, env=ENV).start()
    import_people(daemon, readers(20))
    with daemon.channel() as channel:
        client = Client(channel)
        audience = pb.Audience(target_lists=["lists/readers"])
        deferred = client.create(email_channel({"soft": 100}), audience=audience)
        rejected = client.create(email_channel({"hard": 100}), audience=audience)
        client.launch(deferred.name)
        client.launch(rejected.name)
        client.finished(deferred.name)
        client.finished(rejected.name)
        soft_report = client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=deferred.name))
        hard_messages = client.stub.ListMessages(svc.ListMessagesRequest(parent=rejected.name))
    assert soft_report.totals.failed == 20
    assert dict(soft_report.totals.failed_by_reason) == {"retries_exhausted": 20}
    assert {m.attempts for m in client_messages(hard_messages)} == {1}
    assert {m.reason for m in client_messages(hard_messages)} == {"rejected"}
    assert all(m.last_error.startswith("500") for m in client_messages(hard_messages))


def client_messages(reply: svc.ListMessagesResponse) -> list[pb.Message]:
    return list(reply.messages)
