"""Email throughput benchmark (SPEC §10): a personalised campaign to Postfix's smtp-sink.

    .venv/bin/python bench/email_throughput.py [--recipients N] [--backend sqlite|postgresql|both]
                                               [--connections 20] [--bare N] [--profile DIR]

In one run:
1. starts `smtp-sink` (Debian package postfix) on a free loopback port;
2. the baseline: a bare aiosmtplib loop sends `--bare` pre-built messages of about 2 KB over
   `--connections` connections to it, and its rate is measured;
3. for each backend, starts the real daemon (SQLite in a temporary state directory, or a fresh
   PostgreSQL database on $CAMPAIGND_TEST_PG_URL) with one email transport to the sink
   (`concurrency` = `--connections`), imports N contacts with first-name and city attributes
   through ImportContacts, creates an email campaign with a personalised subject, text and HTML
   part (about 2 KB as sent), launches it and polls GetCampaignReport until every message is
   SENT. The rate is N / (time of the last SENT recorded - LaunchCampaign returned);
4. prints both rates, their ratio, the launch time, the daemon's peak RSS (VmHWM), and the CPU
   time per message the daemon process and its child processes (the render workers) used from
   launch to the last SENT: on a machine shared with other work, where rates move with the
   load, the daemon process's CPU per message is the steadier figure of what the event loop
   spends.

With --profile DIR, py-spy records the daemon while it sends (collapsed stacks in DIR, a summary
printed here); sampling slows the daemon, so take the figures from a run without it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import aiosmtplib
import grpc
from google.protobuf import struct_pb2

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from audience import Daemon, Profiler, RssSampler, database, machine

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import campaign_service_pb2_grpc as svc_grpc
from campaignd.v1 import contact_service_pb2 as cs
from campaignd.v1 import contact_service_pb2_grpc as cs_grpc
from campaignd.v1 import resources_pb2 as pb

NAMES = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Linus"]
CITIES = ["Lisbon", "Oslo", "Tallinn", "Quito", "Osaka", "Accra", "Leeds", "Brno"]
PARAGRAPH = (
    "This week in {{ contact.city }} the library opens late on Thursdays, the market moves to the "
    "square by the river, and the choir looks for tenors. "
)
TEXT = (
    "Dear {{ contact.first_name }},\n\n" + (PARAGRAPH + "\n") * 4 + "\nUnsubscribe: {{ unsubscribe_url }}\n"
)
HTML = (
    "<html><body><p>Dear <b>{{ contact.first_name }}</b>,</p>"
    + f"<p>{PARAGRAPH}</p>" * 4
    + '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p></body></html>'
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def smtp_sink() -> Iterator[int]:
    """Postfix's smtp-sink on a free loopback port: accepts and discards everything."""
    binary = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if not pathlib.Path(binary).exists():
        raise SystemExit("smtp-sink not found: apt-get install postfix")
    port = free_port()
    # As root, smtp-sink must drop its privileges once the socket is open.
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    proc = subprocess.Popen([binary, *user, f"127.0.0.1:{port}", "1024"], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            break
        time.sleep(0.05)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def prebuilt_message(i: int) -> bytes:
    body = (PARAGRAPH.replace("{{ contact.city }}", "Oslo") + "\r\n") * 14
    return (
        f"From: news@example.org\r\nTo: reader{i}@example.org\r\nSubject: Hello\r\n"
        f"Message-ID: <{i}@bench.example.org>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body
    ).encode()


async def bare_loop(port: int, count: int, connections: int) -> float:
    """Messages per second of a bare aiosmtplib loop sending pre-built bytes."""
    messages = [prebuilt_message(i) for i in range(count)]
    queue = iter(range(count))

    async def worker() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, use_tls=False)
        await client.connect()
        for i in queue:
            await client.sendmail("news@example.org", [f"reader{i}@example.org"], messages[i])
        await client.quit()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return count / (time.perf_counter() - started)


def configure(daemon: Daemon, database_url: str, port: int, connections: int) -> None:
    daemon.configure(
        database_url,
        "[engine]\nbatch_size = 500\n"
        + "[transports.sink]\n"
        + 'type = "email"\n'
        + f"concurrency = {connections}\n"
        + f'options = {{ host = "127.0.0.1", port = {port}, security = "none" }}\n'
        + "[channel_types.email]\n"
        + 'unsubscribe_url = "https://news.example.org/u?m={message}&t={token}"\n'
        + 'unsubscribe_secret = { env = "BENCH_UNSUBSCRIBE_SECRET" }\n',
    )


def import_contacts(channel: grpc.Channel, n: int) -> float:
    stub = cs_grpc.ContactServiceStub(channel)
    stub.CreateList(
        cs.CreateListRequest(list_id="readers", list=cs.ContactList(display_name="readers")), timeout=30
    )

    def requests() -> Iterator[cs.ImportContactsRequest]:
        yield cs.ImportContactsRequest(options=cs.ImportOptions(list="lists/readers"))
        for start in range(0, n, 1000):
            rows = []
            for i in range(start, min(n, start + 1000)):
                attributes = struct_pb2.Struct()
                attributes.update({"first_name": NAMES[i % len(NAMES)], "city": CITIES[i % len(CITIES)]})
                rows.append(cs.ContactRow(email=f"reader{i:07d}@example.org", attributes=attributes))
            yield cs.ImportContactsRequest(rows=rows)

    started = time.perf_counter()
    stub.ImportContacts(requests(), timeout=3600)
    return time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far (0 once it is gone)."""
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The child processes of `pid` (the daemon's render workers)."""
    found = []
    with contextlib.suppress(OSError):
        for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def personalised_campaign(display_name: str) -> pb.Campaign:
    """An email campaign to lists/readers: a personalised subject, text and HTML part, ~2.4 KB sent."""
    content = struct_pb2.Struct()
    content.update(
        {
            "subject": "Hello {{ contact.first_name }}, news from {{ contact.city }}",
            "from_address": "news@example.org",
            "from_name": "The Example News",
            "text": TEXT,
            "html": HTML,
        }
    )
    return pb.Campaign(
        display_name=display_name,
        audience=pb.Audience(target_lists=["lists/readers"]),
        channels=[pb.Channel(channel_id="mail", type="email", content=content)],
    )


def run_campaign(daemon: Daemon, n: int, profiler: Profiler) -> tuple[float, float, float, float]:
    """(seconds LaunchCampaign took, messages per second from launch to the last SENT, CPU
    seconds the daemon process used meanwhile, CPU seconds its child processes used)."""
    with grpc.insecure_channel(daemon.address) as channel:
        stub = svc_grpc.CampaignServiceStub(channel)
        campaign = personalised_campaign("throughput")
        stub.CreateCampaign(svc.CreateCampaignRequest(campaign_id="bench", campaign=campaign), timeout=30)
        attestation = pb.ConsentAttestation(accepted_by="bench@example.org", terms_version="1")
        workers = children(daemon.pid)
        cpu_before = cpu_seconds(daemon.pid)
        workers_before = sum(cpu_seconds(w) for w in workers)
        with profiler.during("send"):
            started = time.perf_counter()
            cpu_before = cpu_seconds(daemon.pid)
            stub.LaunchCampaign(
                svc.LaunchCampaignRequest(name="campaigns/bench", attestation=attestation), timeout=600
            )
            launched = time.perf_counter()
            # Watch rather than poll GetCampaignReport, whose per-transport counts read every message.
            for update in stub.WatchCampaign(svc.WatchCampaignRequest(name="campaigns/bench"), timeout=3600):
                report = update.report
                done = report.totals.sent + report.totals.delivered + report.totals.failed
                if done >= n:
                    finished = time.perf_counter()
                    cpu = cpu_seconds(daemon.pid) - cpu_before
                    # Workers that replaced others since the start are not counted: there are none
                    # in this benchmark, whose templates never overrun.
                    workers_cpu = sum(cpu_seconds(w) for w in workers) - workers_before
                    break
                if report.state in (pb.Campaign.FAILED, pb.Campaign.STOPPED, pb.Campaign.PAUSED):
                    raise RuntimeError(f"campaign ended as {pb.Campaign.State.Name(report.state)}: {report}")
            else:
                raise RuntimeError("the watch ended before the campaign did")
        if report.totals.failed:
            raise RuntimeError(f"{report.totals.failed} messages failed: {report}")
    return launched - started, n / (finished - launched), cpu, workers_cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="sqlite")
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--bare", type=int, default=50_000, help="messages the bare loop sends")
    parser.add_argument("--profile", type=pathlib.Path, help="py-spy the daemon while it sends")
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    os.environ.setdefault("BENCH_UNSUBSCRIBE_SECRET", "bench-unsubscribe-secret-0123456789")
    print(f"machine: {machine()}", flush=True)
    with smtp_sink() as port:
        bare = asyncio.run(bare_loop(port, args.bare, args.connections))
        print(f"bare aiosmtplib loop, {args.connections} connections: {bare:,.0f} msg/s", flush=True)
        for backend in backends:
            with database(backend, keep=False) as url, tempfile.TemporaryDirectory(prefix="bench-") as tmp:
                daemon = Daemon(pathlib.Path(tmp), url)
                configure(daemon, url, port, args.connections)
                daemon.start()
                sampler = RssSampler(daemon.pid)
                sampler.start()
                profiler = Profiler(args.profile, daemon.pid)
                if args.profile:
                    args.profile.mkdir(parents=True, exist_ok=True)
                try:
                    with grpc.insecure_channel(daemon.address) as channel:
                        imported = import_contacts(channel, args.recipients)
                    print(
                        f"[{backend}] imported {args.recipients:,} contacts in {imported:.1f} s", flush=True
                    )
                    launch, rate, cpu, workers_cpu = run_campaign(daemon, args.recipients, profiler)
                    rss = sampler.high_water_kb() / 1024
                finally:
                    daemon.stop()
                    sampler.stop()
                print(
                    f"[{backend}] {args.recipients:,} personalised text+HTML messages: "
                    f"launch {launch:.1f} s, "
                    f"{rate:,.0f} msg/s launch -> last SENT; {rate / bare:.2f} x the bare loop; "
                    f"daemon peak RSS {rss:.0f} MB; CPU per message: daemon process "
                    f"{cpu / args.recipients * 1e6:.0f} us, its child processes (render workers) "
                    f"{workers_cpu / args.recipients * 1e6:.0f} us",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
