"""What one lease takes, on SQLite and PostgreSQL: QUEUED before due RETRYING messages, only the
open time zones, and never a suppressed address or a deleted contact's message."""

from __future__ import annotations

import datetime as dt
import pathlib
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from campaignd.store import messages as message_store
from campaignd.store import migrate
from campaignd.store.counts import add_counts, read_counts
from campaignd.store.db import create_engine
from campaignd.store.schema import contacts, messages, suppressions
from tests.unit.store.rows import add_campaign

NOW = dt.datetime(2025, 1, 1, 12, tzinfo=dt.UTC)
ZONES = ["Europe/Paris", "Asia/Tokyo", None]


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        engine = create_engine(f"sqlite:///{tmp_path / 'campaignd.db'}")
    else:
        url = request.getfixturevalue("pg_url")
        engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    migrate.upgrade(engine)
    with engine.begin() as conn:
        _fill(conn)
    yield engine
    engine.dispose()


def _fill(conn: Connection) -> None:
    """Campaign c, channel ch: 12 QUEUED messages (zones by turns), 3 RETRYING ones (one due)."""
    add_campaign(conn, "c", NOW)
    contact_ids = []
    for i in range(15):
        row = {"contact_id": f"p{i}", "phone": f"+3361234{i:04d}", "attributes": {}}
        contact_ids.append(
            conn.execute(
                contacts.insert().values(**row, create_time=NOW, update_time=NOW).returning(contacts.c.id)
            ).scalar_one()
        )
    rows = [
        {
            "campaign_id": "c",
            "channel_id": "ch",
            "contact": contact_ids[i],
            "address": f"+3361234{i:04d}",
            "time_zone": ZONES[i % 3],
            "state": "queued" if i < 12 else "retrying",
            "attempts": 0 if i < 12 else 1,
            # the first RETRYING message is due, the other two not yet
            "next_attempt_time": None if i < 12 else NOW + dt.timedelta(minutes=(i - 12) * 5 - 1),
            "create_time": NOW,
            "update_time": NOW,
        }
        for i in range(15)
    ]
    conn.execute(messages.insert(), rows)
    add_counts(conn, "c", "ch", {"queued": 12, "retrying": 3})


def _lease(conn: Connection, limit: int, zones: list[str | None] | None = None) -> list[str]:
    taken = message_store.lease(
        conn,
        campaign_id="c",
        channel_id="ch",
        owner="me",
        limit=limit,
        now=NOW,
        expiry=NOW + dt.timedelta(minutes=10),
        zones=zones,
        channel_type="sms",
    )
    return [m.address for m in taken]


def _addresses(*numbers: int) -> list[str]:
    return [f"+3361234{i:04d}" for i in numbers]


def test_queued_first_then_the_due_retrying_ones(engine: Engine) -> None:
    with engine.begin() as conn:
        assert _lease(conn, 5) == _addresses(0, 1, 2, 3, 4)
        assert _lease(conn, 20) == _addresses(5, 6, 7, 8, 9, 10, 11, 12)
        assert _lease(conn, 20) == []
        counts = read_counts(conn, "c")
        assert counts == {("ch", "sending"): 13, ("ch", "retrying"): 2}
        leased = conn.execute(
            sa.select(messages.c.lease_owner, messages.c.lease_expiry, messages.c.update_time).where(
                messages.c.state == "sending"
            )
        ).all()
        assert {tuple(row) for row in leased} == {("me", NOW + dt.timedelta(minutes=10), NOW)}


def test_only_the_open_zones_and_no_zone_when_asked(engine: Engine) -> None:
    with engine.begin() as conn:
        assert _lease(conn, 20, ["Asia/Tokyo"]) == _addresses(1, 4, 7, 10)  # 13 is not due yet
        assert _lease(conn, 20, ["Europe/Paris", None]) == _addresses(0, 2, 3, 5, 6, 8, 9, 11, 12)
        assert _lease(conn, 20, [None]) == []


def test_suppressed_and_deleted_recipients_are_opted_out(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            suppressions.insert(),
            [
                {
                    "address": _addresses(1)[0],
                    "channel_type": "",
                    "reason": "opted_out",
                    "source": "test",
                    "create_time": NOW,
                },
                {
                    "address": _addresses(2)[0],
                    "channel_type": "sms",
                    "reason": "opted_out",
                    "source": "test",
                    "create_time": NOW,
                },
                # suppressed for another type only: still sent
                {
                    "address": _addresses(3)[0],
                    "channel_type": "email",
                    "reason": "bounced",
                    "source": "test",
                    "create_time": NOW,
                },
            ],
        )
        conn.execute(contacts.delete().where(contacts.c.contact_id == "p4"))
        assert _lease(conn, 6) == _addresses(0, 3, 5)
        opted_out = sa.select(messages.c.address, messages.c.reason).where(messages.c.state == "opted_out")
        reasons = {address: reason for address, reason in conn.execute(opted_out)}
        assert reasons == {
            _addresses(1)[0]: "suppressed",
            _addresses(2)[0]: "suppressed",
            _addresses(4)[0]: "contact_deleted",
        }
        assert read_counts(conn, "c")[("ch", "opted_out")] == 3
