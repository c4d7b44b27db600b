"""The API's event loop and the main one: work handed between them, wake-ups, the pause barrier."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import resource
import sys
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from campaignd import loops
from campaignd.api.campaigns import CampaignReplies
from campaignd.campaigns import CampaignManager
from campaignd.changes import ChangeHub
from campaignd.clock import Clock
from campaignd.config import Settings
from campaignd.engine.core import ChannelGate, Engine
from campaignd.engine.events import EventRecorder
from campaignd.engine.transports import Transports
from campaignd.plugin.manager import Plugins
from campaignd.store import migrate
from campaignd.store.db import Database, create_engine

T = TypeVar("T")


class OtherLoop:
    """An event loop running in a thread of its own, as the main loop does beside the API's."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def other() -> Iterator[OtherLoop]:
    running = OtherLoop()
    yield running
    running.close()


def test_run_on_runs_the_coroutine_on_the_other_loop_and_returns_its_result(other: OtherLoop) -> None:
    """run_on gives the coroutine's result (or its exception) to the caller, having run it on the
    other loop's thread."""

    async def where() -> int:
        return threading.get_ident()

    async def fails() -> None:
        raise ValueError("from the other loop")

    async def caller() -> None:
        assert await loops.run_on(other.loop, where()) == other.thread.ident
        assert await loops.run_on(None, where()) == threading.get_ident()
        with pytest.raises(ValueError, match="from the other loop"):
            await loops.run_on(other.loop, fails())
        assert await loops.call_on(other.loop, threading.get_ident) == other.thread.ident

    asyncio.run(caller())


def test_a_change_published_from_another_thread_wakes_the_watcher(other: OtherLoop) -> None:
    """A watcher waiting on its loop wakes when the campaign is published from another thread,
    within a fraction of the wait, and stays asleep when another campaign changes."""
    hub = ChangeHub()

    async def watcher() -> None:
        event = hub.subscribe("c1")
        unrelated = hub.subscribe("c2")
        loop = asyncio.get_running_loop()
        started = loop.time()
        await loops.call_on(other.loop, lambda: hub.publish("c1"))
        assert await hub.wait(event, 5.0)
        assert loop.time() - started < 2.0
        assert not await hub.wait(unrelated, 0.1)

    asyncio.run(watcher())


def _engine(tmp_path: pathlib.Path) -> tuple[Engine, Database]:
    engine = create_engine(f"sqlite:///{tmp_path / 'engine.db'}")
    migrate.upgrade(engine)
    database = Database(engine)
    plugins = Plugins(entry_points=False)
    hub = ChangeHub()
    settings = Settings()
    transports = Transports(plugins, EventRecorder(database, hub), lambda: 1.0, Clock())
    manager = CampaignManager(database, plugins, hub, lambda: settings.engine, CampaignReplies())
    return Engine(database, plugins, manager, hub, lambda: settings, transports), database


class WatchedGate(ChannelGate):
    """A gate that records the thread that closes it."""

    closed_by: int | None = None

    def __setattr__(self, name: str, value: object) -> None:
        if name == "open" and value is False:
            object.__setattr__(self, "closed_by", threading.get_ident())
        object.__setattr__(self, name, value)


def test_a_hold_from_the_api_loop_closes_the_gate_on_the_engines_loop_first(
    other: OtherLoop, tmp_path: pathlib.Path
) -> None:
    """Entering the hold of a Pause from another loop (through SendingOn) returns only once the
    engine's own thread has closed the channel's gate; while held the gate stays closed; leaving
    it, on the engine's thread too, lets the next tick decide."""

    async def make() -> tuple[Engine, Database]:
        return _engine(tmp_path)

    engine, database = other.run(make())
    gate = WatchedGate(None)
    gate.open = True
    engine._gates[("c1", "email")] = gate
    sending = loops.SendingOn(engine, other.loop)
    try:

        async def pause() -> None:
            async with sending.hold("c1"):
                assert gate.open is False
                assert gate.closed_by == other.thread.ident
                assert await loops.call_on(other.loop, lambda: engine._is_held(("c1", "email")))
            assert not await loops.call_on(other.loop, lambda: engine._is_held(("c1", "email")))

        asyncio.run(pause())
    finally:
        database.close()


def test_a_hold_is_left_on_its_loop_even_when_the_caller_is_cancelled(other: OtherLoop) -> None:
    """A call cancelled in the body of a hold entered through entered_on (a client that went
    away) still has the hold left on the owning loop, to the end."""
    events: list[tuple[str, int]] = []

    @contextlib.asynccontextmanager
    async def hold() -> AsyncIterator[None]:
        events.append(("entered", threading.get_ident()))
        try:
            yield
        finally:
            await asyncio.sleep(0.05)
            events.append(("left", threading.get_ident()))

    async def call() -> None:
        async with loops.entered_on(other.loop, hold()):
            await asyncio.sleep(10)

    async def cancelled() -> None:
        task = asyncio.ensure_future(call())
        await asyncio.sleep(0.1)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.2)

    asyncio.run(cancelled())
    assert events == [("entered", other.thread.ident), ("left", other.thread.ident)]


@pytest.mark.skipif(sys.platform != "linux", reason="the nice level is a thread's own on Linux only")
def test_serving_first_raises_only_the_calling_threads_priority_as_far_as_allowed() -> None:
    """serve_first lowers the calling thread's nice level by API_PRIORITY when the process may
    (CAP_SYS_NICE, or RLIMIT_NICE far enough), to what RLIMIT_NICE allows when that is less, and
    otherwise leaves it; the other threads keep theirs."""
    here = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen: list[tuple[int, int | None, int]] = []

    def api() -> None:
        before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        set_to = loops.serve_first()
        seen.append((before, set_to, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))

    thread = threading.Thread(target=api)
    thread.start()
    thread.join()
    [(before, set_to, after)] = seen
    assert before == here
    assert after == (set_to if set_to is not None else before)
    allowed = 20 - resource.getrlimit(resource.RLIMIT_NICE)[0]
    if os.geteuid() == 0:  # CAP_SYS_NICE
        assert set_to == max(-20, here - loops.API_PRIORITY)
    elif allowed < here:
        assert set_to == max(allowed, here - loops.API_PRIORITY)
    else:
        assert set_to is None
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == here
