"""The queue of RecordEvents calls in front of the store: calls that arrive during a write go
together into the next one, and none is left waiting when the writer is cancelled."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import Any, cast

import pytest

from campaignd.changes import ChangeHub
from campaignd.engine.events import APPLIED, EventRecorder
from campaignd.plugin import EventKind, MessageEvent

CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="")


class Database:
    """Holds each write until `go` is set; records the event ids and the caller seen by each."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.writes: list[tuple[list[str], str]] = []
        self.events: list[str] = []

    async def write(self, fn: Callable[..., Any]) -> Any:
        await self.go.wait()
        self.writes.append((list(self.events), CALLER.get()))
        results = [(APPLIED, "")] * len(self.events)
        self.events = []
        return results, set()


def _recorder(database: Database, monkeypatch: pytest.MonkeyPatch) -> EventRecorder:
    recorder = EventRecorder(cast(Any, database), ChangeHub())
    original = recorder._record_messages

    async def noting(events: Any) -> list[tuple[str, str]]:
        database.events = [e.event_id for e in events]
        return await original(events)

    monkeypatch.setattr(recorder, "_record_messages", noting)
    return recorder


def _open(event_id: str) -> MessageEvent:
    return MessageEvent(event_id, EventKind.OPENED, message=("spring", "mail", 1))


def test_calls_made_during_a_write_share_the_next_one(monkeypatch: pytest.MonkeyPatch) -> None:
    async def run() -> tuple[list[list[tuple[str, str]]], list[tuple[list[str], str]]]:
        database = Database()
        recorder = _recorder(database, monkeypatch)

        async def call(name: str, ids: list[str]) -> list[tuple[str, str]]:
            CALLER.set(name)
            return await recorder.record_messages([_open(i) for i in ids])

        first = asyncio.create_task(call("a", ["a1"]))
        await asyncio.sleep(0)
        others = [asyncio.create_task(call(n, [f"{n}1", f"{n}2"])) for n in ("b", "c")]
        await asyncio.sleep(0)
        database.go.set()
        answers = await asyncio.gather(first, *others)
        return answers, database.writes

    answers, writes = asyncio.run(run())
    assert [len(a) for a in answers] == [1, 2, 2]
    # The write ran in a context of its own, not in its first caller's.
    assert writes == [(["a1"], ""), (["b1", "b2", "c1", "c2"], "")]


def test_a_cancelled_writer_leaves_no_caller_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    async def run() -> list[BaseException | list[tuple[str, str]]]:
        database = Database()
        recorder = _recorder(database, monkeypatch)
        calls = [asyncio.create_task(recorder.record_messages([_open(f"e{k}")])) for k in range(3)]
        await asyncio.sleep(0.01)
        [queue] = recorder._queues.values()
        assert queue.writer is not None
        queue.writer.cancel()
        return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)

    outcomes = asyncio.run(run())
    assert all(isinstance(o, asyncio.CancelledError) for o in outcomes)
