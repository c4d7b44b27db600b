"""The sends of a channel so far, which its current rate is measured from, read while results
are written (PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import itertools
import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from campaignd.campaigns.progress import FINISHED_STATES
from campaignd.lifecycle import ChannelState
from campaignd.model import Audience, CampaignRecord, ChannelRecord, Guard
from campaignd.store import campaigns as campaign_store
from campaignd.store import messages as store
from campaignd.store import migrate
from campaignd.store.counts import add_counts
from campaignd.store.db import create_engine
from campaignd.store.schema import messages

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
BATCH = 50
BATCHES = 150


@pytest.fixture
def engine(pg_url: str) -> Iterator[sa.Engine]:
    """A migrated database with one running channel and no messages."""
    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    migrate.upgrade(engine)
    channel = ChannelRecord("sms", "sms", ChannelState.RUNNING, {}, (), 0.0, NOW)
    record = CampaignRecord("c", "c", {}, Audience(), "UTC", Guard(), False, 1, NOW, NOW, channels=[channel])
    with engine.begin() as conn:
        campaign_store.insert(conn, record)
    yield engine
    engine.dispose()


def _send_batches(engine: sa.Engine, done: threading.Event) -> None:
    """Batch after batch: its messages start (SENDING, marked started), then their results are
    written; each in a transaction of its own, as the engine does."""
    try:
        for n in range(BATCHES):
            rows = [
                {
                    "campaign_id": "c",
                    "channel_id": "sms",
                    "address": f"+1415555{n:03d}{i:02d}",
                    "state": "sending",
                    "attempts": 0,
                    "lease_owner": "here",
                    "started": True,
                    "create_time": NOW,
                    "update_time": NOW,
                }
                for i in range(BATCH)
            ]
            with engine.begin() as conn:
                ids = conn.execute(messages.insert().returning(messages.c.id), rows).scalars().all()
                add_counts(conn, "c", "sms", {"sending": BATCH})
            with engine.begin() as conn:
                store.record(conn, "c", "sms", "here", [store.Outcome(i, "sent", f"m{i}") for i in ids], NOW)
    finally:
        done.set()


def test_sends_never_go_back_while_results_are_written(engine: sa.Engine) -> None:
    """A batch's results move its messages from started to SENT in one transaction: a read of the
    sends so far counts them once, before or after, never in neither (which made a channel's
    current rate drop by a batch's worth for a moment)."""
    done = threading.Event()
    writer = threading.Thread(target=_send_batches, args=(engine, done))
    writer.start()
    seen = [0]
    try:
        while not done.is_set():
            with engine.begin() as conn:
                seen.append(store.sends_so_far(conn, "c", "sms", FINISHED_STATES))
    finally:
        writer.join(60)
    with engine.begin() as conn:
        seen.append(store.sends_so_far(conn, "c", "sms", FINISHED_STATES))
    drops = [(a, b) for a, b in itertools.pairwise(seen) if b < a]
    assert not drops, f"the sends so far went back {len(drops)} times in {len(seen)} reads: {drops[:3]}"
    assert seen[-1] == BATCH * BATCHES
    assert len(seen) > BATCHES  # the reads ran beside the writes
