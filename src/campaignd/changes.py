"""Wakes the watchers of a campaign when it changes: in this process, and, through `relay`, on
the other daemons of a cluster."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


class ChangeHub:
    """Per-campaign wake-ups; a watcher subscribes before it reads, so no change slips between."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self.closed = False
        # Tells the other daemons of a cluster (which `deliver` the change to their watchers).
        self.relay: Callable[[str], None] | None = None

    def subscribe(self, campaign_id: str) -> asyncio.Event:
        """The event that the next change of `campaign_id` sets."""
        return self._events.setdefault(campaign_id, asyncio.Event())

    def publish(self, campaign_id: str) -> None:
        """Wake everyone waiting on `campaign_id`, here and on the other daemons of a cluster."""
        self.deliver(campaign_id)
        if self.relay is not None:
            self.relay(campaign_id)

    def deliver(self, campaign_id: str) -> None:
        """Wake everyone in this process waiting on `campaign_id`."""
        event = self._events.pop(campaign_id, None)
        if event is not None:
            event.set()

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        """Wait for `event` up to `seconds`; True when it was set."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)
        return event.is_set()

    def close(self) -> None:
        """Wake every watcher for good, so streams end at shutdown."""
        self.closed = True
        for event in self._events.values():
            event.set()
        self._events.clear()
