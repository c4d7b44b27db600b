"""Every move of a message's state in the store goes through the lifecycle's transition table."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from campaignd.lifecycle import MessageState, message_can_move
from campaignd.store import messages as message_store
from campaignd.store.counts import add_counts, read_counts
from campaignd.store.messages import IllegalMoveError, Outcome
from campaignd.store.schema import messages, metadata

NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
MOVES = [(a, b) for a, b in itertools.product(MessageState, MessageState) if a != b]


@pytest.fixture
def conn() -> Iterator[Connection]:
    """A transaction on a fresh in-memory SQLite database with the daemon's tables."""
    engine = sa.create_engine("sqlite://")
    metadata.create_all(engine)
    with engine.begin() as connection:
        yield connection
    engine.dispose()


def add_message(
    conn: Connection, state: str, *, owner: str | None = None, address: str = "a@example.org"
) -> int:
    """One message of channel c/ch in `state`, counted, leased by `owner` when given."""
    mid = conn.execute(
        messages.insert()
        .values(
            campaign_id="c",
            channel_id="ch",
            address=address,
            state=state,
            attempts=0,
            lease_owner=owner,
            create_time=NOW,
            update_time=NOW,
        )
        .returning(messages.c.id)
    ).scalar_one()
    add_counts(conn, "c", "ch", {state: 1})
    return int(mid)


def state_of(conn: Connection, mid: int) -> str:
    """The stored state of message `mid`."""
    return str(conn.execute(sa.select(messages.c.state).where(messages.c.id == mid)).scalar_one())


@pytest.mark.parametrize(("frm", "to"), MOVES, ids=[f"{a.name}-{b.name}" for a, b in MOVES])
def test_a_move_happens_exactly_when_the_lifecycle_allows_it(
    conn: Connection, frm: MessageState, to: MessageState
) -> None:
    """Moving a channel's messages makes a legal move with its counters, and refuses any other
    with IllegalMoveError, changing nothing."""
    mid = add_message(conn, frm.value)
    if message_can_move(frm, to):
        assert message_store.move_messages(conn, "c", "ch", [frm.value], to.value, NOW) == 1
        assert state_of(conn, mid) == to.value
        assert read_counts(conn, "c") == {("ch", to.value): 1}
    else:
        with pytest.raises(IllegalMoveError, match=f"from {frm.value} to {to.value}"):
            message_store.move_messages(conn, "c", "ch", [frm.value], to.value, NOW)
        assert state_of(conn, mid) == frm.value
        assert read_counts(conn, "c") == {("ch", frm.value): 1}


def test_a_result_that_is_no_legal_move_is_refused(conn: Connection) -> None:
    """A batch's results are written only if every one is a legal move: a leased message cannot
    become ASSUMED_DELIVERED, and its batch-mates are left as they were too."""
    first = add_message(conn, "sending", owner="me")
    second = add_message(conn, "sending", owner="me", address="b@example.org")
    with pytest.raises(IllegalMoveError, match="from sending to assumed_delivered"):
        message_store.record(
            conn, "c", "ch", "me", [Outcome(first, "sent"), Outcome(second, "assumed_delivered")], NOW
        )
    assert (state_of(conn, first), state_of(conn, second)) == ("sending", "sending")
