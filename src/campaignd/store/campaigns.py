"""Named queries on campaigns, channels, history and request ids. Every function takes a Connection
inside a transaction that the caller (Database.read/write) opened."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from campaignd.lifecycle import CampaignState, ChannelState
from campaignd.model import (
    Attestation,
    Audience,
    CampaignRecord,
    ChannelRecord,
    Guard,
    Remarketing,
    SendWindow,
    TransportShare,
)
from campaignd.store.db import driver_row
from campaignd.store.schema import api_requests, campaign_events, campaigns, channels


@dataclass(frozen=True)
class Event:
    """One history entry."""

    sequence: int
    campaign_id: str
    channel_id: str
    operation: str
    from_state: str
    to_state: str
    actor: str
    cause: str
    reason: str
    time: dt.datetime
    request_id: str


@dataclass(frozen=True)
class CampaignFilter:
    """What ListCampaigns selects."""

    states: frozenset[CampaignState] = frozenset()
    channel_type: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    show_archived: bool = False


def _channel(row: sa.Row[Any], prefix: str = "") -> ChannelRecord:
    """The channel in `row`, whose channel columns are named `prefix` + their names."""
    m = row._mapping
    window, again = m[prefix + "send_window"], m[prefix + "remarketing"]
    return ChannelRecord(
        channel_id=m[prefix + "channel_id"],
        type=m[prefix + "type"],
        state=ChannelState(m[prefix + "state"]),
        content=m[prefix + "content"],
        transports=tuple(TransportShare.from_json(t) for t in m[prefix + "transports"]),
        rate_limit=m[prefix + "rate_limit"],
        state_time=m[prefix + "state_time"],
        schedule_time=m[prefix + "schedule_time"],
        send_window=SendWindow.from_json(window) if window is not None else None,
        error=m[prefix + "error"],
        remarketing=Remarketing.from_json(again) if again is not None else None,
        audience_counts=m[prefix + "audience_counts"],
        position=m[prefix + "position"],
        ambiguous_sends=m[prefix + "ambiguous_sends"],
    )


def _campaign(row: sa.Row[Any], channel_rows: Sequence[ChannelRecord]) -> CampaignRecord:
    return CampaignRecord(
        id=row.id,
        display_name=row.display_name,
        labels=row.labels,
        audience=Audience.from_json(row.audience),
        time_zone=row.time_zone,
        guard=Guard.from_json(row.guard),
        archived=row.archived,
        version=row.version,
        create_time=row.create_time,
        update_time=row.update_time,
        attestation=Attestation.from_json(row.attestation) if row.attestation is not None else None,
        channels=list(channel_rows),
    )


# The campaign and its channels in one query (one round trip), its channels' columns named
# "channel_" + their names. Built once: SQLAlchemy then reuses their cache keys and compiled
# forms, which building them on every call (GetCampaign, each batch's record) cost more than the
# query did.
_CHANNEL_PREFIX = "channel_"
_CAMPAIGN = (
    sa.select(campaigns, *(c.label(_CHANNEL_PREFIX + c.name) for c in channels.c if c.name != "campaign_id"))
    .select_from(campaigns.outerjoin(channels, channels.c.campaign_id == campaigns.c.id))
    .where(campaigns.c.id == sa.bindparam("id"))
    .order_by(channels.c.position)
)
# Locking takes two statements: PostgreSQL, having waited for the campaign's row lock, gives
# that row's new version but the joined rows of the statement's older snapshot, while a second
# statement reads the channels as they are once the lock is held.
_LOCK_CAMPAIGN = sa.select(campaigns).where(campaigns.c.id == sa.bindparam("id")).with_for_update()
_CHANNELS = (
    sa.select(channels).where(channels.c.campaign_id == sa.bindparam("id")).order_by(channels.c.position)
)


def get(conn: Connection, campaign_id: str, *, for_update: bool = False) -> CampaignRecord | None:
    """The campaign with its channels; with `for_update`, its row stays locked until commit."""
    # SQLite writers already hold the database lock (BEGIN IMMEDIATE).
    if for_update and conn.dialect.name == "postgresql":
        row = conn.execute(_LOCK_CAMPAIGN, {"id": campaign_id}).one_or_none()
        if row is None:
            return None
        return _campaign(row, [_channel(r) for r in conn.execute(_CHANNELS, {"id": campaign_id})])
    rows = conn.execute(_CAMPAIGN, {"id": campaign_id}).all()
    if not rows:
        return None
    prefix = _CHANNEL_PREFIX
    return _campaign(
        rows[0], [_channel(r, prefix) for r in rows if r._mapping[prefix + "channel_id"] is not None]
    )


# What changes with every write of a campaign or of one of its channels (store.save is the only
# such write, always with the next version and a new update time).
Stamp = tuple[Any, ...]
STAMP = sa.select(campaigns.c.version, campaigns.c.update_time).where(campaigns.c.id == sa.bindparam("id"))


def stamp(conn: Connection, campaign_id: str) -> Stamp | None:
    """The campaign's stamp, None when there is no such campaign: its version and update time (a
    campaign deleted and created again under the same id starts at version 1 again, but not at
    the same time), as the driver gives them, to be compared only with another stamp. One
    indexed row read through the driver: a few microseconds."""
    return driver_row(conn, STAMP, id=campaign_id)


def _campaign_values(record: CampaignRecord) -> dict[str, Any]:
    return {
        "display_name": record.display_name,
        "labels": record.labels,
        "audience": record.audience.to_json(),
        "time_zone": record.time_zone,
        "guard": record.guard.to_json(),
        "attestation": record.attestation.to_json() if record.attestation is not None else None,
        "archived": record.archived,
        "state": record.state.value,
        "version": record.version,
        "update_time": record.update_time,
    }


def _channel_values(campaign_id: str, channel: ChannelRecord) -> dict[str, Any]:
    return {
        "campaign_id": campaign_id,
        "channel_id": channel.channel_id,
        "position": channel.position,
        "type": channel.type,
        "state": channel.state.value,
        "content": channel.content,
        "transports": [t.to_json() for t in channel.transports],
        "rate_limit": channel.rate_limit,
        "schedule_time": channel.schedule_time,
        "send_window": channel.send_window.to_json() if channel.send_window is not None else None,
        "error": channel.error,
        "remarketing": channel.remarketing.to_json() if channel.remarketing is not None else None,
        "audience_counts": channel.audience_counts,
        "state_time": channel.state_time,
        "ambiguous_sends": channel.ambiguous_sends,
    }


def exists(conn: Connection, campaign_id: str) -> bool:
    """Whether a campaign with this id exists."""
    return conn.execute(sa.select(campaigns.c.id).where(campaigns.c.id == campaign_id)).first() is not None


def insert(conn: Connection, record: CampaignRecord) -> None:
    """Store a new campaign and its channels."""
    conn.execute(
        campaigns.insert().values(id=record.id, create_time=record.create_time, **_campaign_values(record))
    )
    for position, channel in enumerate(record.channels):
        channel.position = position
        conn.execute(channels.insert().values(**_channel_values(record.id, channel)))


def save(conn: Connection, record: CampaignRecord, *, expected_version: int) -> bool:
    """Write back a changed campaign and all its channels if its version is still `expected_version`.

    Compare-and-set: returns False, writing nothing, when someone else changed it meanwhile.
    """
    result = conn.execute(
        campaigns.update()
        .where(campaigns.c.id == record.id, campaigns.c.version == expected_version)
        .values(**_campaign_values(record))
    )
    if result.rowcount != 1:
        return False
    known = {
        r.channel_id
        for r in conn.execute(sa.select(channels.c.channel_id).where(channels.c.campaign_id == record.id))
    }
    for position, channel in enumerate(record.channels):
        channel.position = position
        values = _channel_values(record.id, channel)
        if channel.channel_id in known:
            conn.execute(
                channels.update()
                .where(channels.c.campaign_id == record.id, channels.c.channel_id == channel.channel_id)
                .values(**values)
            )
        else:
            conn.execute(channels.insert().values(**values))
    return True


def delete(conn: Connection, campaign_id: str) -> None:
    """Delete a campaign with its channels and history."""
    conn.execute(campaign_events.delete().where(campaign_events.c.campaign_id == campaign_id))
    conn.execute(channels.delete().where(channels.c.campaign_id == campaign_id))
    conn.execute(campaigns.delete().where(campaigns.c.id == campaign_id))


def list_page(
    conn: Connection, selection: CampaignFilter, *, after: tuple[dt.datetime, str] | None, limit: int
) -> list[CampaignRecord]:
    """Up to `limit` campaigns, newest first, after the keyset position `after`."""
    query = sa.select(campaigns)
    if not selection.show_archived:
        query = query.where(campaigns.c.archived.is_(False))
    if selection.states:
        query = query.where(campaigns.c.state.in_(sorted(s.value for s in selection.states)))
    if selection.channel_type:
        query = query.where(
            sa.exists().where(
                channels.c.campaign_id == campaigns.c.id, channels.c.type == selection.channel_type
            )
        )
    for key, value in sorted(selection.labels.items()):
        query = query.where(campaigns.c.labels[key].as_string() == value)
    if after is not None:
        time, last_id = after
        query = query.where(
            sa.or_(
                campaigns.c.create_time < time,
                sa.and_(campaigns.c.create_time == time, campaigns.c.id < last_id),
            )
        )
    rows = conn.execute(
        query.order_by(campaigns.c.create_time.desc(), campaigns.c.id.desc()).limit(limit)
    ).all()
    if not rows:
        return []
    by_campaign: dict[str, list[ChannelRecord]] = {r.id: [] for r in rows}
    channel_rows = conn.execute(
        sa.select(channels).where(channels.c.campaign_id.in_(list(by_campaign))).order_by(channels.c.position)
    ).all()
    for channel_row in channel_rows:
        by_campaign[channel_row.campaign_id].append(_channel(channel_row))
    return [_campaign(r, by_campaign[r.id]) for r in rows]


def add_events(conn: Connection, events: Sequence[Mapping[str, Any]]) -> None:
    """Append history entries (dicts of campaign_events columns without `id`)."""
    if events:
        conn.execute(campaign_events.insert(), list(events))


def list_events(conn: Connection, campaign_id: str, *, after: int, limit: int) -> list[Event]:
    """History entries oldest first, with sequence numbers greater than `after`."""
    rows = conn.execute(
        sa.select(campaign_events)
        .where(campaign_events.c.campaign_id == campaign_id, campaign_events.c.id > after)
        .order_by(campaign_events.c.id)
        .limit(limit)
    ).all()
    return [
        Event(
            sequence=r.id,
            campaign_id=r.campaign_id,
            channel_id=r.channel_id,
            operation=r.operation,
            from_state=r.from_state,
            to_state=r.to_state,
            actor=r.actor,
            cause=r.cause,
            reason=r.reason,
            time=r.time,
            request_id=r.request_id,
        )
        for r in rows
    ]


def stored_response(conn: Connection, method: str, request_id: str) -> bytes | None:
    """The response stored for an earlier call with this request_id, if any."""
    row = conn.execute(
        sa.select(api_requests.c.response).where(
            api_requests.c.method == method, api_requests.c.request_id == request_id
        )
    ).first()
    return None if row is None else bytes(row.response)


def store_response(conn: Connection, method: str, request_id: str, response: bytes, now: dt.datetime) -> None:
    """Remember the response of a call that carried a request_id."""
    conn.execute(
        api_requests.insert().values(method=method, request_id=request_id, response=response, create_time=now)
    )
