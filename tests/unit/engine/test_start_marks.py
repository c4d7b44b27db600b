"""The start marks the gate writes before it admits a send, against an in-memory "database"."""

from __future__ import annotations

import asyncio

import pytest

from campaignd.engine.core import _StartMarks


class Store:
    """Records each write of marks; answers with the ids still leased."""

    def __init__(self, lost: set[int] | None = None, delay: float = 0.001) -> None:
        self.writes: list[list[int]] = []
        self.marked: set[int] = set()
        self.lost = lost or set()
        self.delay = delay
        self.fail = False

    async def write(self, ids: list[int]) -> set[int]:
        await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("the write failed")
        self.writes.append(ids)
        kept = {i for i in ids if i not in self.lost}
        self.marked |= kept
        return kept


def test_every_admitted_message_is_marked_before_the_answer() -> None:
    """No send is admitted before its own mark is written."""

    async def run() -> None:
        store = Store()
        marks = _StartMarks(store.write, list(range(100)))
        for message_id in range(100):
            assert await marks.mark(message_id)
            assert message_id in store.marked

    asyncio.run(run())


def test_concurrent_admits_share_writes_and_mark_ahead_only_a_little() -> None:
    """Twenty senders at once: far fewer writes than sends, and at most MAX_AHEAD marked beyond
    the last message admitted."""

    async def run() -> None:
        store = Store()
        ids = list(range(1000))
        marks = _StartMarks(store.write, ids)
        pending = iter(ids)
        admitted: list[int] = []

        async def sender() -> None:
            for message_id in pending:
                assert await marks.mark(message_id)
                admitted.append(message_id)
                await asyncio.sleep(0)

        await asyncio.gather(*(sender() for _ in range(20)))
        assert sorted(admitted) == ids
        assert len(store.writes) < 200
        # Stop early: what was marked beyond what was admitted is bounded.
        store2 = Store()
        marks2 = _StartMarks(store2.write, ids)
        for message_id in ids[:300]:
            assert await marks2.mark(message_id)
        await asyncio.sleep(0.05)
        assert len(store2.marked - set(ids[:300])) <= _StartMarks.MAX_AHEAD

    asyncio.run(run())


def test_a_slow_sender_marks_nothing_ahead() -> None:
    """One send every 0.3 s: each write marks only the message asked for."""

    async def run() -> None:
        store = Store()
        marks = _StartMarks(store.write, list(range(5)))
        for message_id in range(5):
            assert await marks.mark(message_id)
            await asyncio.sleep(0.3)
        assert store.writes == [[i] for i in range(5)]

    asyncio.run(run())


def test_a_call_starts_at_the_pace_of_the_channels_previous_call() -> None:
    """Given the previous call's pace, the first write already marks what the call will send
    within HORIZON at that pace (at most MAX_AHEAD), so a fast channel's calls do not begin with
    a write per send; without it, the first write marks one message."""

    async def run() -> None:
        fast, fresh = Store(), Store()
        marks = _StartMarks(fast.write, list(range(1000)), pace=400.0)
        assert await marks.mark(0)
        assert len(fast.writes[0]) == 1 + int(400.0 * _StartMarks.HORIZON)
        assert await _StartMarks(fresh.write, list(range(1000))).mark(0)
        assert fresh.writes == [[0]]
        for message_id in range(1, 500):
            assert await marks.mark(message_id)
        assert marks.pace > 0
        assert len(fast.writes) < 20

    asyncio.run(run())


def test_a_message_whose_lease_was_lost_is_not_admitted() -> None:
    """A message the database no longer leases to this daemon is refused; the others go on."""

    async def run() -> None:
        store = Store(lost={3})
        marks = _StartMarks(store.write, list(range(6)))
        assert [await marks.mark(i) for i in range(6)] == [True, True, True, False, True, True]

    asyncio.run(run())


@pytest.mark.parametrize("message_id", [None, 999])
def test_an_unnamed_send_marks_the_whole_call(message_id: int | None) -> None:
    """A plugin that does not name the message (or names one not in the call) gets every message
    of the call marked before its first send."""

    async def run() -> None:
        store = Store()
        marks = _StartMarks(store.write, [5, 6, 7])
        assert await marks.mark(message_id)
        assert store.marked == {5, 6, 7}

    asyncio.run(run())


def test_a_failed_write_refuses_the_send() -> None:
    """When the mark cannot be written the send is refused, not admitted unmarked."""

    async def run() -> None:
        store = Store()
        store.fail = True
        marks = _StartMarks(store.write, [1, 2])
        assert not await marks.mark(1)
        store.fail = False
        assert await marks.mark(2)
        assert 1 not in store.marked

    asyncio.run(run())
