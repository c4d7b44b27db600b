"""Cluster scaling benchmark (SPEC §10): one daemon, then two, on one PostgreSQL, to smtp-sink.

    .venv/bin/python bench/cluster_throughput.py [--recipients N] [--connections 20] [--json FILE]

In one run, for one daemon and then for two (each time on a fresh PostgreSQL database on
$CAMPAIGND_TEST_PG_URL, default postgresql://postgres@127.0.0.1:5432/postgres):
1. starts `smtp-sink` (Debian package postfix) on a free loopback port;
2. starts the daemons, each with one email transport to the sink whose concurrency is
   `--connections` per daemon (the cluster divides a transport's concurrency among its members,
   so each daemon keeps the same number of connections in both runs);
3. imports N contacts through the first daemon (not timed), creates the personalised text+HTML
   email campaign of bench/email_throughput.py, launches it and watches it until every message
   is SENT;
4. measures, from LaunchCampaign to the last SENT: the rate; the CPU seconds of the daemon
   processes and their render workers; of the PostgreSQL backends serving the benchmark's
   database (and, as an upper bound, of every PostgreSQL process on the server, which other
   work on the machine may share); and of smtp-sink.

It prints both runs, the throughput ratio (two daemons / one), and the scaling efficiency: the
messages per daemon CPU-second of two daemons over those of one (SPEC §10 asks ≥ 0.8). On a
2-core machine the daemons, PostgreSQL and the sink share the cores, so the throughput of two
daemons cannot double; the efficiency says what a second daemon costs per message.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import pathlib
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

import grpc
import sqlalchemy as sa

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from audience import Daemon, cpu_seconds, database, machine
from email_throughput import import_contacts, personalised_campaign, smtp_sink

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import campaign_service_pb2_grpc as svc_grpc
from campaignd.v1 import resources_pb2 as pb


def configure(daemon: Daemon, database_url: str, port: int, connections: int, members: int) -> None:
    """A cluster member sending to the sink; the transport's concurrency is `connections` per member."""
    daemon.config_path.write_text(
        "[daemon]\n"
        f'state_directory = "{daemon.workdir / "state"}"\n'
        f'runtime_directory = "{daemon.runtime_dir}"\n'
        '[log]\nformat = "json"\nlevel = "warning"\n'
        f'[database]\nurl = "{database_url}"\n'
        "[engine]\nbatch_size = 500\n"
        "[transports.sink]\n"
        'type = "email"\n'
        f"concurrency = {connections * members}\n"
        f'options = {{ host = "127.0.0.1", port = {port}, security = "none" }}\n'
        "[channel_types.email]\n"
        'unsubscribe_url = "https://news.example.org/u?m={message}&t={token}"\n'
        'unsubscribe_secret = { env = "BENCH_UNSUBSCRIBE_SECRET" }\n',
        encoding="utf-8",
    )


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far; 0 once it is gone."""
    return cpu_seconds(pid)[0]


def postgres_pids() -> list[int]:
    """Every PostgreSQL server process on this machine."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "postgres":
                    found.append(int(entry.name))
    return found


class BackendWatcher(threading.Thread):
    """Keeps the CPU seconds of the PostgreSQL backends serving one database, sampled every
    200 ms, so that a backend's time is counted even if it exits before the end."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
        self.database = sa.make_url(url).database or ""
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self._done = threading.Event()

    def run(self) -> None:
        with self.engine.connect() as conn:
            own = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            while not self._done.wait(0.2):
                rows = conn.execute(
                    sa.text("SELECT pid FROM pg_stat_activity WHERE datname = :d AND pid <> :own"),
                    {"d": self.database, "own": own},
                )
                conn.rollback()
                for (pid,) in rows:
                    seconds = process_cpu(pid)
                    if seconds:
                        self.first.setdefault(pid, seconds)
                        self.last[pid] = seconds

    def begin(self) -> None:
        """From now on: the time each backend had so far is not counted."""
        self.first = dict(self.last)

    def seconds(self) -> float:
        return sum(self.last[pid] - self.first.get(pid, 0.0) for pid in self.last)

    def stop(self) -> None:
        self._done.set()
        self.join(5)
        self.engine.dispose()


@dataclasses.dataclass
class Run:
    """One measured campaign."""

    daemons: int
    recipients: int
    seconds: float
    daemon_cpu: float
    worker_cpu: float
    backend_cpu: float
    server_cpu: float
    sink_cpu: float
    load: tuple[float, float]  # 1-minute load average at the launch and at the last SENT

    @property
    def rate(self) -> float:
        return self.recipients / self.seconds

    @property
    def per_daemon_cpu_second(self) -> float:
        return self.recipients / (self.daemon_cpu + self.worker_cpu)


def launch_and_watch(daemon: Daemon, n: int) -> None:
    """Create, launch and watch the campaign until every message is SENT."""
    with grpc.insecure_channel(daemon.address) as channel:
        stub = svc_grpc.CampaignServiceStub(channel)
        campaign = personalised_campaign("cluster throughput")
        stub.CreateCampaign(svc.CreateCampaignRequest(campaign_id="bench", campaign=campaign), timeout=30)
        attestation = pb.ConsentAttestation(accepted_by="bench@example.org", terms_version="1")
        stub.LaunchCampaign(
            svc.LaunchCampaignRequest(name="campaigns/bench", attestation=attestation), timeout=600
        )
        for update in stub.WatchCampaign(svc.WatchCampaignRequest(name="campaigns/bench"), timeout=3600):
            totals = update.report.totals
            if totals.failed:
                raise RuntimeError(f"{totals.failed} messages failed: {update.report}")
            if totals.sent >= n:
                return
            if update.campaign.state in (pb.Campaign.FAILED, pb.Campaign.STOPPED, pb.Campaign.PAUSED):
                raise RuntimeError(f"campaign ended as {pb.Campaign.State.Name(update.campaign.state)}")
        raise RuntimeError("the watch ended before the campaign did")


@contextlib.contextmanager
def cluster(url: str, port: int, connections: int, members: int) -> Iterator[list[Daemon]]:
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        daemons = []
        try:
            for i in range(members):
                workdir = pathlib.Path(tmp) / f"member{i}"
                workdir.mkdir()
                daemon = Daemon(workdir, url)
                configure(daemon, url, port, connections, members)
                daemon.start()
                daemons.append(daemon)
            yield daemons
        finally:
            for daemon in daemons:
                daemon.stop()


def measure(members: int, n: int, connections: int, port: int, sink_pid: int) -> Run:
    with database("postgresql", keep=False) as url, cluster(url, port, connections, members) as daemons:
        with grpc.insecure_channel(daemons[0].address) as channel:
            imported = import_contacts(channel, n)
        print(f"[{members} daemon(s)] imported {n:,} contacts in {imported:.1f} s", flush=True)
        time.sleep(3)  # every member has joined and sees the others (heartbeat 1 s)
        backends = BackendWatcher(url)
        backends.start()
        time.sleep(0.5)
        pids = [d.pid for d in daemons]
        daemon_before = sum(process_cpu(p) for p in pids)
        workers_before = sum(cpu_seconds(p)[1] for p in pids)
        server_before = sum(process_cpu(p) for p in postgres_pids())
        sink_before = process_cpu(sink_pid)
        backends.begin()
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        launch_and_watch(daemons[0], n)
        seconds = time.perf_counter() - started
        time.sleep(0.3)  # the backend sampler's last look
        run = Run(
            members,
            n,
            seconds,
            sum(process_cpu(p) for p in pids) - daemon_before,
            sum(cpu_seconds(p)[1] for p in pids) - workers_before,
            backends.seconds(),
            sum(process_cpu(p) for p in postgres_pids()) - server_before,
            process_cpu(sink_pid) - sink_before,
            (load_before, os.getloadavg()[0]),
        )
        backends.stop()
    print(
        f"[{members} daemon(s)] {n:,} messages in {run.seconds:.1f} s: {run.rate:,.0f} msg/s; CPU s: "
        f"daemons {run.daemon_cpu:.1f} + render workers {run.worker_cpu:.1f}, "
        f"PostgreSQL backends {run.backend_cpu:.1f} (all PostgreSQL processes {run.server_cpu:.1f}), "
        f"smtp-sink {run.sink_cpu:.1f}; {run.per_daemon_cpu_second:,.0f} msg per daemon CPU-second; "
        f"load average {run.load[0]:.1f} -> {run.load[1]:.1f}",
        flush=True,
    )
    return run


def sink_pid(port: int) -> int:
    """The pid of the smtp-sink listening on `port`."""
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "smtp-sink":
                    arguments = (entry / "cmdline").read_bytes().split(b"\0")
                    if any(arg.endswith(f":{port}".encode()) for arg in arguments):
                        return int(entry.name)
    raise RuntimeError("smtp-sink's process not found")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=20, help="SMTP connections per daemon")
    parser.add_argument("--json", type=pathlib.Path, help="also write the figures to FILE")
    args = parser.parse_args()
    os.environ.setdefault("BENCH_UNSUBSCRIBE_SECRET", "bench-unsubscribe-secret-0123456789")
    print(f"machine: {machine()}", flush=True)
    with smtp_sink() as port:
        sink = sink_pid(port)
        one = measure(1, args.recipients, args.connections, port, sink)
        two = measure(2, args.recipients, args.connections, port, sink)
    efficiency = two.per_daemon_cpu_second / one.per_daemon_cpu_second
    print(
        f"two daemons vs one: throughput {two.rate / one.rate:.2f} x; scaling efficiency (messages "
        f"per daemon CPU-second, two / one) {efficiency:.2f} (target >= 0.8)",
        flush=True,
    )
    if args.json:
        figures = {
            "machine": machine(),
            "runs": [dataclasses.asdict(r) | {"rate": r.rate} for r in (one, two)],
            "throughput_ratio": two.rate / one.rate,
            "efficiency": efficiency,
        }
        args.json.write_text(json.dumps(figures, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
