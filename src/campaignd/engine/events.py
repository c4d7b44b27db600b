"""Inbound events from transports (SPEC §5): receipts move messages, opt-outs add suppressions."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import datetime as dt
import time
import weakref
from collections.abc import Mapping, Sequence

from sqlalchemy.engine import Connection

from campaignd import logs
from campaignd.changes import ChangeHub
from campaignd.clock import Clock
from campaignd.plugin import EventKind, InboundEvent, MessageEvent
from campaignd.store import events as event_store
from campaignd.store import messages as message_store
from campaignd.store.db import Database
from campaignd.store.suppressions import add_suppressions, opt_out, remove_opt_out

log = logs.get("campaignd.events")

# Events after which the address must not be contacted again on its channel type.
SUPPRESSING = frozenset(
    {EventKind.BOUNCED, EventKind.COMPLAINED, EventKind.UNSUBSCRIBED, EventKind.OPTED_OUT}
)
# Receipts can outrun the result of their own send: a provider may report delivery before the
# batch that sent the message is recorded (its provider id is written with the batch). Such a
# receipt is kept and applied again until its message is found, for at most this long.
PENDING_FOR = 300.0
PENDING_RETRY = 0.5
PENDING_LIMIT = 200_000
_RECEIPTS = frozenset({EventKind.DELIVERED, EventKind.FAILED, EventKind.BOUNCED})


APPLIED, DUPLICATE, REFUSED = "applied", "duplicate", "refused"
# At most this many events in one transaction of coalesced record_messages calls (a larger
# call goes alone), so that other writers do not wait long for the write lock.
COALESCE_EVENTS = 1000


@dataclasses.dataclass
class _Queue:
    """record_messages calls waiting on one event loop, and the task that writes them."""

    calls: list[tuple[list[MessageEvent], asyncio.Future[list[tuple[str, str]]]]] = dataclasses.field(
        default_factory=list
    )
    writer: asyncio.Task[None] | None = None


class EventRecorder:
    """The daemon's EventSink: applies a transport's inbound events in one transaction."""

    def __init__(self, database: Database, hub: ChangeHub, clock: Clock | None = None) -> None:
        self.db = database
        self.hub = hub
        self.clock = clock or Clock()
        # provider id -> (channel type, event, when first seen), in arrival order
        self.pending: dict[str, tuple[str, InboundEvent, float]] = {}
        self._retrying: asyncio.Task[None] | None = None
        # record_messages calls waiting for a transaction, per event loop (the API's, the main one)
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Queue] = (
            weakref.WeakKeyDictionary()
        )

    async def record(self, channel_type: str, events: Sequence[InboundEvent]) -> None:
        """Apply `events` of `channel_type`; returns once they are stored."""
        unmatched = await self._apply([(channel_type, e) for e in events])
        seen = time.monotonic()
        for channel_type_, event in unmatched:
            if len(self.pending) < PENDING_LIMIT:
                self.pending.setdefault(event.provider_id, (channel_type_, event, seen))
        if self.pending and (self._retrying is None or self._retrying.done()):
            self._retrying = asyncio.create_task(self._retry_pending())
        log.info("inbound events recorded", channel_type=channel_type, events=len(events))

    async def _apply(self, events: Sequence[tuple[str, InboundEvent]]) -> list[tuple[str, InboundEvent]]:
        """Apply events in one transaction; returns the receipts whose message was not found."""
        now = self.clock.now()

        def write(conn: Connection) -> tuple[set[str], list[tuple[str, InboundEvent]]]:
            about_messages: list[message_store.Event] = []
            about_parts: list[message_store.Event] = []
            for _, e in events:
                if e.provider_id:
                    about = about_parts if e.part else about_messages
                    key = message_store.provider_key(e.provider_id)
                    about.append(message_store.Event(key, e.kind.value, e.detail, e.reason))
            if about_parts:
                # A part kept of no message, and not a message's own id either, may belong to a
                # send not yet recorded: it is unknown below, and waits like any early receipt.
                whole, as_they_are = message_store.part_receipts(conn, about_parts)
                about_messages += whole + as_they_are
            touched, unknown = (
                message_store.apply_events(conn, about_messages, now) if about_messages else (set(), set())
            )
            unmatched = [
                (t, e)
                for t, e in events
                if message_store.provider_key(e.provider_id) in unknown and e.kind in _RECEIPTS
            ]
            suppress: list[dict[str, object]] = []
            for channel_type, event in events:
                if not event.address:
                    continue
                if event.kind in SUPPRESSING:
                    suppress.append(_suppression(event, channel_type, now))
                if event.kind is EventKind.OPTED_OUT:
                    # The recipient's own word outranks an earlier suppression of the number on
                    # the channel type (one added by hand, say): only their opt-in lifts it.
                    opt_out(conn, _suppression(event, channel_type, now))
                if event.kind is EventKind.OPTED_OUT and not event.provider_id:
                    # A reply answers the last message the number got on this channel type.
                    opted = message_store.opt_out_latest(conn, event.address, channel_type, event.detail, now)
                    if opted is not None:
                        touched.add(opted[0])
                elif event.kind is EventKind.OPTED_IN:
                    # In the order they came: a STOP and then a START leave the number sendable.
                    add_suppressions(conn, suppress)
                    suppress.clear()
                    remove_opt_out(conn, event.address, channel_type)
            if suppress:
                add_suppressions(conn, suppress)
            return touched, unmatched

        touched, unmatched = await self.db.write(write)
        for campaign_id in touched:
            self.hub.publish(campaign_id)
        return unmatched

    async def record_messages(self, events: Sequence[MessageEvent]) -> list[tuple[str, str]]:
        """Record events about messages, each at most once by its id; returns (status, reason)
        per event: applied, duplicate, or refused with why.

        Calls made on one event loop while a write of theirs is under way are written together,
        in order, in the next transaction (up to COALESCE_EVENTS events): a tracking pixel is one
        event per request, and a transaction each cost more than the event."""
        waiter: asyncio.Future[list[tuple[str, str]]] = asyncio.get_running_loop().create_future()
        queue = self._queues.setdefault(asyncio.get_running_loop(), _Queue())
        queue.calls.append((list(events), waiter))
        if queue.writer is None or queue.writer.done():
            # A context of its own: the write is every waiting caller's, not the first one's.
            queue.writer = asyncio.create_task(self._write_queued(queue), context=contextvars.Context())
        return await waiter

    async def _write_queued(self, queue: _Queue) -> None:
        try:
            await self._write_all(queue)
        except asyncio.CancelledError:
            # The loop is closing: no caller may wait for a write that will not come.
            for _, waiter in queue.calls:
                waiter.cancel()
            del queue.calls[:]
            raise

    async def _write_all(self, queue: _Queue) -> None:
        while queue.calls:
            taken, size = 0, 0
            while taken < len(queue.calls) and (
                not taken or size + len(queue.calls[taken][0]) <= COALESCE_EVENTS
            ):
                size += len(queue.calls[taken][0])
                taken += 1
            # The calls stay queued while they are written, for a cancellation to find them.
            calls = queue.calls[:taken]
            try:
                results = await self._record_messages([e for events, _ in calls for e in events])
            except Exception as exc:  # the store's fault: every call in the transaction gets it
                del queue.calls[:taken]
                for _, waiter in calls:
                    if not waiter.done():
                        waiter.set_exception(exc)
                continue
            del queue.calls[:taken]
            at = 0
            for events, waiter in calls:
                if not waiter.done():  # its caller may have gone (a closed HTTP connection)
                    waiter.set_result(results[at : at + len(events)])
                at += len(events)

    async def _record_messages(self, events: Sequence[MessageEvent]) -> list[tuple[str, str]]:
        """Record events about messages in one transaction."""
        now = self.clock.now()

        def write(conn: Connection) -> tuple[list[tuple[str, str]], set[str]]:
            seen = event_store.recorded(conn, (e.event_id for e in events))
            # The messages named by id, in one query: on PostgreSQL a query per event made the
            # round trips most of the transaction.
            # None: no such message, known without asking again.
            named: dict[int, event_store.Target | None] = dict.fromkeys(
                e.message[2] for e in events if e.message is not None
            )
            named.update(event_store.by_ids(conn, named))
            results: list[tuple[str, str]] = []
            suppress: list[Mapping[str, object]] = []
            touched: set[str] = set()
            for event in events:
                if event.event_id in seen:
                    results.append((DUPLICATE, ""))
                    continue
                target = _find(conn, event, named)
                if target is None:
                    results.append((REFUSED, "message not found"))
                    continue
                kind = "soft_bounced" if event.kind is EventKind.BOUNCED and event.soft else event.kind.value
                if _too_early(target.state, kind):
                    # Not stored, so that the source's retry applies it once the send is recorded;
                    # stored now, it could not move the message, and the retry would be a duplicate.
                    results.append((REFUSED, "message not sent yet"))
                    continue
                applied = event_store.record(
                    conn, event.event_id, target, kind, now, url=event.url, detail=event.detail
                )
                seen.add(event.event_id)
                if kind in message_store.EVENT_MOVES:
                    named.pop(target.id, None)  # it may have moved: a later event reads it again
                if not applied:
                    results.append((DUPLICATE, ""))
                    continue
                touched.add(target.campaign_id)
                if event.kind in SUPPRESSING and not event.soft:
                    suppress.append(event_store.suppression(target, event.kind.value, event.detail, now))
                results.append((APPLIED, ""))
            if suppress:
                add_suppressions(conn, suppress)
            return results, touched

        results, touched = await self.db.write(write)
        for campaign_id in touched:
            self.hub.publish(campaign_id)
        log.info("message events recorded", events=len(events), applied=sum(r == APPLIED for r, _ in results))
        return results

    async def _retry_pending(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while self.pending:
                await asyncio.sleep(PENDING_RETRY)
                cutoff = time.monotonic() - PENDING_FOR
                waiting = list(self.pending.items())
                for provider_id, (_, _, seen) in waiting:
                    if seen < cutoff:
                        del self.pending[provider_id]
                try:
                    unmatched = await self._apply([(t, e) for _, (t, e, _) in waiting])
                except Exception as exc:  # the store is unavailable now: try again later
                    log.warning("pending receipts not applied", error=str(exc))
                    continue
                still = {event.provider_id for _, event in unmatched}
                for provider_id, _ in waiting:
                    if provider_id not in still:
                        self.pending.pop(provider_id, None)


def _find(
    conn: Connection, event: MessageEvent, named: Mapping[int, event_store.Target | None]
) -> event_store.Target | None:
    if event.message is not None:
        campaign_id, channel_id, message_id = event.message
        if message_id not in named:  # read before an earlier event moved it
            return event_store.by_id(conn, *event.message)
        target = named[message_id]
        if (
            target is None
            or campaign_id not in ("", target.campaign_id)
            or channel_id not in ("", target.channel_id)
        ):
            return None
        return target
    if event.provider_id:
        return event_store.by_provider_id(conn, event.provider_id)
    if event.recipient is not None:
        return event_store.by_address(conn, *event.recipient)
    return None


def _too_early(state: str, kind: str) -> bool:
    """Whether an event comes before its message's send: it is QUEUED or RETRYING, or SENDING
    and the event is a receipt (which moves a message only from SENT). An open, a click or an
    unsubscribe while SENDING is the recipient's: the message reached them before its batch's
    result was written."""
    return state in ("queued", "retrying") or (state == "sending" and kind in message_store.EVENT_MOVES)


def _suppression(event: InboundEvent, channel_type: str, now: dt.datetime) -> dict[str, object]:
    return {
        "address": event.address,
        "channel_type": channel_type,
        "reason": event.kind.value[:16],
        "source": f"{channel_type} event: {event.detail}"[:200],
        "create_time": now,
    }
