"""PostgreSQL advisory locks, held until the transaction ends, that serialise daemons sharing one
database. On SQLite every writer already holds the database lock (BEGIN IMMEDIATE), so these take
nothing there."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

# Any number takes the lock; it only has to be the same in every campaignd process.
_MIGRATION_LOCK = 0x63616D70


def migration_lock(conn: Connection) -> None:
    """Wait for, then hold, the lock under which one daemon at a time migrates the schema."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")


def slot_lock(conn: Connection, channel_type: str) -> None:
    """Wait for, then hold, the lock under which one daemon at a time counts and takes the slots of
    `channel_type`, so that the count stays exact until the transaction ends."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:t))"), {"t": f"slot:{channel_type}"})
