"""Lease-path benchmark: what the send-time checks and the start marks cost per batch.

    .venv/bin/python bench/lease.py [--messages N] [--suppressions S] [--batch 200]
                                    [--backend sqlite|postgresql|both]

For each backend it builds a migrated database (SQLite in a temporary directory; PostgreSQL a
fresh database on $CAMPAIGND_TEST_PG_URL, dropped afterwards) holding N contacts, one channel's
N QUEUED messages to them, and S suppressions (half for every channel type, half for the type),
one in a hundred of which name a message's address; one contact in a hundred is deleted; the
recipients are spread over five time zones. It times `queued_zones`, the read of the distinct
time zones of the waiting messages that a channel with a send window makes every 5 s or more.
Then it leases the whole channel in batches of `--batch` through the engine's own queries and
reports, per batch, the time of:

- `lease` (QUEUED → SENDING, including the send-time opt-out check, which moves suppressed and
  deleted recipients to OPTED_OUT in the same transaction);
- the opt-out check alone (`_opt_out` on an already leased batch, in a transaction rolled back);
- `mark_started` for the whole batch in one write (an upper bound on the marks: the engine
  writes them in a few groups per batch, shared by every batch in flight);
- `record` of the batch's results (every message SENT with a provider id), which also frees the
  next batch for the next lease.

Then, with every message SENT, it times the engine's pass that counts SENT messages without a
receipt as ASSUMED_DELIVERED (`assume_delivered`, the channel's type taken as one with receipts,
nothing yet old enough): what each pass costs while a large campaign waits for its receipts.

The ratio "opt-out / lease" is the share of the lease transaction that the check costs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import pathlib
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from campaignd.store import messages as store
from campaignd.store import migrate
from campaignd.store.db import create_engine
from campaignd.store.schema import campaigns, channel_counts, channels, contacts, messages, suppressions

PG_URL_ENV = "CAMPAIGND_TEST_PG_URL"
ZONES = ("Europe/Paris", "America/New_York", "Asia/Tokyo", "Australia/Sydney", None)
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextmanager
def database(backend: str) -> Iterator[str]:
    """A URL of an empty database, removed afterwards."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="campaignd-lease-") as directory:
            yield f"sqlite:///{pathlib.Path(directory) / 'bench.db'}"
        return
    admin_url = os.environ.get(PG_URL_ENV, DEFAULT_PG_URL).replace(
        "postgresql://", "postgresql+psycopg://", 1
    )
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"campaignd_lease_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def fill(engine: sa.Engine, n: int, s: int) -> None:
    """N contacts and their QUEUED messages on one channel, S suppressions, 1 % contacts deleted."""
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        conn.execute(
            campaigns.insert().values(
                id="bench",
                display_name="b",
                labels={},
                audience={},
                time_zone="UTC",
                guard={},
                archived=False,
                state="running",
                version=1,
                create_time=now,
                update_time=now,
            )
        )
        conn.execute(
            channels.insert().values(
                campaign_id="bench",
                channel_id="main",
                position=0,
                type="test-email",
                state="running",
                content={},
                transports=[],
                rate_limit=0.0,
                state_time=now,
            )
        )
        step = 10_000
        for start in range(0, n, step):
            rows = range(start, min(n, start + step))
            conn.execute(
                contacts.insert(),
                [
                    {
                        "id": i + 1,
                        "contact_id": f"c{i}",
                        "email": f"user{i}@example.org",
                        "attributes": {},
                        "create_time": now,
                        "update_time": now,
                    }
                    for i in rows
                ],
            )
            conn.execute(
                messages.insert(),
                [
                    {
                        "campaign_id": "bench",
                        "channel_id": "main",
                        "contact": i + 1,
                        "address": f"user{i}@example.org",
                        # Recipients spread over a few zones, as a send window's zones check sees them.
                        "time_zone": ZONES[i % len(ZONES)],
                        "state": "queued",
                        "attempts": 0,
                        "create_time": now,
                        "update_time": now,
                    }
                    for i in rows
                ],
            )
        conn.execute(
            channel_counts.insert().values(campaign_id="bench", channel_id="main", state="queued", n=n)
        )
        # One suppression in a hundred names a recipient; the rest are other addresses.
        conn.execute(
            suppressions.insert(),
            [
                {
                    "address": f"user{i * n // s}@example.org" if i % 100 == 0 else f"other{i}@example.org",
                    "channel_type": "" if i % 2 else "test-email",
                    "reason": "unsubscribed",
                    "source": "bench",
                    "create_time": now,
                }
                for i in range(s)
            ],
        )
        conn.execute(contacts.delete().where(contacts.c.id % 100 == 50))
    if engine.dialect.name == "postgresql":
        # As autovacuum would soon after a launch: plans without statistics are not the daemon's.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")


def run(backend: str, n: int, s: int, batch: int) -> None:
    with database(backend) as url:
        engine = create_engine(url)
        migrate.upgrade(engine)
        started = time.perf_counter()
        fill(engine, n, s)
        print(
            f"[{backend}] {n:,} messages, {s:,} suppressions written in {time.perf_counter() - started:.1f} s"
        )
        zone_reads = []
        for _ in range(5):
            with engine.connect() as conn:
                t0 = time.perf_counter()
                store.queued_zones(conn, "bench", "main")
                zone_reads.append(time.perf_counter() - t0)
        leases, checks, marks, records = [], [], [], []
        opted = 0
        # As the engine leases: each lease starts above the last one's messages (store.LeaseCursor).
        # The code of an older commit, run through PYTHONPATH, may have no cursor.
        cursor: dict[str, Any] = {"cursor": store.LeaseCursor()} if hasattr(store, "LeaseCursor") else {}
        while True:
            now = dt.datetime.now(dt.UTC)
            with engine.begin() as conn:
                t0 = time.perf_counter()
                leased = store.lease(
                    conn,
                    campaign_id="bench",
                    channel_id="main",
                    owner="bench",
                    limit=batch,
                    now=now,
                    expiry=now + dt.timedelta(minutes=10),
                    channel_type="test-email",
                    **cursor,
                )
                leases.append(time.perf_counter() - t0)
            if not leased:
                break
            with engine.begin() as conn:
                t0 = time.perf_counter()
                store._opt_out(conn, "bench", "main", "test-email", leased, now)
                checks.append(time.perf_counter() - t0)
                conn.rollback()
            with engine.begin() as conn:
                t0 = time.perf_counter()
                store.mark_started(conn, owner="bench", ids=[m.id for m in leased])
                marks.append(time.perf_counter() - t0)
            results = [store.Outcome(m.id, "sent", provider_id=f"bench-{m.id}") for m in leased]
            with engine.begin() as conn:
                t0 = time.perf_counter()
                store.record(conn, "bench", "main", "bench", results, now)
                records.append(time.perf_counter() - t0)
        sweeps = []
        for _ in range(5):
            with engine.begin() as conn:
                t0 = time.perf_counter()
                now = dt.datetime.now(dt.UTC)
                store.assume_delivered(conn, now - dt.timedelta(hours=1), ["test-email"], now)
                sweeps.append(time.perf_counter() - t0)
        with engine.connect() as conn:
            opted = int(
                conn.execute(sa.select(sa.func.count()).where(messages.c.state == "opted_out")).scalar_one()
            )
        engine.dispose()

    def ms(values: list[float]) -> str:
        p95 = sorted(values)[int(len(values) * 0.95)]
        return f"median {1000 * statistics.median(values):.2f} ms, p95 {1000 * p95:.2f} ms"

    share = statistics.median(checks) / statistics.median(leases)
    print(f"[{backend}] the time zones of {n:,} waiting messages (a send window's check): {ms(zone_reads)}")
    print(f"[{backend}] {len(leases) - 1} leases of {batch}: {ms(leases)} (opt-out check included)")
    tenth = max(1, (len(leases) - 1) // 10)
    print(
        f"[{backend}] leases as the channel drains: the first tenth {ms(leases[:tenth])}, "
        f"the last tenth {ms(leases[-1 - tenth : -1])}"
    )
    print(f"[{backend}] opt-out check alone: {ms(checks)}; {share:.0%} of a lease")
    print(f"[{backend}] mark_started of a whole batch: {ms(marks)}")
    print(f"[{backend}] record of a whole batch: {ms(records)}")
    print(f"[{backend}] opted out at lease time: {opted:,}")
    sent = n - opted
    print(f"[{backend}] a receipts sweep over {sent:,} SENT messages awaiting receipts: {ms(sweeps)}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--suppressions", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    for backend in ("sqlite", "postgresql") if args.backend == "both" else (args.backend,):
        run(backend, args.messages, args.suppressions, args.batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
