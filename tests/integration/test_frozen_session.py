"""A daemon frozen in the middle of a transaction (SIGSTOP, a VM pause) keeps its row locks
until PostgreSQL ends its session; the daemon's sessions ask for that after a heartbeat lease,
so the other members are not held for as long as it stays frozen."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from campaignd.store.db import create_engine, storage_fault

pytestmark = pytest.mark.postgres


@pytest.fixture
def url(pg_url: str) -> str:
    """A database with one row to lock."""
    url = pg_url.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE members (id int PRIMARY KEY, beat int NOT NULL)"))
        conn.execute(sa.text("INSERT INTO members VALUES (1, 0)"))
    engine.dispose()
    return url


def _freeze_in_a_transaction(engine: sa.Engine) -> sa.Connection:
    """A connection that updated the row in a transaction and then stopped doing anything."""
    conn = engine.connect()
    conn.begin()
    conn.execute(sa.text("UPDATE members SET beat = beat + 1 WHERE id = 1"))
    return conn


def _update_waiting_at_most(engine: sa.Engine, seconds: float) -> float:
    """How long another session waited to update the same row."""
    began = time.monotonic()
    with engine.begin() as conn:
        conn.execute(sa.text(f"SET LOCAL lock_timeout = '{seconds}s'"))
        conn.execute(sa.text("UPDATE members SET beat = 100 WHERE id = 1"))
    return time.monotonic() - began


def test_a_session_frozen_in_a_transaction_lets_go_of_its_locks_after_the_lease(url: str) -> None:
    frozen_engine, other = create_engine(url, idle_in_transaction=1.0), create_engine(url)
    frozen = _freeze_in_a_transaction(frozen_engine)
    try:
        waited = _update_waiting_at_most(other, 10.0)
        assert 0.8 < waited < 5.0
        # Woken, the frozen session finds itself ended, a storage fault that waiting cures, and
        # its update gone.
        with pytest.raises(sa.exc.DBAPIError) as ended:
            frozen.execute(sa.text("SELECT 1"))
        assert storage_fault(ended.value) == "the database connection was lost"
        with other.connect() as conn:
            assert conn.execute(sa.text("SELECT beat FROM members")).scalar_one() == 100
    finally:
        frozen.invalidate()
        frozen.close()
        frozen_engine.dispose()
        other.dispose()


def test_without_the_timeout_a_frozen_session_holds_the_others(url: str) -> None:
    """The failure the timeout prevents: the other session waits until it gives up."""
    frozen_engine, other = create_engine(url), create_engine(url)
    frozen = _freeze_in_a_transaction(frozen_engine)
    try:
        with pytest.raises(sa.exc.OperationalError, match="lock timeout"):
            _update_waiting_at_most(other, 2.0)
    finally:
        frozen.close()
        frozen_engine.dispose()
        other.dispose()
