"""On PostgreSQL, a channel's leases start above the messages taken last (store.LeaseCursor),
and still find the messages that went back to QUEUED below it."""

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
from campaignd.store.schema import messages
from tests.unit.store.rows import add_campaign

NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def _fill(conn: Connection) -> None:
    """Campaign c with one channel's 50 QUEUED messages, counted."""
    add_campaign(conn, "c", NOW)
    conn.execute(
        messages.insert(),
        [
            {
                "campaign_id": "c",
                "channel_id": "ch",
                "address": f"r{i:03d}@example.org",
                "state": "queued",
                "attempts": 0,
                "create_time": NOW,
                "update_time": NOW,
            }
            for i in range(50)
        ],
    )
    add_counts(conn, "c", "ch", {"queued": 50})


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    """A migrated PostgreSQL database with one channel of 50 QUEUED messages (SQLite removes an
    index entry when its row moves, and leases there use no cursor)."""
    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    migrate.upgrade(engine)
    with engine.begin() as conn:
        _fill(conn)
    yield engine
    engine.dispose()


def _lease(conn: Connection, cursor: message_store.LeaseCursor, limit: int) -> list[int]:
    taken = message_store.lease(
        conn,
        campaign_id="c",
        channel_id="ch",
        owner="me",
        limit=limit,
        now=NOW,
        expiry=NOW + dt.timedelta(minutes=10),
        cursor=cursor,
    )
    return [m.id for m in taken]


def test_leases_go_on_above_the_last_and_find_requeued_messages_below(engine: Engine) -> None:
    with engine.begin() as conn:
        ids = sorted(int(i) for i in conn.execute(sa.select(messages.c.id)).scalars())
        cursor = message_store.LeaseCursor()
        assert _lease(conn, cursor, 10) == ids[:10]
        assert cursor.after == ids[9]
        # Two of the first batch go back to QUEUED (a transport that failed, a lease that expired).
        conn.execute(
            messages.update()
            .where(messages.c.id.in_(ids[2:4]))
            .values(state="queued", lease_owner=None, lease_expiry=None)
        )
        add_counts(conn, "c", "ch", {"sending": -2, "queued": 2})
        # Above the cursor first, in id order.
        assert _lease(conn, cursor, 10) == ids[10:20]
        assert _lease(conn, cursor, 25) == ids[20:45]
        # Short above the cursor: the rest from the start, the requeued two included.
        assert _lease(conn, cursor, 10) == sorted(ids[2:4] + ids[45:50])
        assert cursor.after == ids[3]
        assert _lease(conn, cursor, 10) == []
        assert read_counts(conn, "c") == {("ch", "sending"): 50}


def test_a_cursor_past_every_queued_message_starts_again_from_the_first(engine: Engine) -> None:
    """After a restart puts early messages back in QUEUED, a cursor left high finds them, and the
    lease after that goes on from them rather than from the start again."""
    with engine.begin() as conn:
        ids = sorted(int(i) for i in conn.execute(sa.select(messages.c.id)).scalars())
        cursor = message_store.LeaseCursor(after=ids[-1])
        assert _lease(conn, cursor, 10) == ids[:10]
        assert cursor.after == ids[9]
        assert _lease(conn, cursor, 10) == ids[10:20]


def test_sqlite_leases_from_the_start_and_leaves_the_cursor(tmp_path: pathlib.Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'campaignd.db'}")
    migrate.upgrade(engine)
    with engine.begin() as conn:
        _fill(conn)
        ids = sorted(int(i) for i in conn.execute(sa.select(messages.c.id)).scalars())
        cursor = message_store.LeaseCursor(after=ids[-1])
        assert _lease(conn, cursor, 10) == ids[:10]
        assert cursor.after == ids[-1]
    engine.dispose()
