"""Wakes the watchers of a campaign when it changes: in this process, and, through `relay`, on
the other daemons of a cluster."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable

from campaignd import loops


class ChangeHub:
    """Per-campaign wake-ups; a watcher subscribes before it reads, so no change slips between.

    Watchers wait on the API's event loop while the engine publishes from the main one: an event
    is set on the loop of the watcher that made it, and the relay is called on the loop it was
    set from (the cluster's bus is the main loop's)."""

    def __init__(self) -> None:
        self._events: dict[str, tuple[asyncio.Event, asyncio.AbstractEventLoop | None]] = {}
        self._lock = threading.Lock()
        self.closed = False
        self._relay: tuple[Callable[[str], None], asyncio.AbstractEventLoop | None] | None = None

    @property
    def relay(self) -> Callable[[str], None] | None:
        """Tells the other daemons of a cluster (which `deliver` the change to their watchers)."""
        return self._relay[0] if self._relay is not None else None

    @relay.setter
    def relay(self, relay: Callable[[str], None] | None) -> None:
        self._relay = (relay, loops.current()) if relay is not None else None

    def subscribe(self, campaign_id: str) -> asyncio.Event:
        """The event that the next change of `campaign_id` sets."""
        with self._lock:
            event, _ = self._events.setdefault(campaign_id, (asyncio.Event(), loops.current()))
        return event

    def publish(self, campaign_id: str) -> None:
        """Wake everyone waiting on `campaign_id`, here and on the other daemons of a cluster."""
        self.deliver(campaign_id)
        if self._relay is not None:
            relay, loop = self._relay
            loops.soon_on(loop, lambda: relay(campaign_id))

    def deliver(self, campaign_id: str) -> None:
        """Wake everyone in this process waiting on `campaign_id`."""
        with self._lock:
            entry = self._events.pop(campaign_id, None)
        if entry is not None:
            event, loop = entry
            loops.soon_on(loop, event.set)

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        """Wait for `event` up to `seconds`; True when it was set."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)
        return event.is_set()

    def close(self) -> None:
        """Wake every watcher for good, so streams end at shutdown."""
        with self._lock:
            self.closed = True
            entries, self._events = list(self._events.values()), {}
        for event, loop in entries:
            loops.soon_on(loop, event.set)
