"""Queries over the channels of every campaign, for the engine's pass and the slot limits."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from campaignd.lifecycle import ChannelState
from campaignd.model import Guard, SendWindow
from campaignd.store.schema import campaign_events, campaigns, channels


@dataclass(frozen=True)
class ChannelRow:
    """What the engine's pass reads of a channel, with its campaign's time zone and guard."""

    campaign_id: str
    channel_id: str
    type: str
    state: ChannelState
    schedule_time: dt.datetime | None
    send_window: SendWindow | None  # None: the channel type's default window
    rate_limit: float  # messages per second; 0: no limit
    state_time: dt.datetime
    time_zone: str  # the campaign's
    guard: Guard  # the campaign's


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
    return [
        ChannelRow(
            **{
                **r._mapping,
                "state": ChannelState(r.state),
                "send_window": SendWindow.from_json(r.send_window) if r.send_window else None,
                "guard": Guard.from_json(r.guard),
            }
        )
        for r in conn.execute(query)
    ]


def slot_holders(conn: Connection, channel_type: str) -> set[str]:
    """Campaigns holding a slot of `channel_type`: with such a channel RUNNING, or PAUSED after it
    ran. A channel paused while QUEUED never had a slot; its history's last entry says so (a
    state the history does not explain counts as holding one)."""
    events = campaign_events.alias("latest")
    latest = (
        sa.select(sa.func.max(events.c.id))
        .where(events.c.campaign_id == channels.c.campaign_id, events.c.channel_id == channels.c.channel_id)
        .correlate(channels)
        .scalar_subquery()
    )
    paused_while_waiting = (
        sa.exists()
        .where(
            campaign_events.c.id == latest,
            campaign_events.c.to_state == "paused",
            campaign_events.c.from_state != "running",
        )
        .correlate(channels)
    )
    rows = conn.execute(
        sa.select(channels.c.campaign_id)
        .where(
            channels.c.type == channel_type,
            sa.or_(
                channels.c.state == "running",
                sa.and_(channels.c.state == "paused", sa.not_(paused_while_waiting)),
            ),
        )
        .distinct()
    )
    return {r.campaign_id for r in rows}
