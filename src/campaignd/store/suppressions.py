"""Named queries on suppressions: the addresses not to contact, on one channel type or on every one."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from campaignd.store.schema import suppressions
from campaignd.store.sql import insert_ignore


@dataclass(frozen=True)
class SuppressionRow:
    """A stored suppression."""

    id: int
    address: str
    channel_type: str  # "" for every channel type
    reason: str
    source: str
    create_time: dt.datetime


_SELECT = sa.select(
    suppressions.c.id,
    suppressions.c.address,
    suppressions.c.channel_type,
    suppressions.c.reason,
    suppressions.c.source,
    suppressions.c.create_time,
)


def add_suppressions(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> int:
    """Add suppressions, leaving existing (address, channel type) pairs alone; returns how many were new."""
    pairs = [(r["address"], r["channel_type"]) for r in rows]
    already = 0
    for start in range(0, len(pairs), 2000):
        chunk = pairs[start : start + 2000]
        already += int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(suppressions)
                .where(sa.tuple_(suppressions.c.address, suppressions.c.channel_type).in_(chunk))
            ).scalar_one()
        )
    insert_ignore(conn, suppressions, rows)
    return len(pairs) - already


def opt_out(conn: Connection, row: Mapping[str, Any]) -> int:
    """Turn the suppression of the row's address on its channel type, if there is one for
    another reason, into the row's opt-out; returns how many changed (0 or 1). A new opt-out is
    added with `add_suppressions`."""
    return conn.execute(
        suppressions.update()
        .where(
            suppressions.c.address == row["address"],
            suppressions.c.channel_type == row["channel_type"],
            suppressions.c.reason != "opted_out",
        )
        .values(reason="opted_out", source=row["source"])
    ).rowcount


def remove_opt_out(conn: Connection, address: str, channel_type: str) -> int:
    """Remove the opt-out suppression of `address` on `channel_type` (an opt-in reply); other
    suppressions (a bounce, a manual one) stay. Returns how many were removed."""
    return conn.execute(
        suppressions.delete().where(
            suppressions.c.address == address,
            suppressions.c.channel_type == channel_type,
            suppressions.c.reason == "opted_out",
        )
    ).rowcount


def remove_suppression(conn: Connection, suppression_id: int) -> bool:
    """Remove one suppression; False when there was none."""
    return conn.execute(suppressions.delete().where(suppressions.c.id == suppression_id)).rowcount == 1


def list_suppressions(
    conn: Connection, *, address: str, channel_type: str | None, reason: str, before: int | None, limit: int
) -> list[SuppressionRow]:
    """Suppressions newest first, before row id `before`, with the given filters."""
    query = _SELECT
    if address:
        query = query.where(suppressions.c.address == address)
    if channel_type is not None:
        query = query.where(suppressions.c.channel_type == channel_type)
    if reason:
        query = query.where(suppressions.c.reason == reason)
    if before is not None:
        query = query.where(suppressions.c.id < before)
    rows = conn.execute(query.order_by(suppressions.c.id.desc()).limit(limit))
    return [SuppressionRow(**r._mapping) for r in rows]


def suppressions_for(conn: Connection, address: str, channel_type: str) -> list[SuppressionRow]:
    """The suppressions that keep `address` from being contacted on `channel_type`."""
    rows = conn.execute(
        _SELECT.where(
            suppressions.c.address == address, suppressions.c.channel_type.in_(["", channel_type])
        ).order_by(suppressions.c.id)
    )
    return [SuppressionRow(**r._mapping) for r in rows]
