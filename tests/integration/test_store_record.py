"""Writing a batch's results: the rows a result leaves do not depend on the results written with
it, on SQLite and on PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import sqlalchemy as sa

from campaignd.lifecycle import ChannelState
from campaignd.model import Audience, CampaignRecord, ChannelRecord, Guard
from campaignd.store import campaigns as campaign_store
from campaignd.store import counts, migrate
from campaignd.store import messages as store
from campaignd.store.db import create_engine
from campaignd.store.schema import messages

NOW = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)
LATER = NOW + dt.timedelta(seconds=60)
OWNER = "here"
# What each message was before its result, and its result: shapes of 20, 10 and 9 rows that are
# written together, and a few alone.
BEFORE: dict[str, Any] = {"transport": "old", "parts": 4, "outcome": "answered", "attempts": 1}


def outcomes() -> list[store.Outcome]:
    """Forty-five results of a batch, message ids from 1, in the engine's order."""
    made: list[store.Outcome] = []
    for n in range(20):
        made.append(store.Outcome(0, "sent", f"p{n}", parts=2, transport="smsc"))
    for _ in range(10):
        made.append(store.Outcome(0, "retrying", error="busy", reason="deferred", next_attempt_time=LATER))
    for _ in range(9):
        made.append(store.Outcome(0, "queued", attempted=False))
    made.append(store.Outcome(0, "failed", error="refused: 11", reason="ESME_RINVDSTADR", transport="smsc"))
    made.append(store.Outcome(0, "delivered", "p99", transport="smsc", outcome="answered", talk_time=3.5))
    made.append(store.Outcome(0, "sent", "p98"))
    made.append(store.Outcome(0, "cancelled", attempted=False, reason="channel_failed"))
    made.append(store.Outcome(0, "failed", error="no answer", reason="retries_exhausted", transport="b"))
    made.append(store.Outcome(0, "sent", "p97", parts=3, transport="smsc"))
    return [store.Outcome(n, *fields(o)[1:]) for n, o in enumerate(made, start=1)]


def fields(outcome: store.Outcome) -> tuple[Any, ...]:
    return tuple(getattr(outcome, name) for name in store.Outcome.__dataclass_fields__)


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    """A migrated database with one campaign of two sms channels, "together" and "alone"."""
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    migrate.upgrade(engine)
    channels = [
        ChannelRecord(channel_id, "sms", ChannelState.RUNNING, {}, (), 0.0, NOW)
        for channel_id in ("together", "alone")
    ]
    record = CampaignRecord("c", "c", {}, Audience(), "UTC", Guard(), False, 1, NOW, NOW, channels=channels)
    with engine.begin() as conn:
        campaign_store.insert(conn, record)
    yield engine
    engine.dispose()


def lease(engine: sa.Engine, channel_id: str, count: int) -> list[int]:
    """`count` messages of a channel, leased to OWNER and started; their ids in order."""
    rows = [
        {
            "campaign_id": "c",
            "channel_id": channel_id,
            "address": f"+1415555{n:04d}",
            "state": "sending",
            "lease_owner": OWNER,
            "lease_expiry": LATER,
            "started": True,
            "create_time": NOW,
            "update_time": NOW,
            **BEFORE,
        }
        for n in range(count)
    ]
    with engine.begin() as conn:
        conn.execute(messages.insert(), rows)
        counts.add_counts(conn, "c", channel_id, {"sending": count})
        return list(
            conn.execute(
                sa.select(messages.c.id).where(messages.c.channel_id == channel_id).order_by(messages.c.id)
            ).scalars()
        )


def written(engine: sa.Engine, channel_id: str) -> list[dict[str, Any]]:
    """Each message of a channel as its result left it, in id order, without its id."""
    columns = [c for c in messages.c if c.name not in ("id", "channel_id", "address")]
    with engine.connect() as conn:
        return [
            dict(row._mapping)
            for row in conn.execute(
                sa.select(*columns).where(messages.c.channel_id == channel_id).order_by(messages.c.id)
            )
        ]


def record(engine: sa.Engine, channel_id: str, results: Sequence[store.Outcome]) -> int:
    with engine.begin() as conn:
        return store.record(conn, "c", channel_id, OWNER, results, NOW)


def test_a_result_is_written_alike_with_others_of_its_shape_or_alone(engine: sa.Engine) -> None:
    """A batch whose results share a few shapes (written a statement per shape) leaves every
    message, and the channel's counters, as writing each result alone does."""
    results = outcomes()
    together = lease(engine, "together", len(results))
    alone = lease(engine, "alone", len(results))
    started = record(
        engine,
        "together",
        [store.Outcome(mid, *fields(o)[1:]) for mid, o in zip(together, results, strict=True)],
    )
    started_alone = sum(
        record(engine, "alone", [store.Outcome(mid, *fields(o)[1:])])
        for mid, o in zip(alone, results, strict=True)
    )
    assert started == started_alone == len(results) - 10
    assert written(engine, "together") == written(engine, "alone")
    with engine.connect() as conn:
        by_state = counts.read_counts(conn, "c")
    assert {s: n for (c, s), n in by_state.items() if c == "together"} == {
        s: n for (c, s), n in by_state.items() if c == "alone"
    }
    rows = written(engine, "together")
    assert {k: rows[0][k] for k in ("state", "provider_id", "parts", "transport", "attempts", "started")} == {
        "state": "sent",
        "provider_id": "p0",
        "parts": 2,
        "transport": "smsc",
        "attempts": 2,
        "started": None,
    }
    assert {k: rows[20][k] for k in ("state", "provider_id", "reason", "next_attempt_time", "transport")} == {
        "state": "retrying",
        "provider_id": None,
        "reason": "deferred",
        "next_attempt_time": LATER,
        "transport": "old",
    }
    assert (rows[30]["state"], rows[30]["attempts"], rows[30]["lease_owner"]) == ("queued", 1, None)


def test_only_messages_still_leased_are_written(engine: sa.Engine) -> None:
    """Of a batch written together, a message leased to another daemon meanwhile is left alone."""
    ids = lease(engine, "together", 12)
    with engine.begin() as conn:
        conn.execute(messages.update().where(messages.c.id == ids[3]).values(lease_owner="elsewhere"))
    record(engine, "together", [store.Outcome(mid, "sent", f"p{mid}", parts=2) for mid in ids])
    with engine.connect() as conn:
        states = dict(
            conn.execute(sa.select(messages.c.id, messages.c.state).where(messages.c.id.in_(ids))).all()
        )
    assert states[ids[3]] == "sending"
    assert {states[mid] for mid in ids if mid != ids[3]} == {"sent"}
