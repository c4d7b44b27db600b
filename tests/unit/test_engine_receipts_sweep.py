"""How often the engine counts SENT messages without a receipt as ASSUMED_DELIVERED: the pass
reads every SENT message still waiting for its receipt, so it must not run at every tick."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import types
from collections.abc import Callable
from typing import Any, cast

import pytest

from campaignd.changes import ChangeHub
from campaignd.engine.core import Engine

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class Database:
    """Counts the passes written; fails them while `failing`."""

    def __init__(self) -> None:
        self.passes: list[tuple[Any, ...]] = []
        self.failing = False

    def on_fault(self, listener: Callable[..., None]) -> None:
        pass

    async def write(self, fn: Callable[..., Any], *args: Any) -> dict[tuple[str, str], int]:
        if self.failing:
            raise OSError("disk full")
        self.passes.append(args)
        return {}


def _engine(database: Database, after: float) -> Engine:
    plugins = types.SimpleNamespace(
        types={
            "sms": types.SimpleNamespace(name="sms", capabilities=frozenset({"receipts"})),
            "email": types.SimpleNamespace(name="email", capabilities=frozenset()),
        }
    )
    settings = types.SimpleNamespace(engine=types.SimpleNamespace(assume_delivered_after=after))
    return Engine(
        cast(Any, database),
        cast(Any, plugins),
        cast(Any, None),
        ChangeHub(),
        lambda: cast(Any, settings),
        cast(Any, None),
    )


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The engine's monotonic clock, moved by the test."""
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    return now


def _ticks(engine: Engine, count: int) -> None:
    async def run() -> None:
        for _ in range(count):
            await engine._assume_delivered(NOW)

    asyncio.run(run())


@pytest.mark.parametrize(("after", "every"), [(600.0, 30.0), (1.0, 0.1)])
def test_the_pass_runs_every_tenth_of_the_delay_at_most_every_30_s(
    clock: list[float], after: float, every: float
) -> None:
    database = Database()
    engine = _engine(database, after)
    _ticks(engine, 5)
    assert len(database.passes) == 1
    cutoff, receipt_types, _ = database.passes[0]
    assert cutoff == NOW - dt.timedelta(seconds=after)
    assert receipt_types == ["sms"]
    clock[0] += every * 0.9
    _ticks(engine, 3)
    assert len(database.passes) == 1
    clock[0] += every * 0.1
    _ticks(engine, 3)
    assert len(database.passes) == 2


def test_a_pass_that_failed_is_tried_again_at_the_next_tick(clock: list[float]) -> None:
    database = Database()
    engine = _engine(database, 600.0)
    database.failing = True
    with pytest.raises(OSError, match="disk full"):
        _ticks(engine, 1)
    database.failing = False
    clock[0] += 0.25
    _ticks(engine, 1)
    assert len(database.passes) == 1
