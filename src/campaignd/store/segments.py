"""Named queries on segments (their filters are kept as text)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from campaignd.store.schema import segments


@dataclass(frozen=True)
class SegmentRow:
    """A stored segment."""

    id: str
    display_name: str
    filter: str  # the filter's text, as the client wrote it
    create_time: dt.datetime


_SELECT = sa.select(segments.c.id, segments.c.display_name, segments.c.filter, segments.c.create_time)


def get_segment(conn: Connection, segment_id: str) -> SegmentRow | None:
    """The segment with this id."""
    row = conn.execute(_SELECT.where(segments.c.id == segment_id)).one_or_none()
    return None if row is None else SegmentRow(**row._mapping)


def insert_segment(conn: Connection, segment_id: str, display_name: str, text: str, now: dt.datetime) -> None:
    """Store a new segment."""
    conn.execute(
        segments.insert().values(id=segment_id, display_name=display_name, filter=text, create_time=now)
    )


def list_segments(conn: Connection, *, after: str, limit: int) -> list[SegmentRow]:
    """Segments ordered by id after `after`."""
    rows = conn.execute(_SELECT.where(segments.c.id > after).order_by(segments.c.id).limit(limit))
    return [SegmentRow(**r._mapping) for r in rows]


def delete_segment(conn: Connection, segment_id: str) -> bool:
    """Delete a segment; False when there was none."""
    return conn.execute(segments.delete().where(segments.c.id == segment_id)).rowcount == 1
