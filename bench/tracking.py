"""Tracking benchmark: open pixels fetched from the HTTP listener by many clients at once.

    .venv/bin/python bench/tracking.py [--recipients N] [--clients 50] [--seconds 10]
                                       [--backend sqlite|postgresql]

In one run it starts the real daemon with its HTTP listener on a free loopback port and its
engine off (nothing is sent: the pixels are all that runs), imports N contacts, launches an
email campaign to them, and signs the open-pixel URL of every message as the email plugin does.
Then `--clients` concurrent HTTP clients fetch pixels of those messages for `--seconds`, and it
prints the opens per second the listener answered, their latency (p50, p99), the CPU used by
the daemon (and by the PostgreSQL server processes serving it) per open, and checks that the
report counts every open that was answered.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import socket
import sys
import tempfile
import time

import aiohttp
import grpc
from google.protobuf import struct_pb2

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from audience import Daemon, ServerCpu, cpu_seconds, database, launch_to_list, machine
from campaignd_email.web import sign

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import campaign_service_pb2_grpc as svc_grpc
from campaignd.v1 import resources_pb2 as pb

# The links' signing key, made up for the run; the daemon reads it from the environment.
SECRET_ENV = "CAMPAIGND_BENCH_TRACKING_SECRET"  # noqa: S105
SECRET = "a-tracking-benchmark-secret"  # noqa: S105
CAMPAIGN = "campaigns/tracked"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def configure(daemon: Daemon, url: str, port: int) -> None:
    daemon.configure(
        url,
        "[engine]\nenabled = false\n"
        + f'[http]\naddress = "127.0.0.1:{port}"\n'
        + f'[channel_types.email]\nunsubscribe_secret = {{ env = "{SECRET_ENV}" }}\n'
        # Never reached: the engine is off; a launch needs a transport of the type.
        + '[transports.relay]\ntype = "email"\n'
        + 'options = { host = "127.0.0.1", port = 9, security = "none" }\n',
    )


def launch(channel: grpc.Channel, n: int) -> list[int]:
    """The ids of the launched campaign's messages."""
    content = struct_pb2.Struct()
    content.update({"subject": "Hello", "from_address": "news@example.org", "text": "t", "html": "<p>h</p>"})
    launch_to_list(channel, n, "tracked", pb.Channel(channel_id="mail", type="email", content=content))
    campaigns = svc_grpc.CampaignServiceStub(channel)
    ids: list[int] = []
    token = ""
    while True:
        page = campaigns.ListMessages(
            svc.ListMessagesRequest(parent=CAMPAIGN, page_size=1000, page_token=token), timeout=60
        )
        ids += [int(m.name.rsplit("/", 1)[1]) for m in page.messages]
        token = page.next_page_token
        if not token:
            return ids


async def fetch_pixels(urls: list[str], clients: int, seconds: float) -> tuple[int, list[float]]:
    """Opens answered, and the latency of each, from `clients` concurrent fetchers."""
    latencies: list[float] = []
    counter = iter(range(1 << 62))
    deadline = time.monotonic() + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            url = urls[next(counter) % len(urls)]
            started = time.monotonic()
            async with session.get(url) as answer:
                await answer.read()
                if answer.status != 200:
                    raise RuntimeError(f"pixel answered {answer.status}")
            latencies.append(time.monotonic() - started)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    return len(latencies), sorted(latencies)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    args = parser.parse_args()
    os.environ[SECRET_ENV] = SECRET
    print(f"machine: {machine()}", flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="campaignd-tracking-") as tmp,
        database(args.backend, False) as url,
    ):
        daemon = Daemon(pathlib.Path(tmp), url)
        port = free_port()
        configure(daemon, url, port)
        daemon.start()
        server = ServerCpu(url)
        try:
            with grpc.insecure_channel(daemon.address) as channel:
                ids = launch(channel, args.recipients)
                urls = [
                    f"http://127.0.0.1:{port}/email/open/tracked/mail/{i}/"
                    f"{sign(SECRET, 'open', 'tracked', 'mail', i)}.gif"
                    for i in ids
                ]
                before, server_before = sum(cpu_seconds(daemon.pid)), server.snapshot()
                started = time.monotonic()
                opens, latencies = asyncio.run(fetch_pixels(urls, args.clients, args.seconds))
                elapsed = time.monotonic() - started
                used = sum(cpu_seconds(daemon.pid)) - before + server.used(server_before, server.snapshot())
                report = svc_grpc.CampaignServiceStub(channel).GetCampaignReport(
                    svc.GetCampaignReportRequest(name=CAMPAIGN)
                )
            who = "daemon + PostgreSQL" if url else "daemon"
            print(
                f"[{args.backend}] {args.clients} clients: {opens / elapsed:,.0f} opens/s; "
                f"p50 {1000 * latencies[len(latencies) // 2]:.1f} ms, "
                f"p99 {1000 * latencies[int(len(latencies) * 0.99)]:.1f} ms; "
                f"{who} CPU {used / elapsed:.0%} of a core, {1e6 * used / opens:.0f} us per open; "
                f"the report counts {report.totals.opens:,} of {opens:,} opens answered",
                flush=True,
            )
            if report.totals.opens != opens:
                print("   MISMATCH: the report does not count every answered open", flush=True)
                return 1
        finally:
            server.close()
            daemon.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
