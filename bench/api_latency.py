"""API latency benchmark: unary calls idle and while a campaign sends at full speed.

    .venv/bin/python bench/api_latency.py [--recipients N] [--seconds S] [--rounds R]
                                          [--backend sqlite|postgresql] [--no-front]
                                          [--profile DIR [--gil]]

In one run:
1. starts `smtp-sink` on a free loopback port and the real daemon (one email transport to the
   sink, as in `email_throughput.py`), imports N contacts and creates an email campaign to them;
2. the baseline: a bare `grpc.aio` server in a process of its own, on a Unix socket like the
   daemon's, answering CampaignService.GetCampaign with a fixed message (the daemon's own
   answer for that campaign, so both send the same bytes), with no interceptor, no database and
   nothing else on its event loop;
3. idle: the same client drives GetCampaign on the bare server and on the daemon, with 1 and
   with 20 concurrent callers (`--seconds` each, 3 by default, after a second of warm-up), alternating between
   the two servers so that both see the same load on the machine;
4. sending: launches the campaign and, once it sends, repeats step 3 while it sends to the sink
   (the bare server runs throughout, so it shares the machine with the sending daemon too);
   the campaign's messages sent per second during each measurement are printed, and a
   measurement made after the last message was sent is refused.

The client is a process of its own (`grpc.aio`, one channel, the callers as tasks), so its CPU
is not in the measured process. It prints calls/s, p50 and p99 of each measurement, leading with
the ratios daemon / bare server, and the CPU model and load average of the machine. A server's
CPU is that of its process and of its children (the daemon's API front process, its workers).
The daemon serves its API from its front process (`[grpc] front_process`, the default); with
--no-front, from its own API thread.
With --profile DIR, py-spy records the daemon during the measurements, idle and while it sends
(with --gil, only the thread holding the GIL, by thread).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import pathlib
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import grpc
from grpc import aio

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from audience import Daemon, Profiler, database, machine
from email_throughput import configure, import_contacts, personalised_campaign, smtp_sink

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import campaign_service_pb2_grpc as svc_grpc
from campaignd.v1 import resources_pb2 as pb

CAMPAIGN = "campaigns/bench"
WARM_UP = 1.0


# -- the bare server and the client (each run as a process of its own) ---------------------------


async def serve_bare(socket_path: str, message: pb.Campaign) -> None:
    """A bare grpc.aio server answering GetCampaign with `message`."""

    async def get_campaign(request: svc.GetCampaignRequest, context: Any) -> pb.Campaign:
        return message

    # What the generated add_CampaignServiceServicer_to_server registers, for this one method.
    service = "campaignd.v1.CampaignService"
    handlers = {
        "GetCampaign": grpc.unary_unary_rpc_method_handler(
            get_campaign,
            request_deserializer=svc.GetCampaignRequest.FromString,
            response_serializer=pb.Campaign.SerializeToString,
        )
    }
    server: Any = aio.server()  # typed without add_registered_method_handlers, which it has
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)
    server.add_insecure_port(f"unix:{socket_path}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0)


async def drive(target: str, name: str, callers: int, seconds: float) -> dict[str, Any]:
    """`callers` tasks calling GetCampaign back to back on one channel; the latencies of the
    calls started within `seconds` after a warm-up."""
    latencies: list[float] = []
    errors = 0
    async with aio.insecure_channel(target) as channel:
        stub = svc_grpc.CampaignServiceStub(channel)
        request = svc.GetCampaignRequest(name=name)
        await stub.GetCampaign(request, timeout=30)
        start = time.perf_counter() + WARM_UP
        end = start + seconds
        cpu_before = time.process_time()

        async def caller() -> None:
            nonlocal errors
            while True:
                began = time.perf_counter()
                if began >= end:
                    return
                try:
                    await stub.GetCampaign(request, timeout=30)
                except grpc.RpcError:
                    errors += 1
                    continue
                if began >= start:
                    latencies.append(time.perf_counter() - began)

        await asyncio.gather(*(caller() for _ in range(callers)))
        cpu = (time.process_time() - cpu_before) / (WARM_UP + seconds)
    latencies.sort()
    return {
        "calls": len(latencies),
        "rate": len(latencies) / seconds,
        "p50": _percentile(latencies, 0.50),
        "p99": _percentile(latencies, 0.99),
        "max": latencies[-1] if latencies else 0.0,
        "errors": errors,
        "client_cpu": cpu,
    }


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the run -------------------------------------------------------------------------------------


@dataclasses.dataclass
class Measured:
    phase: str
    server: str
    callers: int
    rate: float
    p50: float
    p99: float
    max: float
    errors: int
    load: float
    sending: float = 0.0  # messages per second the campaign sent meanwhile
    server_cpu: float = 0.0  # the measured server process's CPU, in cores
    client_cpu: float = 0.0  # the client process's

    @property
    def cpu_per_call(self) -> float:
        """CPU seconds the server process spent per call: steadier than rates on a loaded machine
        (while sending, the daemon's includes the sending)."""
        return self.server_cpu / self.rate if self.rate else 0.0


def load_average() -> float:
    return os.getloadavg()[0]


def cpu_seconds(pid: int) -> float:
    """CPU seconds of the process and of its children (a daemon's API front, its workers)."""
    total = 0.0
    for stat in [pathlib.Path(f"/proc/{pid}/stat"), *_children(pid)]:
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _children(pid: int) -> list[pathlib.Path]:
    found = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(stat)
        except (OSError, ValueError, IndexError):
            continue
    return found


def run_client(target: str, callers: int, seconds: float) -> dict[str, Any]:
    """The client process's summary of one measurement."""
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "drive",
            "--target",
            target,
            "--callers",
            str(callers),
            "--seconds",
            str(seconds),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    summary: dict[str, Any] = json.loads(out)
    return summary


@contextlib.contextmanager
def bare_server(workdir: pathlib.Path, message: pb.Campaign) -> Iterator[tuple[str, int]]:
    """The baseline server process: (its target, its pid)."""
    message_file = workdir / "campaign.bin"
    message_file.write_bytes(message.SerializeToString())
    socket_path = pathlib.Path(tempfile.mkdtemp(prefix="bare-", dir="/tmp")) / "bare.sock"
    proc = subprocess.Popen(
        [sys.executable, __file__, "bare", "--socket", str(socket_path), "--message", str(message_file)]
    )
    target = f"unix:{socket_path}"
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                with grpc.insecure_channel(target) as channel:
                    svc_grpc.CampaignServiceStub(channel).GetCampaign(
                        svc.GetCampaignRequest(name=CAMPAIGN), timeout=1
                    )
                break
            except grpc.RpcError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the bare server did not start") from None
                time.sleep(0.1)
        yield target, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)
        socket_path.unlink(missing_ok=True)
        socket_path.parent.rmdir()


async def serve_delayed(port: int, upstream: tuple[str, int], delay: float) -> None:
    """Forward connections on `port` to `upstream`, each byte held `delay` seconds each way: a
    database server one round trip of 2 x `delay` away (loopback has none to speak of)."""

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if not data:
                    writer.close()
                    return
                writer.write(data)

        delivering = asyncio.create_task(deliver())
        while True:
            data = await reader.read(65536)
            queue.put_nowait((time.monotonic() + delay, data))
            if not data:
                break
        await delivering

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*upstream)
        with contextlib.suppress(OSError):
            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    server = await asyncio.start_server(accept, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


@contextlib.contextmanager
def delayed(url: str, delay_ms: float) -> Iterator[str]:
    """`url` (PostgreSQL) reached through serve_delayed with a round trip of `delay_ms` more."""
    if not delay_ms:
        yield url
        return
    import sqlalchemy as sa

    parsed = sa.engine.make_url(url)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    upstream = f"{parsed.host or '127.0.0.1'}:{parsed.port or 5432}"
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "delay",
            "--port",
            str(port),
            "--upstream",
            upstream,
            "--ms",
            str(delay_ms / 2),
        ]
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the delaying proxy did not start")
            time.sleep(0.05)
        proxied = parsed.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
        print(f"database round trip through the proxy: p50 {round_trip(proxied) * 1e3:.2f} ms", flush=True)
        yield proxied
    finally:
        proc.terminate()
        proc.wait(10)


def round_trip(url: str) -> float:
    """The median time of a one-row query at `url` (the timer granularity of the proxy's event
    loop, 1 ms, adds to its delay)."""
    import psycopg

    times = []
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(50):
            started = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            times.append(time.perf_counter() - started)
    return statistics.median(times)


class CampaignFinishedError(Exception):
    """The campaign finished before a measurement made while it sends did."""


class Progress:
    """Messages the campaign has finished, read from its report."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.stub = svc_grpc.CampaignServiceStub(channel)

    def done(self) -> tuple[int, pb.Campaign.State.ValueType]:
        # GetCampaign's answer has no counts; a report that skips nothing is the cheapest that has.
        report = self.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=CAMPAIGN), timeout=60)
        totals = report.totals
        return totals.sent + totals.delivered + totals.failed, report.state


def measure(
    phase: str,
    servers: dict[str, tuple[str, int]],
    callers: int,
    seconds: float,
    progress: Progress | None,
    total: int,
) -> list[Measured]:
    """One measurement per server, bare first, with `callers` callers; CampaignFinishedError (and the
    measurements of the others left out too) when the campaign ended during one."""
    results = []
    for server, (target, pid) in servers.items():
        before = progress.done() if progress else (0, 0)
        sent_at = time.perf_counter()
        cpu_before = cpu_seconds(pid)
        summary = run_client(target, callers, seconds)
        cpu = (cpu_seconds(pid) - cpu_before) / (WARM_UP + seconds)
        rate = 0.0
        if progress is not None:
            after = progress.done()
            rate = (after[0] - before[0]) / (time.perf_counter() - sent_at)
            if after[0] >= total or after[1] != pb.Campaign.RUNNING:
                raise CampaignFinishedError(
                    f"the campaign stopped sending during a measurement ({after[0]:,} of {total:,} "
                    "done), which is left out: run with more --recipients or fewer --seconds"
                )
        m = Measured(
            phase,
            server,
            callers,
            summary["rate"],
            summary["p50"],
            summary["p99"],
            summary["max"],
            summary["errors"],
            load_average(),
            rate,
            cpu,
            summary["client_cpu"],
        )
        print(
            f"   {phase:7} {server:6} {callers:2} callers: {m.rate:7,.0f} calls/s  "
            f"p50 {m.p50 * 1e3:6.2f} ms  p99 {m.p99 * 1e3:6.2f} ms  max {m.max * 1e3:6.1f} ms  "
            f"CPU server {m.server_cpu:.2f} ({m.cpu_per_call * 1e6:4.0f} us/call) client {m.client_cpu:.2f}  "
            f"load {m.load:.1f}" + (f"  campaign {rate:,.0f} msg/s" if progress else ""),
            flush=True,
        )
        results.append(m)
    return results


def create_campaign(channel: grpc.Channel) -> pb.Campaign:
    stub = svc_grpc.CampaignServiceStub(channel)
    campaign = personalised_campaign("latency")
    campaign.labels["bench"] = "api-latency"
    stub.CreateCampaign(svc.CreateCampaignRequest(campaign_id="bench", campaign=campaign), timeout=30)
    return stub.GetCampaign(svc.GetCampaignRequest(name=CAMPAIGN), timeout=30)


def launch(channel: grpc.Channel, progress: Progress) -> None:
    """Launch the campaign and wait until it sends."""
    stub = svc_grpc.CampaignServiceStub(channel)
    attestation = pb.ConsentAttestation(accepted_by="bench@example.org", terms_version="1")
    stub.LaunchCampaign(svc.LaunchCampaignRequest(name=CAMPAIGN, attestation=attestation), timeout=600)
    deadline = time.monotonic() + 60
    while progress.done()[0] < 1000:
        if time.monotonic() > deadline:
            raise RuntimeError("the campaign did not start sending within 60 s")
        time.sleep(0.2)


def summary(results: list[Measured], seconds: float) -> str:
    def find(phase: str, server: str, callers: int) -> list[Measured]:
        return [m for m in results if (m.phase, m.server, m.callers) == (phase, server, callers)]

    servers = [s for s in dict.fromkeys(m.server for m in results) if s != "bare"]
    lines = ["", "== ratios to the bare grpc.aio server (calls/s; same client, same run)"]
    for server in servers:
        for phase in ("idle", "sending"):
            for callers in (1, 20):
                bare, measured = find(phase, "bare", callers), find(phase, server, callers)
                if not bare or not measured:
                    continue
                ratios = [d.rate / b.rate for b, d in zip(bare, measured, strict=True) if b.rate]
                lines.append(
                    f"   {server:8} {phase:7} {callers:2} callers: ratio {statistics.median(ratios):.2f} "
                    f"({', '.join(f'{r:.2f}' for r in ratios)}); p99 "
                    f"{', '.join(f'{d.p99 * 1e3:.1f}' for d in measured)} ms, bare "
                    f"{', '.join(f'{b.p99 * 1e3:.1f}' for b in bare)} ms"
                )
                if phase == "idle":
                    lines.append(
                        f"   {'':8} {'':7} {'':2}          CPU per call: "
                        f"{statistics.median(d.cpu_per_call for d in measured) * 1e6:.0f} us, bare "
                        f"{statistics.median(b.cpu_per_call for b in bare) * 1e6:.0f} us (medians)"
                    )
        sending = find("sending", server, 1)
        if sending:
            lines.append(
                f"   {server:8} targets: ratio >= 0.7 (20 callers); p99 with one caller while sending "
                f"< 10 ms: worst {max(m.p99 for m in sending) * 1e3:.1f} ms"
            )
    lines.append(
        f"   baseline: a bare grpc.aio server (one process, no interceptor, fixed answer) on a Unix "
        f"socket, measured alternately with the others, {seconds:g} s per measurement"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("BENCH_UNSUBSCRIBE_SECRET", "bench-unsubscribe-secret-0123456789")
    print(f"machine: {machine()}", flush=True)
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    results: list[Measured] = []
    with (
        smtp_sink() as port,
        database(args.backend, keep=False) as direct,
        delayed(direct, args.pg_delay) as url,
        tempfile.TemporaryDirectory(prefix="bench-") as tmp,
    ):
        workdir = pathlib.Path(tmp)
        daemon = Daemon(workdir, url)
        configure(daemon, url, port, 20)
        if args.no_front:
            with daemon.config_path.open("a", encoding="utf-8") as config:
                config.write("[grpc]\nfront_process = false\n")
        daemon.start()
        node = None
        try:
            if args.api_node:
                node = api_node(workdir, url, port)
            with grpc.insecure_channel(daemon.address) as channel:
                imported = import_contacts(channel, args.recipients)
                print(f"imported {args.recipients:,} contacts in {imported:.1f} s", flush=True)
                message = create_campaign(channel)
                progress = Progress(channel)
                with bare_server(workdir, message) as bare:
                    servers = {"bare": bare, "daemon": (daemon.address, daemon.pid)}
                    if node is not None:
                        servers["api-node"] = (node.address, node.pid)
                    profiler = Profiler(args.profile, daemon.pid, gil=args.gil)
                    if args.profile:
                        args.profile.mkdir(parents=True, exist_ok=True)
                    with profiler.during("idle"):
                        for _ in range(args.rounds if args.phase != "sending" else 0):
                            for callers in (1, 20):
                                results += measure(
                                    "idle", servers, callers, args.seconds, None, args.recipients
                                )
                    if args.phase == "idle":
                        return report(results, args.seconds)
                    launch(channel, progress)
                    with profiler.during("sending"):
                        try:
                            for _ in range(args.rounds):
                                for callers in (1, 20):
                                    results += measure(
                                        "sending", servers, callers, args.seconds, progress, args.recipients
                                    )
                        except CampaignFinishedError as exc:
                            print(f"   {exc}", flush=True)
        finally:
            if node is not None:
                node.stop()
            daemon.stop()
    return report(results, args.seconds)


def api_node(workdir: pathlib.Path, url: str, port: int) -> Daemon:
    """A second cluster member on the same PostgreSQL database with `[engine] enabled = false`:
    the API served by a process of its own, the sending left to the other member (Pause and Stop
    reach it through the cluster's barrier)."""
    (workdir / "api-node").mkdir()
    node = Daemon(workdir / "api-node", url)
    configure(node, url, port, 20)
    node.config_path.write_text(
        node.config_path.read_text(encoding="utf-8").replace("[engine]\n", "[engine]\nenabled = false\n"),
        encoding="utf-8",
    )
    node.start()
    return node


def report(results: list[Measured], seconds: float) -> int:
    print(summary(results, seconds), flush=True)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode")
    bare = sub.add_parser("bare", help="(internal) serve the baseline")
    bare.add_argument("--socket", required=True)
    bare.add_argument("--message", required=True)
    proxy = sub.add_parser("delay", help="(internal) the delaying proxy")
    proxy.add_argument("--port", type=int, required=True)
    proxy.add_argument("--upstream", required=True)
    proxy.add_argument("--ms", type=float, required=True)
    client = sub.add_parser("drive", help="(internal) the client")
    client.add_argument("--target", required=True)
    client.add_argument("--callers", type=int, required=True)
    client.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each measurement")
    parser.add_argument("--rounds", type=int, default=1, help="measurements per server, callers and phase")
    parser.add_argument("--phase", choices=["idle", "sending", "both"], default="both")
    parser.add_argument(
        "--api-node",
        action="store_true",
        help="also measure an API-only cluster member beside the sending one (PostgreSQL only)",
    )
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument(
        "--no-front",
        action="store_true",
        help="the daemon serves its API from its own thread (`[grpc] front_process = false`)",
    )
    parser.add_argument(
        "--pg-delay",
        type=float,
        default=0.0,
        metavar="MS",
        help="with --backend postgresql: the daemons reach it through a proxy adding MS to each round trip",
    )
    parser.add_argument("--profile", type=pathlib.Path, help="py-spy the daemon, idle and while it sends")
    parser.add_argument(
        "--gil", action="store_true", help="with --profile: sample only the thread holding the GIL"
    )
    args = parser.parse_args()
    if args.pg_delay and args.backend != "postgresql":
        parser.error("--pg-delay needs --backend postgresql")
    if args.api_node and args.backend != "postgresql":
        parser.error("--api-node needs --backend postgresql: one daemon may use an SQLite database")
    if args.mode == "bare":
        asyncio.run(serve_bare(args.socket, pb.Campaign.FromString(pathlib.Path(args.message).read_bytes())))
        return 0
    if args.mode == "delay":
        host, _, port = args.upstream.rpartition(":")
        asyncio.run(serve_delayed(args.port, (host, int(port)), args.ms / 1e3))
        return 0
    if args.mode == "drive":
        print(json.dumps(asyncio.run(drive(args.target, CAMPAIGN, args.callers, args.seconds))))
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
