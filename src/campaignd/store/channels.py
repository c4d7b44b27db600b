"""Queries over the channels of every campaign, for the engine's pass and the slot limits."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from campaignd.lifecycle import ChannelState
from campaignd.store.schema import campaigns, channels


@dataclass(frozen=True)
class ChannelRow:
    """What the engine's pass reads of a channel, with its campaign's time zone and guard."""

    campaign_id: str
    channel_id: str
    type: str
    state: ChannelState
    schedule_time: dt.datetime | None
    send_window: dict[str, Any] | None  # as stored; None: the channel type's default window
    rate_limit: float  # messages per second; 0: no limit
    state_time: dt.datetime
    time_zone: str  # the campaign's
    guard: dict[str, Any]  # the campaign's guard settings, as stored


def channels_in(conn: Connection, states: Iterable[str]) -> list[ChannelRow]:
    """Channels in these states, oldest state change first."""
    query = (
        sa.select(
            channels.c.campaign_id,
            channels.c.channel_id,
            channels.c.type,
            channels.c.state,
            channels.c.schedule_time,
            channels.c.send_window,
            channels.c.rate_limit,
            channels.c.state_time,
            campaigns.c.time_zone,
            campaigns.c.guard,
        )
        .join(campaigns, campaigns.c.id == channels.c.campaign_id)
        .where(channels.c.state.in_(list(states)))
        .order_by(channels.c.state_time)
    )
    return [ChannelRow(**{**r._mapping, "state": ChannelState(r.state)}) for r in conn.execute(query)]


def slot_holders(conn: Connection, channel_type: str) -> set[str]:
    """Campaigns holding a slot of `channel_type`: with such a channel RUNNING or PAUSED."""
    rows = conn.execute(
        sa.select(channels.c.campaign_id)
        .where(channels.c.type == channel_type, channels.c.state.in_(["running", "paused"]))
        .distinct()
    )
    return {r.campaign_id for r in rows}
