"""How often a worker reads the time zones of its channel's waiting messages: the read scans
every waiting message, so the larger the channel, the longer its answer is reused."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import types
from collections.abc import Callable
from typing import Any, cast

import pytest

from campaignd.changes import ChangeHub
from campaignd.clock import Clock
from campaignd.engine.core import ZONES_FOR, ZONES_SPACING, Engine
from campaignd.model import SendWindow

KEY = ("spring", "sms")
# 12:00 UTC: 13:00 in Paris, 21:00 in Tokyo (after a 09:00-20:00 window).
NOW = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)
WINDOW = SendWindow((), dt.time(9, 0), dt.time(20, 0))


class FakeTime(Clock):
    """Wall time fixed at NOW; a monotonic clock moved by the test and by each read."""

    def __init__(self) -> None:
        self.seconds = 1000.0

    def now(self) -> dt.datetime:
        return NOW

    def monotonic(self) -> float:
        return self.seconds


class Database:
    """Answers the zones read, which takes `cost` seconds of the fake clock."""

    def __init__(self, clock: FakeTime, zones: list[str | None], cost: float) -> None:
        self.clock = clock
        self.zones = zones
        self.cost = cost
        self.reads = 0

    def on_fault(self, listener: Callable[..., None]) -> None:
        pass

    async def read(self, fn: Callable[..., Any], *args: Any) -> list[str | None]:
        assert fn.__name__ == "queued_zones"
        assert args == KEY
        self.reads += 1
        self.clock.seconds += self.cost
        return list(self.zones)


def _open_zones(engine: Engine) -> list[str | None] | None:
    row = types.SimpleNamespace(send_window=WINDOW, type="sms", time_zone="Europe/Paris")
    return asyncio.run(engine._open_zones(KEY, cast(Any, row)))


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(time, "monotonic", fake.monotonic)
    return fake


def _engine(database: Database, clock: FakeTime) -> Engine:
    return Engine(
        cast(Any, database),
        cast(Any, None),
        cast(Any, None),
        ChangeHub(),
        cast(Any, None),
        cast(Any, None),
        clock=clock,
    )


def test_open_zones_are_those_whose_window_is_open_now(clock: FakeTime) -> None:
    database = Database(clock, ["Europe/Paris", "Asia/Tokyo", None], cost=0.01)
    engine = _engine(database, clock)
    # None: recipients without a zone, in the campaign's (Paris).
    assert _open_zones(engine) == ["Europe/Paris", None]
    assert engine._reopens == {}
    database.zones = ["Asia/Tokyo"]
    clock.seconds += ZONES_FOR + 1
    assert _open_zones(engine) == []
    # Tokyo opens again at 09:00 there, 00:00 UTC the next day.
    assert engine._reopens[KEY] == dt.datetime(2026, 3, 3, 0, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize("cost", [0.01, 0.5])
def test_the_zones_are_reused_for_5_s_or_50_times_the_read(clock: FakeTime, cost: float) -> None:
    database = Database(clock, ["Europe/Paris"], cost)
    engine = _engine(database, clock)
    reuse = max(ZONES_FOR, ZONES_SPACING * cost)
    _open_zones(engine)
    assert database.reads == 1
    clock.seconds += reuse - 0.1
    for _ in range(3):
        _open_zones(engine)
    assert database.reads == 1
    clock.seconds += 0.2
    _open_zones(engine)
    assert database.reads == 2
    assert reuse == (5.0 if cost == 0.01 else 25.0)


def test_a_zone_whose_messages_came_back_is_seen_at_the_next_read(clock: FakeTime) -> None:
    database = Database(clock, [None], cost=0.01)
    engine = _engine(database, clock)
    assert _open_zones(engine) == [None]
    database.zones = [None, "Europe/Paris"]
    assert _open_zones(engine) == [None]
    clock.seconds += ZONES_FOR + 0.1
    assert _open_zones(engine) == [None, "Europe/Paris"]
