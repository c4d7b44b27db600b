"""Receipts for single parts of a message, taken by two cluster members at once (PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from campaignd.lifecycle import ChannelState
from campaignd.model import Audience, CampaignRecord, ChannelRecord, Guard
from campaignd.store import campaigns as campaign_store
from campaignd.store import messages as store
from campaignd.store import migrate
from campaignd.store.db import create_engine
from campaignd.store.schema import messages

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def engine(pg_url: str) -> Iterator[sa.Engine]:
    """A migrated database with one message SENT as two parts, `p1` and `p2`."""
    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    migrate.upgrade(engine)
    row = {
        "campaign_id": "c",
        "channel_id": "sms",
        "address": "+14155550100",
        "state": "sending",
        "attempts": 0,
        "lease_owner": "here",
        "create_time": NOW,
        "update_time": NOW,
    }
    channel = ChannelRecord("sms", "sms", ChannelState.RUNNING, {}, (), 0.0, NOW)
    record = CampaignRecord("c", "c", {}, Audience(), "UTC", Guard(), False, 1, NOW, NOW, channels=[channel])
    with engine.begin() as conn:
        campaign_store.insert(conn, record)
        conn.execute(messages.insert(), [row])
        (message_id,) = conn.execute(sa.select(messages.c.id)).scalars()
        store.record(
            conn,
            "c",
            "sms",
            "here",
            [store.Outcome(message_id, "sent", "p1", parts=2, part_ids=("p1", "p2"))],
            NOW,
        )
    yield engine
    engine.dispose()


def test_two_members_taking_the_two_parts_at_once_deliver_the_message(engine: sa.Engine) -> None:
    """One member marks the first part and has not committed when another takes the second: the
    second waits for the first, sees its mark, and makes the message DELIVERED."""
    second_done = threading.Event()
    made: dict[str, list[store.Event]] = {}

    def second() -> None:
        with engine.begin() as conn:
            made["second"], _ = store.part_receipts(conn, [store.Event("p2", "delivered")])
        second_done.set()

    with engine.begin() as conn:
        made["first"], _ = store.part_receipts(conn, [store.Event("p1", "delivered")])
        other = threading.Thread(target=second)
        other.start()
        # The second member's transaction must wait for this one, not decide without its mark.
        assert not second_done.wait(1.0)
    other.join(10)

    assert made["first"] == []
    assert made["second"] == [store.Event("p1", "delivered")]
