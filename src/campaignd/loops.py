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
import os
import resource
import sys
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
# How many nice levels the API's thread runs above the process (5: three times the CPU weight
# of the sending thread when both want a core).
API_PRIORITY = 5


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


@contextlib.asynccontextmanager
async def entered_on(
    loop: asyncio.AbstractEventLoop | None, manager: contextlib.AbstractAsyncContextManager[T]
) -> AsyncIterator[T]:
    """`manager` entered and left on `loop` (whose objects it uses), its body run here. Leaving
    it is not cancelled with the caller: what it undoes (gates held closed) must be undone."""
    value = await run_on(loop, manager.__aenter__())
    try:
        yield value
    except BaseException as exc:
        if not await asyncio.shield(run_on(loop, manager.__aexit__(type(exc), exc, exc.__traceback__))):
            raise
    else:
        await asyncio.shield(run_on(loop, manager.__aexit__(None, None, None)))


class Sending(Protocol):
    """What Pause and Stop need of the sending (campaigns/operations.py's `Sending`)."""

    def hold(self, campaign_id: str, channel_id: str = "") -> contextlib.AbstractAsyncContextManager[None]:
        """Close the gates of the channels for the length of the call."""

    def wake(self) -> None:
        """Make a pass now."""


class SendingOn:
    """A Sending used from any loop, run on `loop`, which owns it (the engine and a cluster's
    bus are the main loop's): its hold entered and left there, between two steps of the
    engine (a plugin starts a send in the step in which its gate said yes, so none starts after
    the gates closed), and its wake-ups made there."""

    def __init__(self, sending: Sending, loop: asyncio.AbstractEventLoop | None) -> None:
        self.sending = sending
        self.loop = loop

    @contextlib.asynccontextmanager
    async def hold(self, campaign_id: str, channel_id: str = "") -> AsyncIterator[None]:
        """The sending's hold, on its loop."""
        async with entered_on(self.loop, self.sending.hold(campaign_id, channel_id)):
            yield

    def wake(self) -> None:
        """The sending's wake-up, on its loop."""
        soon_on(self.loop, self.sending.wake)


def serve_first() -> int | None:
    """Raise this thread's CPU priority by API_PRIORITY nice levels, as far as the process may:
    called from the API's thread, so that on a busy machine it gets a core as soon as a call
    wakes it rather than after the sending thread's time slice, while the sending keeps its
    share of the CPU against other processes. A process may go below nice 0 only down to
    20 - RLIMIT_NICE (the systemd unit's LimitNICE=) or with CAP_SYS_NICE; elsewhere nothing
    changes. Threads this one starts later (gRPC's own) inherit it. Returns the nice level set,
    or None. Linux only, where the nice level is a thread's own."""
    if sys.platform != "linux":
        return None
    thread = threading.get_native_id()
    current = os.getpriority(os.PRIO_PROCESS, thread)
    soft, _ = resource.getrlimit(resource.RLIMIT_NICE)
    for level in (current - API_PRIORITY, 20 - soft):
        if level >= current:
            continue
        try:
            os.setpriority(os.PRIO_PROCESS, thread, max(-20, level))
        except OSError:
            continue
        return max(-20, level)
    return None


def serve_as_the_process() -> None:
    """Give this thread the process's own nice level (the main thread's): for worker threads,
    which inherit the level of whichever thread started them, so that one started by the API's
    thread does not run the engine's work ahead of the sending. Raising a nice level is always
    allowed."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError):
        process = os.getpriority(os.PRIO_PROCESS, os.getpid())  # the main thread's
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), process)
