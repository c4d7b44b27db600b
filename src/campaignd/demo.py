"""`make demo`: a real email campaign on the embedded default, end to end.

It starts a local SMTP server (aiosmtpd) that keeps what it receives, starts campaignd on SQLite
with that server as its only email transport, imports 10,000 sample contacts with campaignctl,
launches a personalised email campaign, shows its live progress, pauses it (and shows that no
message arrives after Pause returned), resumes it, prints the report and one message as received.
"""

from __future__ import annotations

import csv
import email
import email.policy
import os
import pathlib
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import campaign_service_pb2_grpc as svc_grpc
from campaignd.v1 import resources_pb2 as pb

DEMO_DIR = pathlib.Path(".demo")
CONTACTS = 10_000
RATE = 1000  # messages per second, so that the run is long enough to watch and to pause
FIRST_NAMES = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Linus"]
CITIES = ["Lisbon", "Oslo", "Tallinn", "Quito", "Osaka", "Accra", "Leeds", "Brno"]


class Inbox:
    """The SMTP server's handler: counts messages and keeps the last one."""

    def __init__(self) -> None:
        self.received = 0
        self.last = b""
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        with self.lock:
            self.received += 1
            self.last = envelope.content
        return "250 OK"


def _start_smtp(inbox: Inbox) -> tuple[Any, int]:
    from aiosmtpd.controller import Controller

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    return controller, port


def _wait_serving(address: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"campaignd exited with status {proc.returncode}")
        try:
            with grpc.insecure_channel(address) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"campaignd did not become healthy within {timeout:.0f}s")


def _write_contacts(path: pathlib.Path) -> None:
    rng = random.Random(7)
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["email", "first_name", "city"])
        for i in range(CONTACTS):
            writer.writerow([f"reader{i:05d}@example.org", rng.choice(FIRST_NAMES), rng.choice(CITIES)])


def _config(path: pathlib.Path, runtime: pathlib.Path, smtp_port: int) -> None:
    state = DEMO_DIR.resolve() / "state"
    path.write_text(
        f"""[daemon]
state_directory = "{state}"
runtime_directory = "{runtime}"

[log]
level = "warning"

[transports.local-sink]
type = "email"
concurrency = 10
options = {{ host = "127.0.0.1", port = {smtp_port}, security = "none" }}

[channel_types.email]
unsubscribe_url = "https://news.example.org/unsubscribe?m={{message}}&t={{token}}"
unsubscribe_secret = {{ env = "CAMPAIGND_DEMO_UNSUBSCRIBE_SECRET" }}
message_id_domain = "news.example.org"
""",
        encoding="utf-8",
    )


class Demo:
    """One run of the demo."""

    def __init__(self, runtime: pathlib.Path, config: pathlib.Path) -> None:
        self.config = config
        self.address = f"unix:{runtime / 'campaignd.sock'}"
        self.ctl = [str(pathlib.Path(sys.executable).with_name("campaignctl")), "--config", str(config)]

    def run_ctl(self, *args: str, check: bool = True) -> int:
        print(f"\n$ campaignctl {' '.join(args)}", flush=True)
        code = subprocess.call([*self.ctl, *args])
        if check and code != 0:
            raise SystemExit(f"campaignctl {args[0]} failed with status {code}")
        return code

    def report(self, name: str) -> pb.CampaignReport:
        with grpc.insecure_channel(self.address) as channel:
            stub = svc_grpc.CampaignServiceStub(channel)
            return stub.GetCampaignReport(svc.GetCampaignReportRequest(name=name), timeout=10)


def main() -> int:
    """Run the demo; returns the exit status."""
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    DEMO_DIR.mkdir()
    runtime = pathlib.Path(tempfile.mkdtemp(prefix="campaignd-demo-"))
    inbox = Inbox()
    controller, smtp_port = _start_smtp(inbox)
    config = DEMO_DIR / "config.toml"
    _config(config, runtime, smtp_port)
    contacts = DEMO_DIR / "contacts.csv"
    _write_contacts(contacts)
    env = dict(os.environ, CAMPAIGND_DEMO_UNSUBSCRIBE_SECRET=secrets.token_hex(16))
    print(f"== local SMTP server (aiosmtpd) on 127.0.0.1:{smtp_port}", flush=True)
    print(f"== starting campaignd: SQLite in {DEMO_DIR / 'state'}, config {config}", flush=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "campaignd.daemon", "serve", "--config", str(config)], env=env
    )
    demo = Demo(runtime, config)
    try:
        _wait_serving(demo.address, proc)
        demo.run_ctl("channels")
        demo.run_ctl("lists", "create", "readers", "--display-name", "Newsletter readers")
        demo.run_ctl("contacts", "import", str(contacts), "--list", "readers")
        demo.run_ctl(
            "create",
            "--id",
            "welcome",
            "--display-name",
            "Welcome letter",
            "--target-list",
            "readers",
            "--channel",
            f'{{"type": "email", "channelId": "mail", "rateLimit": {RATE}}}',
            "--content",
            "subject=Hello {{ contact.first_name }}, news from {{ contact.city }}",
            "--content",
            "from_address=news@example.org",
            "--content",
            "from_name=The Example News",
            "--content",
            "text=Dear {{ contact.first_name }},\n\n"
            "This week in {{ contact.city }}: nothing but good news.\n\n"
            "Unsubscribe: {{ unsubscribe_url }}\n",
            "--content",
            "html=<p>Dear <b>{{ contact.first_name }}</b>,</p><p>This week in {{ contact.city }}: "
            'nothing but good news.</p><p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>',
        )
        demo.run_ctl("estimate", "welcome")
        demo.run_ctl("launch", "welcome", "--accepted-by", "demo@example.org", "--terms-version", "2026-01")
        print("\n$ campaignctl watch welcome   (in the background)", flush=True)
        watcher = subprocess.Popen([*demo.ctl, "watch", "welcome"])
        while demo.report("campaigns/welcome").totals.sent < CONTACTS * 0.4:
            time.sleep(0.05)
        demo.run_ctl("pause", "welcome", "--reason", "checking the first replies")
        at_pause = inbox.received
        time.sleep(2)
        print(
            f"\n== paused: {at_pause} messages had arrived when Pause returned, "
            f"{inbox.received} two seconds later",
            flush=True,
        )
        demo.run_ctl("resume", "welcome")
        code = watcher.wait(300)
        print(f"\n== the SMTP server received {inbox.received} messages; the last one, as received:\n")
        _show(inbox.last)
        demo.run_ctl("history", "welcome")
        return code
    finally:
        print("\n== stopping campaignd (SIGTERM)", flush=True)
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(60)
        print(f"== campaignd exited with status {status}")
        controller.stop()
        shutil.rmtree(runtime, ignore_errors=True)


def _show(data: bytes) -> None:
    message = email.message_from_bytes(data, policy=email.policy.default)
    for header in ("From", "To", "Subject", "Message-ID", "List-Unsubscribe", "List-Unsubscribe-Post"):
        print(f"   {header}: {message[header]}")
    body = message.get_body(preferencelist=("plain",))
    if body is not None:
        for line in str(body.get_content()).splitlines():
            print(f"   | {line}")


if __name__ == "__main__":
    sys.exit(main())
