"""Named queries for events recorded against messages: finding their message, recording each
once by its id, and the engagement counts the report shows."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from campaignd.store.counts import add_counts
from campaignd.store.messages import EVENT_MOVES, moving, provider_key
from campaignd.store.schema import channels, message_events, messages
from campaignd.store.sql import dialect_insert


@dataclass(frozen=True)
class Target:
    """A message as it was found for an event."""

    id: int
    campaign_id: str
    channel_id: str
    channel_type: str
    address: str
    state: str


@dataclass
class Engagement:
    """Engagement counts of one channel."""

    opened: int = 0
    opens: int = 0
    clicked: int = 0
    clicks: int = 0
    bounced: int = 0
    complained: int = 0
    unsubscribed: int = 0
    clicks_by_link: dict[str, int] = field(default_factory=dict)


_COLUMNS = (
    messages.c.id,
    messages.c.campaign_id,
    messages.c.channel_id,
    channels.c.type,
    messages.c.address,
    messages.c.state,
)


def _select() -> sa.Select[Any]:
    return sa.select(*_COLUMNS).join(
        channels,
        sa.and_(
            channels.c.campaign_id == messages.c.campaign_id, channels.c.channel_id == messages.c.channel_id
        ),
    )


def _target(row: Any) -> Target:
    return Target(row[0], row[1], row[2], row[3], row[4], row[5])


def by_id(conn: Connection, campaign_id: str, channel_id: str, message_id: int) -> Target | None:
    """The message with this id in this campaign's channel ("" for either: any)."""
    query = _select().where(messages.c.id == message_id)
    if campaign_id:
        query = query.where(messages.c.campaign_id == campaign_id)
    if channel_id:
        query = query.where(messages.c.channel_id == channel_id)
    row = conn.execute(query).first()
    return _target(row) if row is not None else None


def by_ids(conn: Connection, message_ids: Iterable[int]) -> dict[int, Target]:
    """The messages with these ids, by id (one query for a batch of events)."""
    ids = sorted(set(message_ids))
    found: dict[int, Target] = {}
    for start in range(0, len(ids), 2000):
        for row in conn.execute(_select().where(messages.c.id.in_(ids[start : start + 2000]))):
            found[row[0]] = _target(row)
    return found


def by_provider_id(conn: Connection, provider_id: str) -> Target | None:
    """The latest message the provider knows by `provider_id`."""
    query = _select().where(messages.c.provider_id == provider_key(provider_id))
    row = conn.execute(query.order_by(messages.c.id.desc()).limit(1)).first()
    return _target(row) if row is not None else None


def by_address(conn: Connection, campaign_id: str, channel_id: str, address: str) -> Target | None:
    """The message of a campaign's channel to `address`."""
    values = {"campaign_id": campaign_id, "channel_id": channel_id, "address": address}
    row = conn.execute(_by_address_statement(), values).first()
    return _target(row) if row is not None else None


@functools.cache
def _by_address_statement() -> sa.Select[Any]:
    """A message out of QUEUED through the address index, else a QUEUED one: the index leaves
    QUEUED messages out (schema.py), so that one reads the channel's QUEUED range. One statement,
    so that a message leased meanwhile is not missed by both."""
    of_address = [
        messages.c.campaign_id == sa.bindparam("campaign_id"),
        messages.c.channel_id == sa.bindparam("channel_id"),
        messages.c.address == sa.bindparam("address"),
    ]
    # SQLite uses a partial index only for a query that repeats its condition as it is written.
    sent = _select().where(*of_address, messages.c.state != "queued").limit(1)
    queued = _select().where(*of_address, messages.c.state == "queued").limit(1)
    both = sa.union_all(sent.subquery().select(), queued.subquery().select()).subquery()
    return sa.select(*both.c).limit(1)


def recorded(conn: Connection, event_ids: Iterable[str]) -> set[str]:
    """Which of `event_ids` were recorded before."""
    ids = sorted(set(event_ids))
    found: set[str] = set()
    for start in range(0, len(ids), 2000):
        found.update(
            conn.execute(
                sa.select(message_events.c.event_id).where(
                    message_events.c.event_id.in_(ids[start : start + 2000])
                )
            ).scalars()
        )
    return found


def record(
    conn: Connection,
    event_id: str,
    target: Target,
    kind: str,
    now: dt.datetime,
    *,
    url: str = "",
    detail: str = "",
    move: bool = True,
) -> bool:
    """Store the event and apply it to its message: a receipt moves its state (as inbound events
    from transports do), an unsubscribe or complaint becomes its outcome. False, changing
    nothing, when the event id was recorded meanwhile (by a concurrent call)."""
    inserted = conn.execute(
        dialect_insert(conn, message_events)
        .values(
            event_id=event_id,
            campaign_id=target.campaign_id,
            channel_id=target.channel_id,
            message_id=target.id,
            kind=kind,
            url=url or None,
            detail=detail or None,
            create_time=now,
        )
        .on_conflict_do_nothing(index_elements=["event_id"])
    )
    if not inserted.rowcount:
        return False
    frm, to = EVENT_MOVES.get(kind, ((), ""))
    if move and target.state in frm:
        moved = conn.execute(
            messages.update()
            .where(messages.c.id == target.id, moving([target.state], to))
            .values(
                state=to,
                reason=kind if to == "failed" else None,
                last_error=detail or None,
                update_time=now,
            )
        )
        # The counters move only with a message that did move (a send may have moved it since).
        if moved.rowcount:
            add_counts(conn, target.campaign_id, target.channel_id, {target.state: -1, to: 1})
    if kind in ("complained", "unsubscribed"):
        conn.execute(
            messages.update().where(messages.c.id == target.id).values(outcome=kind, update_time=now)
        )
    return True


def engagement(conn: Connection, campaign_id: str) -> dict[str, Engagement]:
    """Engagement counts per channel id of a campaign, from its recorded events."""
    counts: dict[str, Engagement] = {}
    # A message with a hard and a soft bounce counts once in `bounced`.
    kind = sa.case((message_events.c.kind == "soft_bounced", "bounced"), else_=message_events.c.kind)
    rows = conn.execute(
        sa.select(
            message_events.c.channel_id,
            kind,
            sa.func.count(),
            sa.func.count(sa.distinct(message_events.c.message_id)),
        )
        .where(message_events.c.campaign_id == campaign_id)
        .group_by(message_events.c.channel_id, kind)
    )
    for channel_id, said, total, unique in rows:
        mine = counts.setdefault(channel_id, Engagement())
        if said == "opened":
            mine.opens, mine.opened = int(total), int(unique)
        elif said == "clicked":
            mine.clicks, mine.clicked = int(total), int(unique)
        elif said == "bounced":
            mine.bounced = int(unique)
        elif said == "complained":
            mine.complained = int(unique)
        elif said == "unsubscribed":
            mine.unsubscribed = int(unique)
    if any(c.clicks for c in counts.values()):
        links = conn.execute(
            sa.select(message_events.c.channel_id, message_events.c.url, sa.func.count())
            .where(message_events.c.campaign_id == campaign_id, message_events.c.kind == "clicked")
            .group_by(message_events.c.channel_id, message_events.c.url)
        )
        for channel_id, url, n in links:
            counts.setdefault(channel_id, Engagement()).clicks_by_link[url or ""] = int(n)
    return counts


def suppression(target: Target, kind: str, detail: str, now: dt.datetime) -> Mapping[str, Any]:
    """The suppression an event adds for its message's address."""
    return {
        "address": target.address,
        "channel_type": target.channel_type,
        "reason": kind[:16],
        "source": f"{target.channel_type} event: {detail}"[:200],
        "create_time": now,
    }
