"""The engine loop and the channel workers.

Every tick the engine starts SCHEDULED channels whose time has come, activates QUEUED ones when a
slot is free, completes RUNNING ones with nothing left to send, fails messages whose sender died,
and keeps one worker per RUNNING channel. A worker leases a batch, hands it to the channel's
plugin with the channel's gate, and records the results in one transaction.

The gate is the pause barrier: Pause and Stop close it, in this process, before their call
returns, and a plugin starts a send only when the gate admits it. Before it admits a send, the
message is marked started in the database, so that after a crash only the sends that may have
started are in doubt. Results the plugin returned are kept until the database takes them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime as dt
import functools
import math
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.engine import Connection

from campaignd import logs, metrics
from campaignd.campaigns import CampaignManager
from campaignd.changes import ChangeHub
from campaignd.clock import Clock
from campaignd.cluster.role import ALONE, EngineRole
from campaignd.config import EngineSettings, Settings
from campaignd.engine.rates import RateLimiter, RecentCount
from campaignd.engine.transports import OpenTransport, Transports, route
from campaignd.errors import ApiError, internal_message, new_error_id
from campaignd.lifecycle import ChannelState, Operation
from campaignd.model import CampaignRecord, ChannelRecord, TransportShare
from campaignd.plugin import (
    LABEL_LENGTH,
    PROVIDER_ID_LENGTH,
    ChannelInfo,
    Recipient,
    SendResult,
    SendStatus,
    Transport,
)
from campaignd.plugin.manager import PluginCallError, Plugins, TransportOpenError
from campaignd.store import channels as channel_store
from campaignd.store import contacts as contact_store
from campaignd.store import counts as count_store
from campaignd.store import messages as message_store
from campaignd.store.channels import ChannelRow
from campaignd.store.db import Database, Fault, storage_fault

log = logs.get("campaignd.engine")
Key = tuple[str, str]  # (campaign id, channel id)
RATE_WINDOW = 10  # seconds over which this daemon's send rate is measured, for its metrics
# Seconds a worker reuses the time zones of its channel's waiting messages: reading them scans
# every waiting message, which before each lease made a large channel's sending quadratic.
ZONES_FOR = 5.0
# ... and at least this many times as long as the last read took, so that the reads take at most
# a fiftieth of the database's time however many messages wait (1,000,000: 120-180 ms a read).
ZONES_SPACING = 50
# The longest wait between two passes that count SENT messages as ASSUMED_DELIVERED.
ASSUME_EVERY = 30.0
# A lease under a rate limit takes about this many seconds of the rate (at most batch_size).
BATCH_SECONDS = 1.0


@dataclasses.dataclass
class _BatchOutcome:
    outcomes: list[message_store.Outcome]
    fatal: str  # when every transport of the channel failed fatally: why


class ChannelGate:
    """Admits sends of one channel while it runs, at its rate, and while this daemon may send
    (a cluster member whose membership lease is about to lapse may not: `may_send`)."""

    def __init__(self, limiter: RateLimiter | None, may_send: Callable[[], bool] = ALONE.may_send) -> None:
        # Closed until the tick opens it, so a gate made while a Pause holds its channel admits nothing.
        self._open = False
        self.limiter = limiter
        # The sends this daemon started, as they start: its own send rate.
        self.started = RecentCount(RATE_WINDOW)
        self.may_send = may_send

    @property
    def open(self) -> bool:
        """Whether a send may start now."""
        return self._open and self.may_send()

    @open.setter
    def open(self, value: bool) -> None:
        self._open = value

    async def admit(self, weight: float = 1.0, reserved: bool = False) -> bool:
        """True when a send may start now; the caller starts it with no further await. With
        `reserved`, the units held by `reserve` are taken, or given up when the gate is closed."""
        if not self.open:
            self.release(weight, reserved)
            return False
        if self.limiter is not None:
            await self.limiter.acquire(weight, reserved)
        return self.open

    async def reserve(self, weight: float = 1.0) -> None:
        """Wait until the rate would let `weight` units go, and hold them."""
        if self.limiter is not None:
            await self.limiter.reserve(weight)

    def release(self, weight: float = 1.0, reserved: bool = True) -> None:
        """Give up units held by `reserve`."""
        if reserved and self.limiter is not None:
            self.limiter.release(weight)


class TransportGate:
    """A channel's gate for sends through one transport: the transport's rate, then the channel's."""

    def __init__(self, channel: ChannelGate, limiter: RateLimiter | None) -> None:
        self.channel = channel
        self.limiter = limiter

    async def admit(self, weight: float = 1.0, reserved: bool = False) -> bool:
        """As ChannelGate.admit; the channel's open check comes last, right before the send."""
        if not self.channel.open:
            self.release(weight, reserved)
            return False
        try:
            if self.limiter is not None:
                await self.limiter.acquire(weight, reserved)
        except BaseException:
            self.channel.release(weight, reserved)
            raise
        return await self.channel.admit(weight, reserved)

    async def reserve(self, weight: float = 1.0) -> None:
        """As ChannelGate.reserve, for both rates."""
        if self.limiter is not None:
            await self.limiter.reserve(weight)
        try:
            await self.channel.reserve(weight)
        except BaseException:
            self.release(weight, channel=False)
            raise

    def release(self, weight: float = 1.0, reserved: bool = True, channel: bool = True) -> None:
        """Give up units held by `reserve`."""
        if reserved and self.limiter is not None:
            self.limiter.release(weight)
        if channel:
            self.channel.release(weight, reserved)


class _StartMarks:
    """Makes each send's start durable before it happens: the messages of one plugin call are
    marked started in the database as the plugin asks the gate for them.

    Marks are written in groups: one write marks every message asked for meanwhile, plus a few
    of the next ones in the batch's order: twice as many as were asked for during the last
    write, or what this call sends in HORIZON seconds at its pace so far (at first, the pace of
    the channel's previous call), at most MAX_AHEAD. At full speed a send rarely waits for a
    write, and writes stay few; at low speed nothing is marked early. A message marked but not
    sent is handed back unstarted and unmarked; only a crash in between leaves it in doubt.
    """

    # Measured with bench/email_throughput.py: 50 ms cost a fifth of the throughput in send
    # stalls behind contended writes; 250 ms costs a few percent.
    MAX_AHEAD = 200
    HORIZON = 0.25

    def __init__(
        self, write: Callable[[list[int]], Awaitable[set[int]]], ids: Sequence[int], pace: float = 0.0
    ) -> None:
        self._write = write
        self._order = list(ids)
        self._members = set(self._order)
        self._cursor = 0
        self._marked: set[int] = set()
        self._lost: set[int] = set()  # no longer leased by this daemon: never to be sent by it
        self._wanted: dict[int, None] = {}
        self._writing: asyncio.Task[bool] | None = None
        # Without it, every call began marking one message at a time and took a dozen writes
        # to reach its pace.
        self._ahead = min(self.MAX_AHEAD, int(pace * self.HORIZON))
        self._asked = 0
        self._first_ask = 0.0

    @property
    def pace(self) -> float:
        """Sends asked for per second so far (0 before the second)."""
        if self._asked < 2:
            return 0.0
        return (self._asked - 1) / max(0.1, time.monotonic() - self._first_ask)

    async def mark(self, message_id: int | None) -> bool:
        """True once `message_id` is marked started; None (a plugin that does not name the
        message) marks every message of the call. False: it must not be sent."""
        self._asked += 1
        if self._asked == 1:
            self._first_ask = time.monotonic()
        if message_id not in self._marked:  # usually it is: marked ahead
            targets = [message_id] if message_id in self._members else self._order
            while True:
                missing = [m for m in targets if m not in self._marked and m not in self._lost]
                if not missing:
                    break
                self._wanted.update(dict.fromkeys(missing))
                if self._writing is None:
                    self._writing = asyncio.ensure_future(self._flush())
                if not await asyncio.shield(self._writing):
                    return False
            if any(m in self._lost for m in targets):
                return False
        if self._writing is None and len(self._marked) - self._asked < self._ahead // 2:
            self._writing = asyncio.ensure_future(self._flush())
        return True

    async def _flush(self) -> bool:
        batch = [m for m in self._wanted if m not in self._marked]
        self._wanted.clear()
        # Ahead of what was asked by at most `_ahead`, counting the marks not yet used.
        limit = len(batch) + max(0, self._ahead - max(0, len(self._marked) - self._asked))
        while len(batch) < limit and self._cursor < len(self._order):
            candidate = self._order[self._cursor]
            self._cursor += 1
            if candidate not in self._marked and candidate not in self._wanted and candidate not in batch:
                batch.append(candidate)
        asked = self._asked
        try:
            if batch:
                marked = await self._write(batch)
                self._marked |= marked
                self._lost.update(m for m in batch if m not in marked)
            return True
        except Exception as exc:
            if storage_fault(exc) is None:
                log.exception("could not mark sends as started")
            return False
        finally:
            # The pace over at least 100 ms: the first sends of a call, admitted together, say
            # little about how fast the rest will go.
            self._ahead = min(self.MAX_AHEAD, max(2 * (self._asked - asked), int(self.pace * self.HORIZON)))
            self._writing = None


class _MarkWriter:
    """One write at a time marks what every batch in flight asked for meanwhile, so that marks
    cost a write per round, not per batch."""

    def __init__(self, write: Callable[[list[int]], Awaitable[set[int]]]) -> None:
        self._write = write
        self._queued: list[tuple[list[int], asyncio.Future[set[int]]]] = []
        self._running: asyncio.Task[None] | None = None

    async def mark(self, ids: list[int]) -> set[int]:
        """Mark `ids` started; returns those still leased by this daemon."""
        answer: asyncio.Future[set[int]] = asyncio.get_running_loop().create_future()
        self._queued.append((ids, answer))
        if self._running is None:
            self._running = asyncio.ensure_future(self._run())
        return await answer

    async def _run(self) -> None:
        try:
            while self._queued:
                round_, self._queued = self._queued, []
                try:
                    marked = await self._write([i for ids, _ in round_ for i in ids])
                except Exception as exc:
                    for _, answer in round_:
                        if not answer.done():
                            answer.set_exception(exc)
                    continue
                for ids, answer in round_:
                    if not answer.done():
                        answer.set_result({i for i in ids if i in marked})
        finally:
            self._running = None


class _MarkingGate:
    """The gate a plugin gets: the channel's (or transport's) gate, then the start mark."""

    def __init__(
        self,
        inner: ChannelGate | TransportGate,
        channel: ChannelGate,
        marks: _StartMarks,
        opened: OpenTransport | None = None,
    ) -> None:
        self.inner = inner
        self.channel = channel
        self.marks = marks
        self.opened = opened

    async def admit(self, weight: float = 1.0, message_id: int | None = None) -> bool:
        """As ChannelGate.admit, and the message is marked started before the answer is yes; no
        for a transport that drains."""
        if not self.channel.open or self._draining():
            return False
        # The rate's units are held before the mark, so that asks come at the pace of sends and a
        # slow channel is not marked long before it sends, and taken after it, as the last wait
        # before the send: on a token taken before a mark that waited for a write, the send would
        # go late and a server could see more than the rate in some second.
        await self.inner.reserve(weight)
        try:
            marked = await self.marks.mark(message_id)
        except BaseException:
            self.inner.release(weight)
            raise
        if not marked or self._draining():
            self.inner.release(weight)
            return False
        if not await self.inner.admit(weight, reserved=True):
            return False
        self.channel.started.add()
        return True

    def _draining(self) -> bool:
        return self.opened is not None and self.opened.draining


def _allowance(count: int, limiters: Iterable[RateLimiter | None], config: EngineSettings) -> float:
    """Seconds a plugin gets for `count` sends: the send timeout, plus the time the slowest of the
    rate limits makes the batch wait, which is not the plugin's."""
    rate = min((limiter.rate for limiter in limiters if limiter is not None), default=0.0)
    return config.sending_timeout + (count / rate if rate else 0.0)


# What is kept of a SendResult's ids and words (their columns' sizes).
_KEPT = {
    "provider_id": PROVIDER_ID_LENGTH,
    "part_ids": PROVIDER_ID_LENGTH,
    "reason": LABEL_LENGTH,
    "outcome": LABEL_LENGTH,
}
_CUT: set[str] = set()  # the result fields a plugin gave too long, each logged once


def _stored(result: SendResult) -> SendResult:
    """`result` with its ids and words cut to the columns that keep them. A plugin's longer ones
    would fail the write of the whole batch's results on PostgreSQL."""
    cut: dict[str, Any] = {
        name: getattr(result, name)[:LABEL_LENGTH]
        for name in ("reason", "outcome")
        if len(getattr(result, name)) > LABEL_LENGTH
    }
    if len(result.provider_id) > PROVIDER_ID_LENGTH:
        cut["provider_id"] = message_store.provider_key(result.provider_id)
    if any(len(p) > PROVIDER_ID_LENGTH for p in result.part_ids):
        cut["part_ids"] = tuple(map(message_store.provider_key, result.part_ids))
    if not cut:
        return result
    for name in cut.keys() - _CUT:
        _CUT.add(name)
        log.warning(
            "a plugin gave a result field longer than is kept; it is cut", field=name, limit=_KEPT[name]
        )
    return dataclasses.replace(result, **cut)


def owner_id() -> str:
    """A name for this process's leases, unique across hosts and restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Engine:
    """Sends what the lifecycle says may be sent."""

    def __init__(
        self,
        database: Database,
        plugins: Plugins,
        campaigns: CampaignManager,
        hub: ChangeHub,
        settings: Callable[[], Settings],
        transports: Transports,
        clock: Clock | None = None,
        role: EngineRole = ALONE,
    ) -> None:
        self.db = database
        # Alone, or a member of a cluster: whether this daemon leads, may send, and its share of rates.
        self.role = role
        self.plugins = plugins
        self.transports = transports
        self.campaigns = campaigns
        self.hub = hub
        self.settings = settings
        self.clock = clock or Clock()
        self.owner = owner_id()
        self._gates: dict[Key, ChannelGate] = {}
        # Holds per (campaign, channel or "*"): a Pause here and one from another daemon may overlap.
        self._held: collections.Counter[Key] = collections.Counter()
        self._workers: dict[Key, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._running_since: dict[Key, float] = {}
        self._reopens: dict[Key, dt.datetime] = {}
        # Per channel: until when (monotonic) its waiting messages' time zones are reused, and they.
        self._zones: dict[Key, tuple[float, list[str | None]]] = {}
        # Per channel: where its next lease of QUEUED messages starts looking (store/messages.py).
        self._cursors: dict[Key, message_store.LeaseCursor] = {}
        # (campaign name, channel id) -> sends per second its last plugin call asked for
        self._paces: dict[tuple[str, str], float] = {}
        self._guard_base: dict[Key, tuple[int, int]] = {}
        self._types: dict[Key, str] = {}
        self._chores: set[asyncio.Future[None]] = set()
        self._keeping_open: asyncio.Future[None] | None = None
        self._mark_writer = _MarkWriter(self._write_marks)
        # Holds begun so far, and the count when the tick read the channels: a tick whose read
        # may predate a Pause or Stop must not reopen a gate that call closed.
        self._holds = 0
        self._holds_at_read = 0
        self._next_assume = 0.0
        database.on_fault(self._storage_changed)

    def _storage_changed(self, fault: Fault | None, ended: Fault | None) -> None:
        """A storage fault closes every gate: nothing starts that could not be recorded. When it
        ends, the channels go on, or, after a long fault, are paused for an operator to look."""
        if fault is not None:
            for gate in self._gates.values():
                gate.open = False
            log.error("sending stopped: the database cannot be written", cause=fault.cause)
            return
        assert ended is not None
        seconds = time.monotonic() - ended.since
        if seconds > self.config.storage_pause_after:
            reason = f"the database could not be written for {seconds:.0f} s: {ended.cause}"
            for key in list(self._running_since):
                task = asyncio.ensure_future(self._pause_quietly(key, "system", reason))
                self._chores.add(task)
                task.add_done_callback(self._chores.discard)
        self.wake()

    async def _pause_quietly(self, key: Key, cause: str, reason: str) -> None:
        try:
            await self._pause(key, cause, reason)
        except Exception:
            log.exception("could not pause the channel", campaign=key[0], channel=key[1])

    def rate(self, campaign_id: str, channel_id: str) -> float:
        """Sends this daemon started per second for a channel over the last 10 seconds, or over
        the time it has run when that is shorter (the campaign's rate is in its report)."""
        key = (campaign_id, channel_id)
        gate = self._gates.get(key)
        return gate.started.per_second(self._running_since.get(key)) if gate is not None else 0.0

    def window_reopens(self, campaign_id: str, channel_id: str) -> dt.datetime | None:
        """When a channel waiting for its send window can send again, if it is waiting."""
        return self._reopens.get((campaign_id, channel_id))

    @property
    def config(self) -> EngineSettings:
        """The engine's settings as they are now (a reload may change them)."""
        return self.settings().engine

    def wake(self) -> None:
        """Run a tick now, e.g. after a launch or resume."""
        self._wake.set()

    @contextlib.asynccontextmanager
    async def hold(self, campaign_id: str, channel_id: str = "") -> AsyncIterator[None]:
        """Close the gates of a campaign's channels (or of one) for the length of a Pause or Stop.

        The gates close before the state changes, so no send starts after the call returns; while
        held, no tick reopens them. If the state did not change, the next tick reopens them.
        """
        hold = self.close_gates(campaign_id, channel_id)
        try:
            yield
        finally:
            self.reopen(hold)

    def close_gates(self, campaign_id: str, channel_id: str = "") -> Key:
        """Close the gates of a campaign's channels (or of one) until `reopen` is given what this
        returns; meanwhile no tick opens them (a Pause on this daemon, or on another one)."""
        hold = (campaign_id, channel_id or "*")
        self._held[hold] += 1
        self._holds += 1
        for key, gate in self._gates.items():
            if self._is_held(key):
                gate.open = False
        return hold

    def reopen(self, hold: Key) -> None:
        """End a hold of `close_gates`; the next tick opens the gates of channels still RUNNING."""
        self._held[hold] -= 1
        if self._held[hold] <= 0:
            del self._held[hold]
        # A tick that read the channels before the hold ended may have read them before the call
        # changed their state: it must not open them either.
        self._holds += 1
        self.wake()

    async def fence(self) -> None:
        """Close every gate and end every worker: what this daemon leased is no longer its own (its
        membership lapsed). Once it has rejoined, the tick opens the gates of RUNNING channels."""
        self._holds += 1
        for gate in self._gates.values():
            gate.open = False
        workers = [w for w in self._workers.values() if not w.done()]
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    def _is_held(self, key: Key) -> bool:
        return (key[0], "*") in self._held or key in self._held

    async def run(self) -> None:
        """Tick until stopped."""
        while not self._stopping:
            try:
                await self.tick()
            except Exception as exc:
                if storage_fault(exc) is None:
                    log.exception("engine tick failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.tick_interval)

    async def stop(self, grace: float) -> None:
        """Stop leasing and give workers `grace` seconds to finish and record what is in flight."""
        self._stopping = True
        self._wake.set()
        if self._keeping_open is not None:
            self._keeping_open.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeping_open
        for gate in self._gates.values():
            gate.open = False
        workers = [w for w in self._workers.values() if not w.done()]
        if workers:
            _, pending = await asyncio.wait(workers, timeout=grace)
            for worker in pending:
                # Their SENDING messages are resolved once the lease runs out (SPEC §8): started
                # ones become ambiguous, the rest are queued again.
                worker.cancel()
        log.info("engine stopped", workers=len(workers))

    # -- the tick ---------------------------------------------------------------------------------

    async def tick(self) -> None:
        """One pass over the channels that need the engine."""
        if self.db.fault is not None:
            return  # the database's probe tells when it works again
        if self._keeping_open is None or self._keeping_open.done():
            # Apart from the tick: a plugin may take up to OPEN_TIMEOUT to open a transport.
            self._keeping_open = asyncio.ensure_future(self.transports.keep_open())
        now = self.clock.now()
        # In a cluster only the leader sweeps (and starts and activates channels, below).
        leads = self.role.leads()
        expired = (
            await self.db.write(
                functools.partial(
                    message_store.expire_leases,
                    now=now,
                    keep_owner=self.owner,
                    max_attempts=self.config.max_attempts,
                )
            )
            if leads
            else {}
        )
        for (campaign_id, channel_id), moved in expired.items():
            log.warning(
                "leases of a daemon that stopped expired",
                campaign=campaign_id,
                channel=channel_id,
                requeued=moved.get("queued", 0),
                # On a channel stopped or failed meanwhile, what would have waited again.
                cancelled=moved.get("cancelled", 0),
                ambiguous=moved.get("failed", 0) + moved.get("retrying", 0),
                resent=moved.get("retrying", 0),
            )
            self.hub.publish(campaign_id)
        assumed = await self._assume_delivered(now) if leads else {}
        for campaign_id, _ in assumed:
            self.hub.publish(campaign_id)
        self._holds_at_read = self._holds
        rows = await self.db.read(channel_store.channels_in, ["scheduled", "queued", "running"])
        active = set()
        for row in rows:
            key = (row.campaign_id, row.channel_id)
            if row.state == "running":
                active.add(key)
            try:
                await self._tend(row, key, now)
            except Exception as exc:
                if storage_fault(exc) is not None:
                    raise  # the database, not the channel: nothing to fail

                # One channel's trouble (a plugin hook raising, a bad saved filter) fails that channel,
                # not the tick that every other channel depends on.
                # The details (SQL, exception text) go to the log only, under an id the error names.
                error_id = new_error_id()
                log.error(
                    "channel failed in the engine",
                    campaign=row.campaign_id,
                    channel=row.channel_id,
                    error_id=error_id,
                    exc_info=exc,
                )
                await self.fail(row.campaign_id, row.channel_id, "ENGINE_ERROR", internal_message(error_id))
        for key, gate in self._gates.items():
            if key not in active:
                gate.open = False
        for key in set(self._running_since) - active:
            self._running_since.pop(key, None)
            self._reopens.pop(key, None)
            self._zones.pop(key, None)
            self._cursors.pop(key, None)
            self._paces.pop((f"campaigns/{key[0]}", key[1]), None)
        self._publish_metrics(active)
        depths = await self.db.read(count_store.queue_depths)
        # Every loaded type, so that one whose last channel stopped reads 0, not its last depth.
        for channel_type in {*self.plugins.types, *depths}:
            metrics.QUEUE_DEPTH.labels(channel_type).set(depths.get(channel_type, 0))

    async def _assume_delivered(self, now: dt.datetime) -> dict[tuple[str, str], int]:
        """SENT messages without a receipt for `assume_delivered_after`: ASSUMED_DELIVERED.

        The statement reads every SENT message of every channel whose type has receipts, which
        while receipts lag is most of a large campaign: it runs every tenth of that delay (at
        most every ASSUME_EVERY seconds), not at every tick."""
        began = time.monotonic()
        if began < self._next_assume:
            return {}
        after = self.config.assume_delivered_after
        receipts = [t.name for t in self.plugins.types.values() if "receipts" in t.capabilities]
        cutoff = now - dt.timedelta(seconds=after)
        assumed = await self.db.write(message_store.assume_delivered, cutoff, receipts, now)
        # Only a pass that went through: after a storage fault the next tick tries again.
        self._next_assume = began + min(ASSUME_EVERY, after / 10)
        return assumed

    async def _tend(self, row: ChannelRow, key: Key, now: dt.datetime) -> None:
        # Only the leader starts and activates channels; every member sends.
        leads = self.role.leads()
        if leads and row.state == "scheduled" and row.schedule_time is not None and row.schedule_time <= now:
            await self._start(row)
        elif leads and row.state == "queued":
            # Channels that became QUEUED first come first: the rows are in that order.
            if await self.campaigns.activate(row.campaign_id, row.channel_id, row.type):
                self.wake()
        elif row.state == "running":
            await self._keep_running(key, row)

    def _publish_metrics(self, active: set[Key]) -> None:
        # Every loaded type: one whose channels all stopped reads 0, not its last rate.
        rates = dict.fromkeys(self.plugins.types, 0.0)
        for key in active:
            channel_type = self._types.get(key, "")
            rates[channel_type] = rates.get(channel_type, 0.0) + self.rate(*key)
        for channel_type, rate in rates.items():
            metrics.SEND_RATE.labels(channel_type).set(rate)

    async def _start(self, row: ChannelRow) -> None:
        try:
            await self.campaigns.start(row.campaign_id, row.channel_id)
        except ApiError as exc:
            # A channel that no longer validates fails VALIDATION_FAILED.
            await self.fail(row.campaign_id, row.channel_id, exc.reason, exc.message)
        self.wake()

    async def _keep_running(self, key: Key, row: ChannelRow) -> None:
        if key not in self._running_since:
            # The guard judges the sends since the channel (re)started running, so that a resumed
            # channel is not paused again at once for the failures it was paused for.
            self._guard_base[key] = await self._finished_counts(key)
        fresh_run = key not in self._running_since
        self._running_since.setdefault(key, self.clock.monotonic())
        self._types[key] = row.type
        gate = self._gates.get(key)
        # In a cluster each member sends its share of the channel's rate.
        rate = row.rate_limit * self.role.rate_share()
        if gate is None:
            limiter = RateLimiter(rate) if rate > 0 else None
            gate = self._gates[key] = ChannelGate(limiter, self.role.may_send)
        elif gate.limiter is not None and rate > 0:
            gate.limiter.set_rate(rate)
        if fresh_run:
            # Likewise the rate: sends from before a pause would inflate the rate after it.
            gate.started = RecentCount(RATE_WINDOW)
        fresh = self._holds == self._holds_at_read
        if fresh and not self._is_held(key) and not self._stopping and self.db.fault is None:
            gate.open = True
        worker = self._workers.get(key)
        if worker is not None and not worker.done():
            return
        remaining = await self.db.read(count_store.unfinished, *key)
        if remaining == 0:
            if await self.campaigns.system_transition(
                *key, Operation.COMPLETE, cause="system", reason="every message is done"
            ):
                self._gates.pop(key, None)
            return
        if gate.open:
            self._workers[key] = asyncio.create_task(
                self._work(key, row, gate), name=f"send {key[0]}/{key[1]}"
            )

    # -- a worker ---------------------------------------------------------------------------------

    async def _work(self, key: Key, row: ChannelRow, gate: ChannelGate) -> None:
        campaign_id, channel_id = key
        record = await self.campaigns.get(campaign_id)
        channel = record.channel(channel_id)
        if channel is None:
            return
        info = ChannelInfo(record.name, channel_id, channel.type, channel.content)
        self._zones.pop(key, None)
        # Several batches in flight, so that the provider is kept busy while one batch's results
        # are written and the next batch is leased.
        lanes = [
            self._lane(key, row, gate, record, channel, info) for _ in range(self.config.batches_in_flight)
        ]
        for ended in await asyncio.gather(*lanes, return_exceptions=True):
            if isinstance(ended, Exception) and storage_fault(ended) is not None:
                # Nothing was lost: a lease or read failed; the tick starts the worker again.
                log.warning("a batch lane stopped: the database cannot be used", campaign=campaign_id)
            elif isinstance(ended, BaseException):
                log.error("a batch lane failed", campaign=campaign_id, exc_info=ended)

    async def _lane(
        self,
        key: Key,
        row: ChannelRow,
        gate: ChannelGate,
        record: CampaignRecord,
        channel: ChannelRecord,
        info: ChannelInfo,
    ) -> None:
        campaign_id, channel_id = key
        while gate.open and not self._stopping:
            config = self.config
            targets = self._targets(info, channel.transports)
            if not await self._transports_ready(key, info, channel.transports, targets):
                return
            zones = await self._open_zones(key, row)
            if zones is not None and not zones:
                return  # every recipient's window is closed; a later tick looks again
            now = self.clock.now()
            expiry = now + dt.timedelta(seconds=config.sending_timeout)
            batch = await self.db.write(
                functools.partial(
                    message_store.lease,
                    campaign_id=campaign_id,
                    channel_id=channel_id,
                    owner=self.owner,
                    limit=self._batch_limit(gate, targets, config),
                    now=now,
                    expiry=expiry,
                    zones=zones,
                    channel_type=info.type,
                    cursor=self._cursors.setdefault(key, message_store.LeaseCursor()),
                )
            )
            if not batch:
                return
            fields = await self.db.read(
                contact_store.contact_fields, [m.contact for m in batch if m.contact is not None]
            )
            recipients = [
                Recipient(m.id, m.address, fields.get(m.contact or 0, {}), m.attempts + 1) for m in batch
            ]
            renewing = asyncio.create_task(self._renew([m.id for m in batch], config.sending_timeout))
            try:
                outcomes = await self._send(info, targets, batch, recipients, gate, config)
            except PluginCallError as exc:
                await self._record(
                    key,
                    [
                        message_store.Outcome(m.id, "failed", error=str(exc)[:2000], reason="plugin_error")
                        for m in batch
                    ],
                )
                await self._kept(key, functools.partial(self.fail, *key, "PLUGIN_ERROR", str(exc)))
                return
            finally:
                renewing.cancel()
            await self._record(key, outcomes.outcomes)
            if outcomes.fatal:
                await self._kept(key, functools.partial(self.fail, *key, "TRANSPORT_FAILED", outcomes.fatal))
                return
            if await self._guard(key, record):
                return

    def _batch_limit(
        self, gate: ChannelGate, targets: list[tuple[Transport, int]] | None, config: EngineSettings
    ) -> int:
        """How many messages a lease takes: `batch_size`, or under a rate limit the lane's part of
        BATCH_SECONDS of the rate, if less. A batch's results are written when the whole batch is
        sent, so under a low rate a full batch would hold progress still for batch_size / rate
        seconds (SPEC §4.6: progress moves at least every second). Never fewer than the lane's
        part of the transports' concurrency: sends that last (calls) need that many at once."""
        rates = [gate.limiter.rate] if gate.limiter is not None else []
        concurrency = 0
        total = sum(percent for _, percent in targets or ())
        for transport, percent in targets or ():
            if percent <= 0:
                continue
            share = self.transports.share(transport)
            concurrency += share.concurrency
            if share.rate > 0:
                # The batch is split by percent: transport i takes p_i of it at its rate r_i, so
                # a second's worth of the batch is the least r_i / p_i.
                rates.append(share.rate * total / percent)
        if not rates:
            return config.batch_size
        # The lanes share the rate: each takes its part of the second, so that all of them finish
        # within it rather than together after batches_in_flight seconds.
        lanes = max(1, config.batches_in_flight)
        wanted = max(math.ceil(min(rates) * BATCH_SECONDS / lanes), math.ceil(concurrency / lanes), 1)
        return min(config.batch_size, wanted)

    async def _transports_ready(
        self,
        key: Key,
        info: ChannelInfo,
        shares: Sequence[TransportShare],
        targets: list[tuple[Transport, int]] | None,
    ) -> bool:
        """Whether a batch may be leased: a channel with transports needs one usable now."""
        if targets is None or any(self.transports.usable(t.name) for t, _ in targets):
            return True
        if not targets:
            # A reload took away every transport the channel names: it waits, PAUSED, for an
            # operator to configure one and resume it.
            names = ", ".join(s.transport for s in shares) or f"any of type {info.type}"
            await self._pause(key, "error", f"no configured transport: {names}")
        elif fatal := self._all_fatal(targets):
            await self.fail(*key, "TRANSPORT_FAILED", fatal)
        # Otherwise every transport rests; a later tick looks again.
        return False

    def _all_fatal(self, targets: list[tuple[Transport, int]]) -> str:
        """When every transport of a channel failed fatally, each one's error; else ""."""
        errors = [
            f"{t.name}: {self.transports.fatal(t.name)}" for t, _ in targets if self.transports.fatal(t.name)
        ]
        return "; ".join(errors) if len(errors) == len(targets) else ""

    def _targets(
        self, info: ChannelInfo, shares: Sequence[TransportShare]
    ) -> list[tuple[Transport, int]] | None:
        declared = self.plugins.types.get(info.type)
        if declared is None or not declared.uses_transports:
            return None
        return self.plugins.transports_for(info.type, shares)

    async def _send(
        self,
        info: ChannelInfo,
        targets: list[tuple[Transport, int]] | None,
        batch: list[message_store.Leased],
        recipients: list[Recipient],
        gate: ChannelGate,
        config: EngineSettings,
    ) -> _BatchOutcome:
        """Send a batch, through the channel's transports (`targets`) when its type has them."""
        if targets is None:
            seconds = _allowance(len(recipients), [gate.limiter], config)
            marks = self._marks(info, recipients)
            marking = _MarkingGate(gate, gate, marks)
            results = await self.plugins.send(info.type, info, recipients, marking, seconds)
            self._paces[info.campaign, info.channel_id] = marks.pace
            outcomes = self._outcomes(batch, results, config)
            started = [r for r in results if r.status != SendStatus.NOT_STARTED]
            fatal = (
                started[-1].error or "transport failure" if started and all(r.fatal for r in started) else ""
            )
            return _BatchOutcome(outcomes, fatal)
        chosen = route([r.address for r in recipients], targets, self.transports.usable)
        groups: dict[str, tuple[Transport, list[Recipient]]] = {}
        unrouted: list[Recipient] = []
        for recipient, transport in zip(recipients, chosen, strict=True):
            if transport is None:
                unrouted.append(recipient)
            else:
                groups.setdefault(transport.name, (transport, []))[1].append(recipient)
        sent = await asyncio.gather(
            *(self._send_through(info, t, group, gate, config) for t, group in groups.values())
        )
        results = [r for part in sent for r in part]
        # No transport usable: they wait, unattempted, for one to come back.
        results += [SendResult(r.message_id, SendStatus.NOT_STARTED) for r in unrouted]
        via = {r.message_id: t.name for t, group in groups.values() for r in group}
        failover = any(self.transports.usable(t.name) for t, _ in targets)
        outcomes = self._outcomes(batch, results, config, via=via, transports=True, failover=failover)
        return _BatchOutcome(outcomes, self._all_fatal(targets))

    async def _send_through(
        self,
        info: ChannelInfo,
        transport: Transport,
        recipients: list[Recipient],
        gate: ChannelGate,
        config: EngineSettings,
    ) -> list[SendResult]:
        try:
            async with self.transports.use(transport) as opened:
                marks = self._marks(info, recipients)
                through = _MarkingGate(TransportGate(gate, opened.limiter), gate, marks, opened)
                seconds = _allowance(len(recipients), [opened.limiter, gate.limiter], config)
                results = await self.plugins.send(
                    info.type, info, recipients, through, seconds, transport=transport, client=opened.client
                )
                self._paces[info.campaign, info.channel_id] = marks.pace
        except TransportOpenError as exc:
            self.transports.rest(transport.name, str(exc))
            return [
                SendResult(r.message_id, SendStatus.RETRY, error=str(exc)[:2000], transport_down=True)
                for r in recipients
            ]
        started = [r for r in results if r.status != SendStatus.NOT_STARTED]
        if started and all(r.fatal for r in started):
            self.transports.fail(transport.name, started[-1].error)
        elif any(r.transport_down for r in started):
            self.transports.rest(transport.name, next(r.error for r in started if r.transport_down))
        return results

    def _marks(self, info: ChannelInfo, recipients: Sequence[Recipient]) -> _StartMarks:
        pace = self._paces.get((info.campaign, info.channel_id), 0.0)
        return _StartMarks(self._mark_writer.mark, [r.message_id for r in recipients], pace)

    async def _write_marks(self, ids: list[int]) -> set[int]:
        return await self.db.write(
            functools.partial(message_store.mark_started, owner=self.owner, ids=ids, live=self.role.fencing)
        )

    async def _open_zones(self, key: Key, row: ChannelRow) -> list[str | None] | None:
        window = row.send_window or self.plugins.default_window(row.type)
        if window is None:
            return None
        until, zones = self._zones.get(key, (0.0, []))
        if not until or self.clock.monotonic() > until:
            began = time.monotonic()
            zones = await self.db.read(message_store.queued_zones, *key)
            took = time.monotonic() - began
            self._zones[key] = (self.clock.monotonic() + max(ZONES_FOR, ZONES_SPACING * took), zones)
        now = self.clock.now()
        campaign_zone = ZoneInfo(row.time_zone or "UTC")
        open_zones = [z for z in zones if window.is_open(ZoneInfo(z) if z else campaign_zone, now)]
        if open_zones or not zones:
            self._reopens.pop(key, None)
        else:
            self._reopens[key] = min(
                window.next_open(ZoneInfo(z) if z else campaign_zone, now) for z in zones
            )
        return open_zones

    async def _renew(self, ids: list[int], lease_seconds: float) -> None:
        # The lease is what tells other processes this one is alive and sending.
        while True:
            await asyncio.sleep(lease_seconds / 3)
            expiry = self.clock.now() + dt.timedelta(seconds=lease_seconds)
            try:
                await self.db.write(
                    functools.partial(
                        message_store.renew, owner=self.owner, ids=ids, expiry=expiry, live=self.role.fencing
                    )
                )
            except Exception as exc:
                if storage_fault(exc) is None:
                    raise
                # This daemon never expires its own leases; another one may, after sending_timeout.

    def _outcomes(
        self,
        batch: list[message_store.Leased],
        results: Iterable[SendResult],
        config: EngineSettings,
        *,
        via: dict[int, str] | None = None,
        transports: bool = False,
        failover: bool = False,
    ) -> list[message_store.Outcome]:
        """What to record for each message. Through `transports`, a message its transport could not
        reach was never handed over: it waits again, unattempted, until a transport is usable; one
        whose transport failed fatally waits for another transport when there is one (`failover`)."""
        via = via or {}
        by_id = {r.message_id: r for r in results}
        now = self.clock.now()
        outcomes = []
        for message in batch:
            result = by_id.get(message.id)
            if result is not None:
                result = _stored(result)
            attempt = message.attempts + 1
            # A message handed back unsent keeps the transport of its last real attempt.
            through = via.get(message.id)
            if result is None:
                outcomes.append(
                    message_store.Outcome(
                        message.id,
                        "failed",
                        error="the plugin gave no result",
                        reason="no_result",
                        transport=through,
                    )
                )
            elif result.status == SendStatus.NOT_STARTED or (
                transports
                and result.status == SendStatus.RETRY
                and (result.transport_down or (result.fatal and failover))
            ):
                outcomes.append(message_store.Outcome(message.id, "queued"))
            elif result.status == SendStatus.RETRY and (
                result.retry_delay is not None or attempt < config.max_attempts
            ):
                # A plugin that gives its own delay counts the attempts itself.
                delay = (
                    result.retry_delay
                    if result.retry_delay is not None
                    else config.retry_delay * 2 ** (attempt - 1)
                )
                outcomes.append(
                    message_store.Outcome(
                        message.id,
                        "retrying",
                        error=result.error,
                        reason=result.reason,
                        next_attempt_time=now + dt.timedelta(seconds=max(0.0, delay)),
                        outcome=result.outcome,
                        transport=through,
                    )
                )
            elif result.status == SendStatus.RETRY:
                outcomes.append(
                    message_store.Outcome(
                        message.id,
                        "failed",
                        error=result.error,
                        reason="retries_exhausted",
                        outcome=result.outcome,
                        transport=through,
                    )
                )
            else:
                state = {SendStatus.SENT: "sent", SendStatus.DELIVERED: "delivered"}.get(
                    result.status, "failed"
                )
                reason = result.reason or ("rejected" if state == "failed" else "")
                outcomes.append(
                    message_store.Outcome(
                        message.id,
                        state,
                        result.provider_id,
                        result.error,
                        reason,
                        parts=max(1, result.parts),
                        outcome=result.outcome,
                        talk_time=result.talk_time,
                        transport=through,
                        part_ids=result.part_ids if state == "sent" else (),
                    )
                )
        return outcomes

    async def _record(self, key: Key, outcomes: list[message_store.Outcome]) -> None:
        campaign_id, channel_id = key

        def write(conn: Connection) -> None:
            # Share-locked: a Stop or a failure commits before the channel's state is read here,
            # or waits until these results are written, and then cancels what they put back.
            record = self.campaigns.load(conn, campaign_id, share=True)
            channel = record.channel(channel_id)
            stopped = channel is None or channel.state not in (
                ChannelState.RUNNING,
                ChannelState.PAUSED,
                ChannelState.QUEUED,
            )
            # A message handed back unstarted, or to be retried, waits again, unless its channel was
            # stopped or failed meanwhile: then it will never be sent.
            failed = channel is not None and channel.state == ChannelState.FAILED
            final = [
                dataclasses.replace(
                    o,
                    state="cancelled",
                    next_attempt_time=None,
                    attempted=o.state != "queued",
                    reason="channel_failed" if failed else o.reason,
                )
                if stopped and o.state in ("queued", "retrying")
                else o
                for o in outcomes
            ]
            message_store.record(
                conn, campaign_id, channel_id, self.owner, final, self.clock.now(), live=self.role.fencing
            )

        await self._kept(key, functools.partial(self.db.write, write))
        finished = [o for o in outcomes if o.state not in ("queued", "cancelled")]
        if finished:
            channel_type = self._types.get(key, "")
            for (state, via), n in collections.Counter((o.state, o.transport) for o in finished).items():
                metrics.MESSAGES.labels(channel_type, via or "default", state).inc(n)
        self.hub.publish(campaign_id)

    async def _kept(self, key: Key, write: Callable[[], Awaitable[Any]]) -> None:
        """Run `write` until it succeeds: a storage fault must not lose what a provider said.

        Retried with backoff for as long as it takes; meanwhile every gate is closed (see
        `_storage_changed`), so nothing new starts. Lost only if the daemon dies first, and then
        the messages, marked started, are ambiguous rather than failed.
        """
        delay, since = 0.05, 0.0
        while True:
            try:
                await write()
                if since:
                    log.warning(
                        "kept results written",
                        campaign=key[0],
                        channel=key[1],
                        after_seconds=round(time.monotonic() - since, 1),
                    )
                return
            except Exception as exc:
                cause = storage_fault(exc)
                if cause is None:
                    raise
                if not since:
                    since = time.monotonic()
                    log.warning(
                        "results kept until the database can be written",
                        campaign=key[0],
                        channel=key[1],
                        cause=cause,
                    )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _guard(self, key: Key, record: CampaignRecord) -> bool:
        config = self.config
        limit = record.guard.max_failure_percent or config.guard_max_failure_percent
        minimum = record.guard.min_sends or config.guard_min_sends
        failed_before, finished_before = self._guard_base.get(key, (0, 0))

        def exceeded(counts: tuple[int, int]) -> bool:
            failed, finished = counts[0] - failed_before, counts[1] - finished_before
            return finished >= minimum and failed * 100 > limit * finished

        # The counters alone (no query) clear almost every batch; only a likely trip is counted exactly.
        if not exceeded(await self._finished_counts(key, exact=False)):
            return False
        failed_now, finished_now = await self._finished_counts(key)
        failed, finished = failed_now - failed_before, finished_now - finished_before
        if not exceeded((failed_now, finished_now)):
            return False
        reason = f"failure rate {100 * failed / finished:.1f}% is over {limit:g}% after {finished} sends"
        await self._pause(key, "guard", reason)
        return True

    async def _pause(self, key: Key, cause: str, reason: str) -> None:
        """Pause a channel on the daemon's own account, its gate closed first."""
        gate = self._gates.get(key)
        if gate is not None:
            gate.open = False
        await self.campaigns.system_transition(*key, Operation.GUARD_PAUSE, cause=cause, reason=reason)
        log.warning("channel paused", campaign=key[0], channel=key[1], cause=cause, reason=reason)

    async def _finished_counts(self, key: Key, *, exact: bool = True) -> tuple[int, int]:
        """(failed, finished) messages of a channel, leaving out ambiguous sends (whose failure
        is the daemon's, not the provider's); with `exact` false, counting them (no query)."""
        counts = await self.db.read(count_store.read_counts, key[0])
        mine = {state: n for (channel_id, state), n in counts.items() if channel_id == key[1]}
        failed = mine.get("failed", 0)
        finished = failed + sum(mine.get(s, 0) for s in ("sent", "delivered", "assumed_delivered"))
        if exact and failed:
            ambiguous = await self.db.read(message_store.ambiguous_failures, *key)
            failed, finished = failed - ambiguous, finished - ambiguous
        return failed, finished

    async def fail(self, campaign_id: str, channel_id: str, code: str, message: str) -> None:
        """Fail a channel with its error kept, its gate closed first."""
        gate = self._gates.get((campaign_id, channel_id))
        if gate is not None:
            gate.open = False
        error = {"code": code, "message": message[:2000], "time": self.clock.now().isoformat()}
        await self.campaigns.fail(campaign_id, channel_id, error, message[:1000])
        log.error("channel failed", campaign=campaign_id, channel=channel_id, code=code, error=message[:500])
