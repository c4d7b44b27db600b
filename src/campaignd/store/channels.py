"""Queries over the channels of every campaign, for the engine's pass and the slot limits."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from campaignd.store.schema import campaigns, channels


def channels_in(conn: Connection, states: Iterable[str]) -> list[sa.Row[Any]]:
    """(campaign_id, channel_id, type, state, schedule_time, send_window, rate_limit) of channels in
    these states, with the campaign's time zone and guard settings, oldest state change first."""
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
    return list(conn.execute(query))


def slot_holders(conn: Connection, channel_type: str) -> set[str]:
    """Campaigns holding a slot of `channel_type`: with such a channel RUNNING or PAUSED."""
    rows = conn.execute(
        sa.select(channels.c.campaign_id)
        .where(channels.c.type == channel_type, channels.c.state.in_(["running", "paused"]))
        .distinct()
    )
    return {r.campaign_id for r in rows}
