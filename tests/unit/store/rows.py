"""Rows the store tests start from."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.engine import Connection

from campaignd.store.schema import campaigns


def add_campaign(conn: Connection, campaign_id: str, now: dt.datetime) -> None:
    """A RUNNING campaign with no audience, for messages written straight into the table."""
    conn.execute(
        campaigns.insert().values(
            id=campaign_id,
            display_name=campaign_id,
            labels={},
            audience={},
            time_zone="UTC",
            guard={},
            archived=False,
            state="running",
            version=1,
            create_time=now,
            update_time=now,
        )
    )
