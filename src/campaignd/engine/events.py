"""Inbound events from transports (SPEC §5): receipts move messages, opt-outs add suppressions."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy.engine import Connection

from campaignd import logs
from campaignd.changes import ChangeHub
from campaignd.clock import Clock
from campaignd.plugin import EventKind, InboundEvent
from campaignd.store import engine as store
from campaignd.store.audience import add_suppressions
from campaignd.store.db import Database

log = logs.get("campaignd.events")

# Events after which the address must not be contacted again on its channel type.
SUPPRESSING = frozenset(
    {EventKind.BOUNCED, EventKind.COMPLAINED, EventKind.UNSUBSCRIBED, EventKind.OPTED_OUT}
)


class EventRecorder:
    """The daemon's EventSink: applies a transport's inbound events in one transaction."""

    def __init__(self, database: Database, hub: ChangeHub, clock: Clock | None = None) -> None:
        self.db = database
        self.hub = hub
        self.clock = clock or Clock()

    async def record(self, channel_type: str, events: Sequence[InboundEvent]) -> None:
        """Apply `events` of `channel_type`; returns once they are stored."""
        now = self.clock.now()

        def write(conn: Connection) -> set[str]:
            touched: set[str] = set()
            suppress = []
            for event in events:
                if event.provider_id:
                    moved = store.apply_event(conn, event.provider_id, event.kind.value, event.detail, now)
                    touched.update(campaign for campaign, _ in moved)
                if event.address and event.kind in SUPPRESSING:
                    suppress.append(_suppression(event, channel_type, now))
            if suppress:
                add_suppressions(conn, suppress)
            return touched

        for campaign_id in await self.db.write(write):
            self.hub.publish(campaign_id)
        log.info("inbound events recorded", channel_type=channel_type, events=len(events))


def _suppression(event: InboundEvent, channel_type: str, now: dt.datetime) -> dict[str, object]:
    return {
        "address": event.address,
        "channel_type": channel_type,
        "reason": event.kind.value[:16],
        "source": f"{channel_type} event: {event.detail}"[:200],
        "create_time": now,
    }
