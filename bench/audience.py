"""Audience benchmark (SPEC §10): import N contacts, launch a two-channel campaign, watch the RSS.

    .venv/bin/python bench/audience.py [--contacts N] [--backend sqlite|postgresql|both]
                                       [--no-small] [--profile DIR] [--json FILE] [--keep]

For each backend it starts the real daemon (`python -m campaignd.daemon serve --config …`, state in
a temporary directory; for PostgreSQL a fresh database on $CAMPAIGND_TEST_PG_URL, default
postgresql://postgres@127.0.0.1:5432/postgres, dropped afterwards), then over the gRPC API:

1. creates a list and imports N deterministic contacts through ImportContacts (1000 rows per
   stream message, ImportOptions.list = that list): email user{i}@example.org; a valid US phone
   for 90 % (10 % have none, 5 % share the phone of the contact before them); attributes
   {plan, score, country}; a time zone for half of them;
2. creates the segment `attributes.plan = "pro" AND attributes.score >= 50`;
3. adds N/100 suppressions with AddSuppressions, 10,000 per call (half emails for every channel,
   half phones for test-sms);
4. creates a campaign with a test-email and a test-sms channel targeting the list and excluding
   the segment; times EstimateRecipients, then LaunchCampaign (resolution + message rows: the
   §10 "< 20 s" figure);
5. checks that GetCampaignReport's queued counts equal the estimate and the counts computed
   here from the generator, and that ListMessages returns rows (its first page and the next are
   timed).

A thread reads the daemon's VmRSS from /proc every 100 ms; the peak of each phase is reported.
Each backend runs at N/10 first (unless --no-small) and then at N, to show whether the RSS is
flat in the number of contacts. With --profile DIR, py-spy (pip install py-spy) records the
daemon during the import and the launch into DIR (collapsed stacks, plus a summary printed here);
sampling slows the daemon, so profile in a separate run from the one whose times you report.

The launch line also gives the CPU time the launch took in the daemon and, for PostgreSQL, in the
server processes serving it (read from /proc, so the server must run on this host), and the
machine's load average before and after: on a shared machine the CPU time moves less than the
wall time.

The daemon runs with `[engine] enabled = false` (an API-only node): LaunchCampaign resolves and
freezes the recipients exactly as with the engine on, but nothing is sent afterwards, so the checks
can count every message as QUEUED. Needs the `campaignd.testing.channels` plugin (shipped in the
package) and Linux (/proc).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime as dt
import json
import os
import pathlib
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import phonenumbers
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import campaign_service_pb2_grpc as svc_grpc
from campaignd.v1 import contact_service_pb2 as cs
from campaignd.v1 import contact_service_pb2_grpc as cs_grpc
from campaignd.v1 import resources_pb2 as pb

PG_URL_ENV = "CAMPAIGND_TEST_PG_URL"
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
ROWS_PER_MESSAGE = 1000
SUPPRESSIONS_PER_CALL = 10_000
SEGMENT_FILTER = 'attributes.plan = "pro" AND attributes.score >= 50'
COUNTRIES = ("US", "CA", "MX", "GB", "DE", "FR", "BR", "IN")
TIME_ZONES = ("America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles")
ATTESTATION = pb.ConsentAttestation(accepted_by="bench/audience.py", terms_version="bench-1")
RPC_TIMEOUT = 3600.0
BENCH_APPLICATION = "campaignd-bench"  # the benchmark's own PostgreSQL connections


# -- deterministic contacts ---------------------------------------------------------------------


def _area_codes() -> list[int]:
    """US area codes (201-989) for which every number with an exchange of 2xx-9xx is valid to
    the `phonenumbers` metadata the daemon validates with."""
    found = []
    for area in range(201, 990):
        samples = (f"+1{area}{exchange}{line:04d}" for exchange in (200, 234, 567, 999) for line in (0, 9999))
        if all(phonenumbers.is_valid_number(phonenumbers.parse(s)) for s in samples):
            found.append(area)
    return found


AREA_CODES = _area_codes()


def _mix(i: int) -> int:
    """A cheap deterministic hash of i (Knuth's multiplicative hash)."""
    return (i * 2654435761) & 0xFFFFFFFF


def phone_key(i: int) -> int | None:
    """Which generated number contact i has: None for 10 %, the previous contact's for 5 %."""
    if i % 10 == 3:
        return None
    if i % 20 == 7:
        return i - 1  # (i - 1) % 10 == 6: that contact has its own number
    return i


def phone_number(key: int) -> str:
    """The E.164 number for a phone key: +1 AAA EEE LLLL, unique per key."""
    area = AREA_CODES[key % len(AREA_CODES)]
    rest = key // len(AREA_CODES)
    exchange = 200 + (rest // 10_000) % 800
    return f"+1{area}{exchange}{rest % 10_000:04d}"


def attributes(i: int) -> tuple[str, int, str]:
    """(plan, score, country) of contact i."""
    h = _mix(i)
    return ("pro" if h % 10 < 3 else "free", (h >> 8) % 100, COUNTRIES[(h >> 16) % len(COUNTRIES)])


def excluded(i: int) -> bool:
    """Whether the segment matches contact i."""
    plan, score, _ = attributes(i)
    return plan == "pro" and score >= 50


def email_suppressed(i: int) -> bool:
    """0.5 %: the email address is suppressed on every channel type."""
    return i % 200 == 5


def phone_suppressed(i: int) -> bool:
    """0.5 %: the number is suppressed for test-sms (i % 200 == 105 always has its own number)."""
    return i % 200 == 105


def contact_row(i: int) -> cs.ContactRow:
    """Contact i as an import row."""
    plan, score, country = attributes(i)
    struct = struct_pb2.Struct()
    struct.update({"plan": plan, "score": score, "country": country})
    key = phone_key(i)
    return cs.ContactRow(
        email=f"user{i}@example.org",
        phone="" if key is None else phone_number(key),
        time_zone=TIME_ZONES[i % 4] if i % 2 == 0 else "",
        attributes=struct,
    )


@dataclasses.dataclass
class Expected:
    """What the audience must resolve to, computed from the generator alone."""

    contacts: int
    excluded: int
    email: tuple[int, int, int, int, int]  # targeted, excluded, suppressed, skipped, queued
    sms: tuple[int, int, int, int, int]
    suppressions: int


def expected(n: int) -> Expected:
    """The counts EstimateRecipients and LaunchCampaign must give for n contacts."""
    n_excluded = email_supp = sms_skipped = sms_supp = suppressions = 0
    phones: set[int] = set()
    for i in range(n):
        suppressions += email_suppressed(i) + (phone_suppressed(i) and phone_key(i) is not None)
        if excluded(i):
            n_excluded += 1
            continue
        if email_suppressed(i):
            email_supp += 1
        key = phone_key(i)
        if key is None:
            sms_skipped += 1
        elif phone_suppressed(key):
            sms_supp += 1
        else:
            phones.add(key)
    remaining = n - n_excluded
    return Expected(
        contacts=n,
        excluded=n_excluded,
        email=(n, n_excluded, email_supp, 0, remaining - email_supp),
        sms=(n, n_excluded, sms_supp, sms_skipped, len(phones)),
        suppressions=suppressions,
    )


def import_requests(n: int, list_name: str) -> Iterator[cs.ImportContactsRequest]:
    """The ImportContacts stream: options first, then rows, 1000 per message."""
    yield cs.ImportContactsRequest(options=cs.ImportOptions(match_on=cs.ImportOptions.EMAIL, list=list_name))
    for start in range(0, n, ROWS_PER_MESSAGE):
        yield cs.ImportContactsRequest(
            rows=[contact_row(i) for i in range(start, min(n, start + ROWS_PER_MESSAGE))]
        )


def launch_to_list(channel: grpc.Channel, n: int, campaign_id: str, sending: pb.Channel) -> None:
    """Import N contacts into a new list `bench`, and create and launch a campaign `campaign_id`
    with one channel to it."""
    contacts = cs_grpc.ContactServiceStub(channel)
    campaigns = svc_grpc.CampaignServiceStub(channel)
    contacts.CreateList(cs.CreateListRequest(list_id="bench", list=cs.ContactList(display_name="bench")))
    contacts.ImportContacts(import_requests(n, "lists/bench"), timeout=RPC_TIMEOUT)
    campaigns.CreateCampaign(
        svc.CreateCampaignRequest(
            campaign_id=campaign_id,
            campaign=pb.Campaign(
                display_name=campaign_id,
                audience=pb.Audience(target_lists=["lists/bench"]),
                channels=[sending],
            ),
        )
    )
    campaigns.LaunchCampaign(
        svc.LaunchCampaignRequest(name=f"campaigns/{campaign_id}", attestation=ATTESTATION),
        timeout=RPC_TIMEOUT,
    )


def suppression_batches(n: int) -> Iterator[list[cs.Suppression]]:
    """AddSuppressions payloads, 10,000 per call."""
    batch: list[cs.Suppression] = []
    for i in range(n):
        if email_suppressed(i):
            batch.append(
                cs.Suppression(
                    address=f"user{i}@example.org", reason=cs.Suppression.UNSUBSCRIBED, source="bench"
                )
            )
        key = phone_key(i)
        if phone_suppressed(i) and key is not None:
            batch.append(
                cs.Suppression(
                    address=phone_number(key),
                    channel_type="test-sms",
                    reason=cs.Suppression.OPTED_OUT,
                    source="bench",
                )
            )
        if len(batch) >= SUPPRESSIONS_PER_CALL:
            yield batch
            batch = []
    if batch:
        yield batch


# -- the daemon ---------------------------------------------------------------------------------


class Daemon:
    """A `campaignd serve` process with its own state and runtime directories."""

    def __init__(self, workdir: pathlib.Path, database_url: str) -> None:
        self.workdir = workdir
        # Unix socket paths are limited to 108 bytes, so the runtime directory is kept short.
        self.runtime_dir = pathlib.Path(tempfile.mkdtemp(prefix="cdb-", dir="/tmp"))
        self.socket_path = self.runtime_dir / "campaignd.sock"
        self.config_path = workdir / "config.toml"
        self.log_path = workdir / "daemon.log"
        database = f'[database]\nurl = "{database_url}"\n' if database_url else ""
        self.config_path.write_text(
            "[daemon]\n"
            f'state_directory = "{workdir / "state"}"\n'
            f'runtime_directory = "{self.runtime_dir}"\n'
            "shutdown_timeout = 10.0\n"
            '[log]\nformat = "json"\n'
            + database
            + '[plugins]\nload = ["campaignd.testing.channels"]\n'
            # An API-only node: the launch resolves and freezes exactly as with the engine on, but
            # nothing is sent afterwards, so the report still counts every message as QUEUED and
            # the launch is timed without senders competing for the two cores.
            + "[engine]\nenabled = false\n",
            encoding="utf-8",
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def address(self) -> str:
        return f"unix:{self.socket_path}"

    def start(self, timeout: float = 60.0) -> None:
        """Start the process and wait until health reports SERVING."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "campaignd.daemon", "serve", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.socket_path.exists():
                try:
                    with grpc.insecure_channel(self.address) as channel:
                        reply = health_pb2_grpc.HealthStub(channel).Check(
                            health_pb2.HealthCheckRequest(), timeout=1
                        )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"daemon not serving after {timeout}s:\n{self.log_tail()}")

    def configure(self, database_url: str, sections: str) -> None:
        """Replace the config: this daemon's directories, JSON logs at warning level, the
        database (SQLite in the state directory when `database_url` is empty), and `sections`."""
        database_section = f'[database]\nurl = "{database_url}"\n' if database_url else ""
        self.config_path.write_text(
            "[daemon]\n"
            f'state_directory = "{self.workdir / "state"}"\n'
            f'runtime_directory = "{self.runtime_dir}"\n'
            '[log]\nformat = "json"\nlevel = "warning"\n' + database_section + sections,
            encoding="utf-8",
        )

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit; removes the runtime directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)


class RssSampler(threading.Thread):
    """Reads a process's VmRSS every 100 ms and keeps the peak of each named phase."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.path = pathlib.Path(f"/proc/{pid}/status")
        self.interval = interval
        self.phase = "start"
        self.peaks: dict[str, int] = {}
        self.last: dict[str, int] = {}
        self.workers_peak_kb = 0
        self._stop_event = threading.Event()

    def _rss_kb(self, key: str = "VmRSS") -> int | None:
        try:
            for line in self.path.read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            return None
        return None

    def sample(self) -> None:
        kb = self._rss_kb()
        if kb is not None:
            phase = self.phase
            self.peaks[phase] = max(self.peaks.get(phase, 0), kb)
            self.last[phase] = kb
        # The daemon's worker processes (import normalisation) are counted apart.
        workers = 0
        for child in descendants(self.pid):
            with contextlib.suppress(OSError, ValueError, IndexError):
                status = pathlib.Path(f"/proc/{child}/status").read_text()
                workers += int(status.split("VmRSS:")[1].split()[0])
        self.workers_peak_kb = max(self.workers_peak_kb, workers)

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    @contextlib.contextmanager
    def during(self, phase: str) -> Iterator[None]:
        """Attribute the samples taken inside the block to `phase` (one sample at each end too)."""
        self.phase = phase
        self.sample()
        try:
            yield
        finally:
            self.sample()

    def high_water_kb(self) -> int:
        """The kernel's own peak RSS of the process (VmHWM)."""
        return self._rss_kb("VmHWM") or 0

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def descendants(pid: int) -> list[int]:
    """The live child processes of a process, and theirs."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        with contextlib.suppress(OSError):
            for task in pathlib.Path(f"/proc/{parent}/task").iterdir():
                with contextlib.suppress(OSError, ValueError):
                    children = [int(c) for c in (task / "children").read_text().split()]
                    found += children
                    pending += children
    return found


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU time (user + system) used so far by a process and by its live descendants."""
    tick = os.sysconf("SC_CLK_TCK")

    def own(p: int) -> float:
        try:
            fields = pathlib.Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / tick  # utime, stime

    return own(pid), sum(own(child) for child in descendants(pid))


class Profiler:
    """py-spy record attached to the daemon for one phase (raw collapsed stacks)."""

    def __init__(self, directory: pathlib.Path | None, pid: int, *, gil: bool = False) -> None:
        self.directory = directory
        self.pid = pid
        # Only the thread that holds the GIL is sampled: where the process's Python time goes.
        self.gil = gil

    @contextlib.contextmanager
    def during(self, name: str, *, idle: bool = False) -> Iterator[None]:
        if self.directory is None:
            yield
            return
        py_spy = shutil.which("py-spy") or str(pathlib.Path(sys.executable).with_name("py-spy"))
        out = self.directory / f"{name}.txt"
        args = [py_spy, "record", "--pid", str(self.pid), "--rate", "50", "--format", "raw", "-o", str(out)]
        if idle:
            args.append("--idle")
        if self.gil:
            args += ["--gil", "--threads"]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)  # let it attach
        try:
            yield
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
            if out.exists():
                print(summarise_profile(out, name), flush=True)


def summarise_profile(path: pathlib.Path, title: str, top: int = 18) -> str:
    """The functions with the most samples (inclusive and self) in a py-spy raw file."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";")]
        frames = [f for f in frames if f]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"-- profile {title}: {total} samples ({path})"]
    lines.append("   inclusive  function")
    for frame, count in inclusive.most_common(top):
        lines.append(f"   {100 * count / max(total, 1):6.1f} %  {frame}")
    lines.append("   self       function")
    for frame, count in own.most_common(top):
        lines.append(f"   {100 * count / max(total, 1):6.1f} %  {frame}")
    return "\n".join(lines)


def _frame_name(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"; keep function and file, not line.
    frame = frame.strip()
    if frame.startswith("process ") or frame.startswith("thread "):
        return ""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "src/", "lib/python3.11/"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{name} ({file})"


class Analyzer(threading.Thread):
    """Stands in for autovacuum's auto-analyze on a PostgreSQL server that runs with
    autovacuum = off (as test servers often do): ANALYZE the audience tables every 10 s."""

    def __init__(self, url: str, interval: float = 10.0) -> None:
        super().__init__(daemon=True)
        import sqlalchemy as sa

        self.engine = sa.create_engine(
            url.replace("postgresql://", "postgresql+psycopg://", 1),
            isolation_level="AUTOCOMMIT",
            connect_args={"application_name": BENCH_APPLICATION},
        )
        self.interval = interval
        self.runs = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            with self.engine.connect() as conn:
                conn.exec_driver_sql("ANALYZE contacts, list_members, suppressions, messages")
            self.runs += 1

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.engine.dispose()


class ServerCpu:
    """CPU time of the PostgreSQL server processes serving the daemon's database (read from /proc:
    the server must run on this host), which the machine's other load disturbs less than wall
    time. Nothing for SQLite, which runs inside the daemon."""

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        self.engine = (
            sa.create_engine(
                url.replace("postgresql://", "postgresql+psycopg://", 1),
                connect_args={"application_name": BENCH_APPLICATION},
            )
            if url
            else None
        )

    def snapshot(self) -> dict[int, float]:
        """CPU seconds so far of each server process serving the daemon, by pid."""
        if self.engine is None:
            return {}
        with self.engine.connect() as conn:
            pids = conn.exec_driver_sql(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name <> %(name)s",
                {"name": BENCH_APPLICATION},
            ).scalars()
            return {pid: cpu_seconds(pid)[0] for pid in pids}

    @staticmethod
    def used(before: dict[int, float], after: dict[int, float]) -> float:
        """CPU seconds used between two snapshots (processes started in between count whole)."""
        return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()


def load_average() -> float:
    """The machine's one-minute load average."""
    return float(pathlib.Path("/proc/loadavg").read_text().split()[0])


def autovacuum_on(url: str) -> bool:
    """Whether the PostgreSQL server runs autovacuum (which keeps planner statistics fresh)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as conn:
        on = str(conn.exec_driver_sql("SHOW autovacuum").scalar_one()) == "on"
    engine.dispose()
    return on


# -- databases ----------------------------------------------------------------------------------


@contextlib.contextmanager
def database(backend: str, keep: bool) -> Iterator[str]:
    """The database URL for the daemon: empty for SQLite (its state directory), or a new
    PostgreSQL database that is dropped afterwards unless `keep`."""
    if backend == "sqlite":
        yield ""
        return
    import sqlalchemy as sa

    admin_url = os.environ.get(PG_URL_ENV, DEFAULT_PG_URL).replace(
        "postgresql://", "postgresql+psycopg://", 1
    )
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"campaignd_bench_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False).replace("+psycopg", "")
    finally:
        if keep:
            print(f"   kept PostgreSQL database {name}", flush=True)
        else:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def database_size(backend: str, workdir: pathlib.Path, url: str) -> int:
    """Bytes on disk of the daemon's database."""
    if backend == "sqlite":
        return sum(p.stat().st_size for p in (workdir / "state").glob("campaignd.db*"))
    import sqlalchemy as sa

    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as conn:
        size = int(conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar_one())
    engine.dispose()
    return size


# -- one run ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    backend: str
    contacts: int
    import_s: float = 0.0
    import_rate: float = 0.0
    import_cpu_daemon_s: float = 0.0
    import_cpu_workers_s: float = 0.0
    import_cpu_client_s: float = 0.0
    created: int = 0
    rejected: int = 0
    suppress_s: float = 0.0
    estimate_s: float = 0.0
    launch_s: float = 0.0
    launch_cpu_daemon_s: float = 0.0
    launch_cpu_server_s: float = 0.0
    estimate_cpu_server_s: float = 0.0
    launch_load: tuple[float, float] = (0.0, 0.0)
    report_s: float = 0.0
    list_messages_s: float = 0.0
    list_messages_next_s: float = 0.0
    frozen: int = 0
    frozen_by_channel: dict[str, int] = dataclasses.field(default_factory=dict)
    checks_ok: bool = False
    problems: list[str] = dataclasses.field(default_factory=list)
    rss_peak_mb: dict[str, float] = dataclasses.field(default_factory=dict)
    rss_end_mb: dict[str, float] = dataclasses.field(default_factory=dict)
    rss_hwm_mb: float = 0.0
    workers_rss_peak_mb: float = 0.0
    analyzed: bool = False
    database_mb: float = 0.0


def _counts(message: Any) -> tuple[int, int, int, int, int]:
    return (message.targeted, message.excluded, message.suppressed, message.skipped, message.queued)


def run_one(
    backend: str, n: int, profile_dir: pathlib.Path | None, keep: bool = False, analyze: str = "auto"
) -> Result:
    result = Result(backend, n)
    want = expected(n)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix=f"campaignd-bench-{backend}-"))
    print(f"\n== {backend}, {n:,} contacts (work directory {workdir})", flush=True)
    try:
        with database(backend, keep) as url:
            analyzer = None
            if backend == "postgresql" and (
                analyze == "always" or (analyze == "auto" and not autovacuum_on(url))
            ):
                print("   autovacuum is off: the benchmark runs ANALYZE every 10 s in its place", flush=True)
                analyzer = Analyzer(url)
                analyzer.start()
            result.analyzed = analyzer is not None
            daemon = Daemon(workdir, url)
            daemon.start()
            sampler = RssSampler(daemon.pid)
            sampler.start()
            profiler = Profiler(profile_dir / f"{backend}-{n}" if profile_dir else None, daemon.pid)
            if profiler.directory is not None:
                profiler.directory.mkdir(parents=True, exist_ok=True)
            try:
                with sampler.during("idle"):
                    time.sleep(2.0)
                with grpc.insecure_channel(
                    daemon.address,
                    options=[
                        ("grpc.max_send_message_length", 64 << 20),
                        ("grpc.max_receive_message_length", 64 << 20),
                    ],
                ) as channel:
                    server = ServerCpu(url)
                    try:
                        _exercise(channel, sampler, profiler, server, result, want, n)
                    finally:
                        server.close()
                result.database_mb = database_size(backend, workdir, url) / 2**20
                result.rss_hwm_mb = sampler.high_water_kb() / 1024
            finally:
                sampler.stop()
                daemon.stop()
                if analyzer is not None:
                    analyzer.stop()
            result.rss_peak_mb = {k: v / 1024 for k, v in sampler.peaks.items()}
            result.rss_end_mb = {k: v / 1024 for k, v in sampler.last.items()}
            result.workers_rss_peak_mb = sampler.workers_peak_kb / 1024
            print(
                "   RSS peaks (MB): "
                + ", ".join(f"{k} {v:.0f}" for k, v in result.rss_peak_mb.items())
                + f"; VmHWM {result.rss_hwm_mb:.0f}; worker processes {result.workers_rss_peak_mb:.0f}"
                + f"; database {result.database_mb:.0f} MB",
                flush=True,
            )
    finally:
        if keep:
            print(f"   kept {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


def _exercise(
    channel: grpc.Channel,
    sampler: RssSampler,
    profiler: Profiler,
    server: ServerCpu,
    result: Result,
    want: Expected,
    n: int,
) -> None:
    contacts = cs_grpc.ContactServiceStub(channel)
    campaigns = svc_grpc.CampaignServiceStub(channel)

    contacts.CreateList(cs.CreateListRequest(list_id="bench", list=cs.ContactList(display_name="bench")))
    with sampler.during("import"), profiler.during("import"):
        daemon_before, workers_before = cpu_seconds(sampler.pid)
        client_before = time.process_time()
        started = time.perf_counter()
        reply = contacts.ImportContacts(import_requests(n, "lists/bench"), timeout=RPC_TIMEOUT)
        result.import_s = time.perf_counter() - started
        client_after = time.process_time()
        daemon_after, workers_after = cpu_seconds(sampler.pid)
    result.import_rate = n / result.import_s
    # CPU time does not depend on what else the machine runs as much as wall time does.
    result.import_cpu_daemon_s = daemon_after - daemon_before
    result.import_cpu_workers_s = workers_after - workers_before
    result.import_cpu_client_s = client_after - client_before
    result.created, result.rejected = reply.created, reply.rejected
    per_row = 1e6 / n
    print(
        f"   import: {result.import_s:.1f} s, {result.import_rate:,.0f} contacts/s "
        f"(created {reply.created:,}, updated {reply.updated:,}, rejected {reply.rejected:,}); "
        f"CPU per contact: daemon {result.import_cpu_daemon_s * per_row:.0f} µs, "
        f"its worker processes {result.import_cpu_workers_s * per_row:.0f} µs, "
        f"this client {result.import_cpu_client_s * per_row:.0f} µs",
        flush=True,
    )
    if reply.created != n or reply.rejected:
        result.problems.append(
            f"import created {reply.created} of {n}, rejected {reply.rejected}: "
            + "; ".join(f"{r.index}:{r.field}:{r.reason}" for r in reply.rejected_rows[:3])
        )

    contacts.CreateSegment(
        cs.CreateSegmentRequest(
            segment_id="pro-high", segment=cs.Segment(display_name="pro, score >= 50", filter=SEGMENT_FILTER)
        )
    )
    with sampler.during("suppress"):
        started = time.perf_counter()
        added = 0
        for batch in suppression_batches(n):
            added += contacts.AddSuppressions(
                cs.AddSuppressionsRequest(suppressions=batch), timeout=RPC_TIMEOUT
            ).added
        result.suppress_s = time.perf_counter() - started
    print(f"   suppressions: {added:,} added in {result.suppress_s:.1f} s", flush=True)
    if added != want.suppressions:
        result.problems.append(f"{added} suppressions added, expected {want.suppressions}")

    text = struct_pb2.Struct()
    text.update({"text": "Hello from the audience benchmark"})
    campaign = campaigns.CreateCampaign(
        svc.CreateCampaignRequest(
            campaign_id="bench",
            campaign=pb.Campaign(
                display_name="audience benchmark",
                audience=pb.Audience(target_lists=["lists/bench"], exclude_segments=["segments/pro-high"]),
                channels=[
                    pb.Channel(channel_id="email", type="test-email", content=text),
                    pb.Channel(channel_id="sms", type="test-sms", content=text),
                ],
            ),
        )
    )

    with sampler.during("estimate"):
        server_before = server.snapshot()
        started = time.perf_counter()
        estimate = campaigns.EstimateRecipients(
            svc.EstimateRecipientsRequest(name=campaign.name), timeout=RPC_TIMEOUT
        )
        result.estimate_s = time.perf_counter() - started
        result.estimate_cpu_server_s = server.used(server_before, server.snapshot())
    estimated = {cid: _counts(c) for cid, c in estimate.channels.items()}
    print(
        f"   estimate: {result.estimate_s:.2f} s {estimated}"
        + (f"; PostgreSQL CPU {result.estimate_cpu_server_s:.2f} s" if server.engine else ""),
        flush=True,
    )

    with sampler.during("launch"), profiler.during("launch", idle=True):
        server_before = server.snapshot()
        daemon_before = cpu_seconds(sampler.pid)[0]
        load_before = load_average()
        started = time.perf_counter()
        campaigns.LaunchCampaign(
            svc.LaunchCampaignRequest(name=campaign.name, attestation=ATTESTATION), timeout=RPC_TIMEOUT
        )
        result.launch_s = time.perf_counter() - started
        result.launch_load = (load_before, load_average())
        result.launch_cpu_daemon_s = cpu_seconds(sampler.pid)[0] - daemon_before
        result.launch_cpu_server_s = server.used(server_before, server.snapshot())
    print(
        f"   launch: {result.launch_s:.2f} s; CPU: daemon {result.launch_cpu_daemon_s:.2f} s"
        + (f", PostgreSQL {result.launch_cpu_server_s:.2f} s" if server.engine else "")
        + f"; load average {result.launch_load[0]:.2f} -> {result.launch_load[1]:.2f}",
        flush=True,
    )

    with sampler.during("report"):
        started = time.perf_counter()
        report = campaigns.GetCampaignReport(svc.GetCampaignReportRequest(name=campaign.name))
        result.report_s = time.perf_counter() - started
        started = time.perf_counter()
        page = campaigns.ListMessages(
            svc.ListMessagesRequest(parent=campaign.name, channel_id="sms", page_size=100)
        )
        result.list_messages_s = time.perf_counter() - started
        # The first page also pays for compiling its statement in the daemon; the next one does not.
        started = time.perf_counter()
        campaigns.ListMessages(
            svc.ListMessagesRequest(
                parent=campaign.name, channel_id="sms", page_size=100, page_token=page.next_page_token
            )
        )
        result.list_messages_next_s = time.perf_counter() - started

    wanted = {"email": want.email, "sms": want.sms}
    for channel_report in report.channels:
        cid = channel_report.channel_id
        queued = channel_report.progress.queued
        result.frozen_by_channel[cid] = queued
        if estimated.get(cid) != wanted[cid]:
            result.problems.append(f"{cid}: estimate {estimated.get(cid)} != expected {wanted[cid]}")
        if _counts(channel_report.audience) != wanted[cid]:
            result.problems.append(
                f"{cid}: launch counts {_counts(channel_report.audience)} != {wanted[cid]}"
            )
        if queued != wanted[cid][4] or channel_report.progress.total != queued:
            result.problems.append(
                f"{cid}: {queued} queued / {channel_report.progress.total} total, expected {wanted[cid][4]}"
            )
    result.frozen = sum(result.frozen_by_channel.values())
    if len(page.messages) != 100 or not page.next_page_token:
        result.problems.append(f"ListMessages returned {len(page.messages)} rows")
    result.checks_ok = not result.problems
    print(
        f"   report: {result.report_s:.2f} s, frozen {result.frozen_by_channel}, "
        f"ListMessages {result.list_messages_s * 1000:.0f} ms, next page "
        f"{result.list_messages_next_s * 1000:.0f} ms; checks "
        + ("OK" if result.checks_ok else "FAILED: " + "; ".join(result.problems)),
        flush=True,
    )


# -- output -------------------------------------------------------------------------------------


def table(results: list[Result]) -> str:
    head = (
        f"{'backend':<10} {'N':>9} {'import/s':>9} {'import s':>9} {'estimate s':>10} {'launch s':>9} "
        f"{'launch CPU':>10} {'load':>5} "
        f"{'frozen':>9} {'RSS MB idle':>11} {'import':>7} {'launch':>7} {'HWM':>6} {'checks':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        rss = r.rss_peak_mb
        lines.append(
            f"{r.backend:<10} {r.contacts:>9,} {r.import_rate:>9,.0f} {r.import_s:>9.1f} "
            f"{r.estimate_s:>10.2f} {r.launch_s:>9.2f} "
            f"{r.launch_cpu_daemon_s + r.launch_cpu_server_s:>10.2f} {max(r.launch_load):>5.1f} "
            f"{r.frozen:>9,} "
            f"{rss.get('idle', 0):>11.0f} {rss.get('import', 0):>7.0f} "
            f"{rss.get('launch', 0):>7.0f} {r.rss_hwm_mb:>6.0f} {'ok' if r.checks_ok else 'FAIL':>6}"
        )
    return "\n".join(lines)


def machine() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        kb = int(pathlib.Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    system = f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    return f"{os.cpu_count()} CPUs ({model}){mem}, {system}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contacts", type=int, default=1_000_000, help="N (default 1,000,000)")
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--no-small", action="store_true", help="skip the N/10 run")
    parser.add_argument("--profile", type=pathlib.Path, help="record py-spy profiles into this directory")
    parser.add_argument("--json", type=pathlib.Path, help="also write the results as JSON to this file")
    parser.add_argument(
        "--analyze",
        choices=("auto", "always", "never"),
        default="auto",
        help="PostgreSQL: run ANALYZE every 10 s in place of autovacuum (auto: when autovacuum is off)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory and PostgreSQL database, for analysis"
    )
    args = parser.parse_args()
    if args.contacts < 1000:
        parser.error("--contacts must be at least 1000")

    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    sizes = [args.contacts] if args.no_small else [args.contacts // 10, args.contacts]
    print(f"audience benchmark, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {machine()}", flush=True)
    print(f"{len(AREA_CODES)} area codes for generated numbers", flush=True)
    results: list[Result] = []
    started = time.perf_counter()
    for backend in backends:
        for n in sizes:
            results.append(run_one(backend, n, args.profile, args.keep, args.analyze))
    print(f"\ntotal {time.perf_counter() - started:.0f} s\n")
    print(table(results))
    print(
        "\nRSS peaks per phase (MB): "
        + "; ".join(
            f"{r.backend} {r.contacts:,}: " + ", ".join(f"{k} {v:.0f}" for k, v in r.rss_peak_mb.items())
            for r in results
        )
    )
    print(
        "database size (MB): "
        + "; ".join(f"{r.backend} {r.contacts:,}: {r.database_mb:.0f}" for r in results)
    )
    if args.json:
        args.json.write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=2))
    failed = [r for r in results if not r.checks_ok]
    for r in failed:
        print(f"FAILED {r.backend} {r.contacts:,}: " + "; ".join(r.problems))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
