"""The per-state message counters of each channel (the `channel_counts` table).

Every change of a message's state moves its channel's counters in the same transaction, so
progress, the guard and completion never count the messages table.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from campaignd.store.schema import channel_counts, channels
from campaignd.store.sql import insert_for


def add_counts(conn: Connection, campaign_id: str, channel_id: str, deltas: Mapping[str, int]) -> None:
    """Move the channel's per-state counters by `deltas`."""
    rows = [
        {"campaign_id": campaign_id, "channel_id": channel_id, "state": state, "n": n}
        for state, n in sorted(deltas.items())
        if n
    ]
    if not rows:
        return
    statement = _add_statement(conn.dialect.name)
    for row in rows:
        conn.execute(statement, row)


@functools.cache
def _add_statement(dialect: str) -> sa.Insert:
    """Built once per dialect: every lease and every result moves counters."""
    statement = insert_for(dialect, channel_counts)
    return statement.on_conflict_do_update(
        index_elements=["campaign_id", "channel_id", "state"],
        set_={"n": channel_counts.c.n + statement.excluded.n},
    )


def read_counts(conn: Connection, campaign_id: str) -> dict[tuple[str, str], int]:
    """Messages per (channel id, state) of a campaign, from the counters."""
    rows = conn.execute(
        sa.select(channel_counts.c.channel_id, channel_counts.c.state, channel_counts.c.n).where(
            channel_counts.c.campaign_id == campaign_id, channel_counts.c.n != 0
        )
    )
    return {(r.channel_id, r.state): int(r.n) for r in rows}


def unfinished(conn: Connection, campaign_id: str, channel_id: str) -> int:
    """Messages of a channel that still need the engine: queued, sending or retrying."""
    total = conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(channel_counts.c.n), 0)).where(
            channel_counts.c.campaign_id == campaign_id,
            channel_counts.c.channel_id == channel_id,
            channel_counts.c.state.in_(["queued", "sending", "retrying"]),
        )
    ).scalar_one()
    return int(total)


def queue_depths(conn: Connection) -> dict[str, int]:
    """Messages waiting (queued or retrying) in running channels, per channel type."""
    rows = conn.execute(
        sa.select(channels.c.type, sa.func.sum(channel_counts.c.n))
        .join(
            channels,
            sa.and_(
                channels.c.campaign_id == channel_counts.c.campaign_id,
                channels.c.channel_id == channel_counts.c.channel_id,
            ),
        )
        .where(channels.c.state == "running", channel_counts.c.state.in_(["queued", "retrying"]))
        .group_by(channels.c.type)
    )
    return {r[0]: int(r[1] or 0) for r in rows}
