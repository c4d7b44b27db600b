"""The Mailgun relay of docs/events.md, run as written against a real daemon."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pathlib
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import resources_pb2 as pb
from tests.integration.campaign_client import Client
from tests.integration.conftest import DaemonFactory
from tests.integration.email_campaigns import (
    ENV,
    FAST,
    Server,
    email_channel,
    email_transport,
    free_port,
    import_people,
    readers,
)

DOC = pathlib.Path(__file__).parents[2] / "docs" / "events.md"
KEY = "mailgun-signing-key"


def relay_source() -> str:
    """The doc's Python example."""
    [code] = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    return str(code)


def post(url: str, body: dict[str, object]) -> tuple[int, str]:
    """POST JSON; the status and the text answered."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")  # noqa: S310 - a local URL
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - a local URL
            return int(answer.status), answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def webhook(event: dict[str, object], key: str = KEY) -> dict[str, object]:
    """A Mailgun-style webhook body, signed with `key`."""
    timestamp, token = str(int(time.time())), "a" * 50
    signature = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    return {
        "signature": {"timestamp": timestamp, "token": token, "signature": signature},
        "event-data": event,
    }


def test_the_mailgun_relay_example_records_a_signed_webhook(
    daemon_factory: DaemonFactory, smtp: Callable[..., Server], tmp_path: pathlib.Path
) -> None:
    """The example starts, applies a signed `opened` webhook once, and refuses a forged one."""
    server = smtp()
    daemon = daemon_factory(FAST + email_transport("a", server.port), env=ENV).start()
    import_people(daemon, readers(1))
    with daemon.channel() as channel:
        client = Client(channel)
        campaign = client.create(
            email_channel({"a": 100}, unsubscribe_url="https://news.example.org/u"),
            audience=pb.Audience(target_lists=["lists/readers"]),
        )
        client.launch(campaign.name)
        assert client.finished(campaign.name).state == pb.Campaign.COMPLETED
        [message] = client.stub.ListMessages(svc.ListMessagesRequest(parent=campaign.name)).messages
    port = free_port()
    relay = tmp_path / "relay.py"
    relay.write_text(relay_source().replace("port=8090", f"port={port}"), encoding="utf-8")
    env = {**os.environ, "MAILGUN_SIGNING_KEY": KEY, "CAMPAIGND_TARGET": daemon.address}
    process = subprocess.Popen(
        [sys.executable, str(relay)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        url = f"http://127.0.0.1:{port}/mailgun"
        opened: dict[str, object] = {
            "event": "opened",
            "id": "Ase5mv",
            "message": {"headers": {"message-id": message.provider_id.strip("<>")}},
        }
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = post(url, webhook(opened))
                break
            except urllib.error.URLError:
                assert process.poll() is None, process.communicate()[0]
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert answer == (200, "APPLIED")
        assert post(url, webhook(opened)) == (200, "DUPLICATE")
        assert post(url, webhook(opened | {"id": "other"}, key="not-the-key"))[0] == 403
    finally:
        process.terminate()
        process.wait(10)
    with daemon.channel() as channel:
        report = Client(channel).stub.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name))
        assert report.totals.opens == 1
