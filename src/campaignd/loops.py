"""The daemon's two event loops, and handing work between them.

The gRPC API is served from a thread of its own with its own event loop (`api/server.py`), so
that a campaign sending at full speed on the main loop (the engine, the plugins, their
transports, the HTTP listener) does not hold up every call. What one loop owns is used from the
other only through these helpers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def current() -> asyncio.AbstractEventLoop | None:
    """The running event loop of this thread, or None."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def run_on(loop: asyncio.AbstractEventLoop | None, coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` on `loop` and await its result here; here when `loop` is this one or None.
    Cancelling the caller cancels it on `loop` too."""
    if loop is None or loop is current():
        return await coroutine
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, loop))


async def call_on(loop: asyncio.AbstractEventLoop | None, fn: Callable[[], T]) -> T:
    """Call `fn` on `loop`, between two of its callbacks, and await its result here."""
    if loop is None or loop is current():
        return fn()
    done: concurrent.futures.Future[T] = concurrent.futures.Future()

    def call() -> None:
        try:
            done.set_result(fn())
        except BaseException as exc:
            done.set_exception(exc)

    loop.call_soon_threadsafe(call)
    return await asyncio.wrap_future(done)


def soon_on(loop: asyncio.AbstractEventLoop | None, fn: Callable[[], object]) -> None:
    """Call `fn` on `loop` soon, without waiting; at once when `loop` is this thread's or None.
    Nothing happens once `loop` is closed."""
    if loop is None or loop is current():
        fn()
    elif not loop.is_closed():
        # Closed meanwhile: the daemon is stopping.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(fn)
