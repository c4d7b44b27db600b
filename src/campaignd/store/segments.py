"""Named queries on segments (their filters are kept as text)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from campaignd.store.schema import segments


def get_segment(conn: Connection, segment_id: str) -> sa.Row[Any] | None:
    """The segment row."""
    return conn.execute(sa.select(segments).where(segments.c.id == segment_id)).one_or_none()


def insert_segment(conn: Connection, segment_id: str, display_name: str, text: str, now: dt.datetime) -> None:
    """Store a new segment."""
    conn.execute(
        segments.insert().values(id=segment_id, display_name=display_name, filter=text, create_time=now)
    )


def list_segments(conn: Connection, *, after: str, limit: int) -> list[sa.Row[Any]]:
    """Segments ordered by id after `after`."""
    return list(
        conn.execute(sa.select(segments).where(segments.c.id > after).order_by(segments.c.id).limit(limit))
    )


def delete_segment(conn: Connection, segment_id: str) -> bool:
    """Delete a segment; False when there was none."""
    return conn.execute(segments.delete().where(segments.c.id == segment_id)).rowcount == 1
