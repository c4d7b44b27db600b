"""The engine loop and the channel workers.

Every tick the engine starts SCHEDULED channels whose time has come, activates QUEUED ones when a
slot is free, completes RUNNING ones with nothing left to send, fails messages whose sender died,
and keeps one worker per RUNNING channel. A worker leases a batch, hands it to the channel's
plugin with the channel's gate, and records the results in one transaction.

The gate is the pause barrier: Pause and Stop close it, in this process, before their call
returns, and a plugin starts a send only when the gate admits it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime as dt
import functools
import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from campaignd import logs, metrics
from campaignd.campaigns import CampaignManager
from campaignd.changes import ChangeHub
from campaignd.clock import Clock
from campaignd.config import EngineSettings, Settings
from campaignd.engine.rates import RateLimiter
from campaignd.engine.transports import Transports, route
from campaignd.engine.windows import SendWindow
from campaignd.errors import ApiError, internal_message, new_error_id
from campaignd.lifecycle import ChannelState, Operation
from campaignd.plugin import ChannelInfo, Recipient, SendResult, SendStatus, Transport
from campaignd.plugin.manager import PluginCallError, Plugins, TransportOpenError
from campaignd.store import engine as store
from campaignd.store.audience import move_messages
from campaignd.store.campaigns import CampaignRecord, ChannelRecord
from campaignd.store.db import Database

log = logs.get("campaignd.engine")
Key = tuple[str, str]  # (campaign id, channel id)
RATE_WINDOW = 10.0  # seconds over which the current send rate is measured (SPEC §4.6)


@dataclasses.dataclass
class _BatchOutcome:
    outcomes: list[store.Outcome]
    fatal: str  # when every transport of the channel failed fatally: why


class _NoSlotError(Exception):
    """Another daemon took the last slot first."""


class ChannelGate:
    """Admits sends of one channel while it runs, at its rate."""

    def __init__(self, limiter: RateLimiter | None) -> None:
        # Closed until the tick opens it, so a gate made while a Pause holds its channel admits nothing.
        self.open = False
        self.limiter = limiter

    async def admit(self, weight: float = 1.0) -> bool:
        """True when a send may start now; the caller starts it with no further await."""
        if not self.open:
            return False
        if self.limiter is not None:
            await self.limiter.acquire(weight)
        return self.open


class TransportGate:
    """A channel's gate for sends through one transport: the transport's rate, then the channel's."""

    def __init__(self, channel: ChannelGate, limiter: RateLimiter | None) -> None:
        self.channel = channel
        self.limiter = limiter

    async def admit(self, weight: float = 1.0) -> bool:
        """As ChannelGate.admit; the channel's open check comes last, right before the send."""
        if not self.channel.open:
            return False
        if self.limiter is not None:
            await self.limiter.acquire(weight)
        return await self.channel.admit(weight)


def _allowance(count: int, limiters: Iterable[RateLimiter | None], config: EngineSettings) -> float:
    """Seconds a plugin gets for `count` sends: the send timeout, plus the time the slowest of the
    rate limits makes the batch wait, which is not the plugin's."""
    rate = min((limiter.rate for limiter in limiters if limiter is not None), default=0.0)
    return config.sending_timeout + (count / rate if rate else 0.0)


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
    ) -> None:
        self.db = database
        self.plugins = plugins
        self.transports = transports
        self.campaigns = campaigns
        self.hub = hub
        self.settings = settings
        self.clock = clock or Clock()
        self.owner = owner_id()
        self._gates: dict[Key, ChannelGate] = {}
        self._held: set[Key] = set()
        self._workers: dict[Key, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        # Per channel: (monotonic time, messages finished) of recent batches, for the send rate.
        self._finished: dict[Key, collections.deque[tuple[float, int]]] = {}
        self._running_since: dict[Key, float] = {}
        self._reopens: dict[Key, dt.datetime] = {}
        self._guard_base: dict[Key, tuple[int, int]] = {}
        self._types: dict[Key, str] = {}

    def rate(self, campaign_id: str, channel_id: str) -> float:
        """Messages this daemon finished per second for a channel over the last 10 seconds."""
        key = (campaign_id, channel_id)
        recent = self._finished.get(key)
        if not recent:
            return 0.0
        now = self.clock.monotonic()
        while recent and recent[0][0] < now - RATE_WINDOW:
            recent.popleft()
        # Early on, divide by the time the channel has run, not by the whole window.
        span = min(RATE_WINDOW, max(1.0, now - self._running_since.get(key, now - RATE_WINDOW)))
        return sum(n for _, n in recent) / span

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
        hold = (campaign_id, channel_id or "*")
        self._held.add(hold)
        for key, gate in self._gates.items():
            if self._is_held(key):
                gate.open = False
        try:
            yield
        finally:
            self._held.discard(hold)
            self.wake()

    def _is_held(self, key: Key) -> bool:
        return (key[0], "*") in self._held or key in self._held

    async def run(self) -> None:
        """Tick until stopped."""
        while not self._stopping:
            try:
                await self.tick()
            except Exception:
                log.exception("engine tick failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.tick_interval)

    async def stop(self, grace: float) -> None:
        """Stop leasing and give workers `grace` seconds to finish and record what is in flight."""
        self._stopping = True
        self._wake.set()
        for gate in self._gates.values():
            gate.open = False
        workers = [w for w in self._workers.values() if not w.done()]
        if workers:
            _, pending = await asyncio.wait(workers, timeout=grace)
            for worker in pending:
                # Their SENDING messages fail as timed_out once the lease runs out (SPEC §8).
                worker.cancel()
        log.info("engine stopped", workers=len(workers))

    # -- the tick ---------------------------------------------------------------------------------

    async def tick(self) -> None:
        """One pass over the channels that need the engine."""
        now = self.clock.now()
        expired = await self.db.write(store.expire_leases, now)
        for campaign_id, channel_id in expired:
            log.warning(
                "sends without a result timed out",
                campaign=campaign_id,
                channel=channel_id,
                messages=expired[(campaign_id, channel_id)],
            )
            self.hub.publish(campaign_id)
        receipts = [t.name for t in self.plugins.types.values() if "receipts" in t.capabilities]
        cutoff = now - dt.timedelta(seconds=self.config.assume_delivered_after)
        assumed = await self.db.write(store.assume_delivered, cutoff, receipts, now)
        for campaign_id, _ in assumed:
            self.hub.publish(campaign_id)
        rows = await self.db.read(store.channels_in, ["scheduled", "queued", "running", "paused"])
        # A paused campaign keeps its slot: resuming it must not put two on one channel type.
        running_types: dict[str, set[str]] = {}
        for row in rows:
            if row.state in ("running", "paused"):
                running_types.setdefault(row.type, set()).add(row.campaign_id)
        active = set()
        for row in rows:
            key = (row.campaign_id, row.channel_id)
            if row.state == "running":
                active.add(key)
            try:
                await self._tend(row, key, now, running_types)
            except Exception as exc:
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
        self._publish_metrics(active)
        for channel_type, depth in (await self.db.read(store.queue_depths)).items():
            metrics.QUEUE_DEPTH.labels(channel_type).set(depth)

    async def _tend(self, row: Any, key: Key, now: dt.datetime, running_types: dict[str, set[str]]) -> None:
        if row.state == "scheduled" and row.schedule_time is not None and row.schedule_time <= now:
            await self._start(row)
        elif row.state == "queued" and self._slot_free(row.type, row.campaign_id, running_types):
            if await self._activate(row):
                running_types.setdefault(row.type, set()).add(row.campaign_id)
                self.wake()
        elif row.state == "running":
            await self._keep_running(key, row)

    def _publish_metrics(self, active: set[Key]) -> None:
        rates: dict[str, float] = {}
        for key in active:
            channel_type = self._types.get(key, "")
            rates[channel_type] = rates.get(channel_type, 0.0) + self.rate(*key)
        for channel_type, rate in rates.items():
            metrics.SEND_RATE.labels(channel_type).set(rate)

    def _slot_free(self, channel_type: str, campaign_id: str, running: dict[str, set[str]]) -> bool:
        limit = self.config.slots.get(channel_type)
        holders = running.get(channel_type, set())
        return limit is None or campaign_id in holders or len(holders) < limit

    async def _activate(self, row: Any) -> bool:
        limit = self.config.slots.get(row.type)

        def take_slot(conn: Connection, record: CampaignRecord, chosen: list[ChannelRecord]) -> None:
            if limit is None:
                return
            if conn.dialect.name == "postgresql":
                # Daemons activating at once queue here per channel type, so the count below is exact.
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:t))"), {"t": f"slot:{row.type}"})
            if len(store.slot_holders(conn, row.type) - {record.id}) >= limit:
                raise _NoSlotError

        try:
            return await self.campaigns.system_transition(
                row.campaign_id,
                row.channel_id,
                Operation.ACTIVATE,
                cause="schedule",
                reason="a slot is free",
                before_commit=take_slot,
            )
        except _NoSlotError:
            return False

    async def _start(self, row: Any) -> None:
        def resolve(conn: Connection, record: CampaignRecord, chosen: list[ChannelRecord]) -> None:
            # Checked again as at launch: the plugins' options or the transports may have changed
            # since it was scheduled. A channel that no longer validates fails VALIDATION_FAILED.
            self.campaigns.check_launchable(conn, record, chosen)
            for channel in chosen:
                counts = self.campaigns.resolve(conn, record, channel, freeze=True)
                channel.audience_counts = dataclasses.asdict(counts)
                channel.schedule_time = None

        try:
            await self.campaigns.system_transition(
                row.campaign_id,
                row.channel_id,
                Operation.START,
                cause="schedule",
                reason="its time came",
                before_commit=resolve,
            )
        except ApiError as exc:
            await self.fail(row.campaign_id, row.channel_id, exc.reason, exc.message)
        self.wake()

    async def _keep_running(self, key: Key, row: Any) -> None:
        if key not in self._running_since:
            # The guard judges the sends since the channel (re)started running, so that a resumed
            # channel is not paused again at once for the failures it was paused for.
            self._guard_base[key] = await self._finished_counts(key)
            # Likewise the rate: sends from before a pause would inflate the rate after it.
            self._finished.pop(key, None)
        self._running_since.setdefault(key, self.clock.monotonic())
        self._types[key] = row.type
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = ChannelGate(RateLimiter(row.rate_limit) if row.rate_limit > 0 else None)
        elif gate.limiter is not None and row.rate_limit > 0:
            gate.limiter.set_rate(row.rate_limit)
        if not self._is_held(key) and not self._stopping:
            gate.open = True
        worker = self._workers.get(key)
        if worker is not None and not worker.done():
            return
        remaining = await self.db.read(store.unfinished, *key)
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

    async def _work(self, key: Key, row: Any, gate: ChannelGate) -> None:
        campaign_id, channel_id = key
        record = await self.campaigns.get(campaign_id)
        channel = record.channel(channel_id)
        if channel is None:
            return
        info = ChannelInfo(record.name, channel_id, channel.type, channel.content)
        # Several batches in flight, so that the provider is kept busy while one batch's results
        # are written and the next batch is leased.
        lanes = [
            self._lane(key, row, gate, record, channel, info) for _ in range(self.config.batches_in_flight)
        ]
        await asyncio.gather(*lanes)

    async def _lane(
        self,
        key: Key,
        row: Any,
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
                    store.lease,
                    campaign_id=campaign_id,
                    channel_id=channel_id,
                    owner=self.owner,
                    limit=config.batch_size,
                    now=now,
                    expiry=expiry,
                    zones=zones,
                )
            )
            if not batch:
                return
            fields = await self.db.read(
                store.contact_fields, [m.contact for m in batch if m.contact is not None]
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
                        store.Outcome(m.id, "failed", error=str(exc)[:2000], reason="plugin_error")
                        for m in batch
                    ],
                )
                await self.fail(campaign_id, channel_id, "PLUGIN_ERROR", str(exc))
                return
            finally:
                renewing.cancel()
            await self._record(key, outcomes.outcomes)
            if outcomes.fatal:
                await self.fail(campaign_id, channel_id, "TRANSPORT_FAILED", outcomes.fatal)
                return
            if await self._guard(key, record):
                return

    async def _transports_ready(
        self,
        key: Key,
        info: ChannelInfo,
        shares: list[dict[str, Any]],
        targets: list[tuple[Transport, int]] | None,
    ) -> bool:
        """Whether a batch may be leased: a channel with transports needs one usable now."""
        if targets is None or any(self.transports.usable(t.name) for t, _ in targets):
            return True
        if not targets:
            # A reload took away every transport the channel names: it waits, PAUSED, for an
            # operator to configure one and resume it.
            names = ", ".join(s["transport"] for s in shares) or f"any of type {info.type}"
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

    def _targets(self, info: ChannelInfo, shares: list[dict[str, Any]]) -> list[tuple[Transport, int]] | None:
        declared = self.plugins.types.get(info.type)
        if declared is None or not declared.uses_transports:
            return None
        return self.plugins.transports_for(info.type, shares)

    async def _send(
        self,
        info: ChannelInfo,
        targets: list[tuple[Transport, int]] | None,
        batch: list[store.Leased],
        recipients: list[Recipient],
        gate: ChannelGate,
        config: EngineSettings,
    ) -> _BatchOutcome:
        """Send a batch, through the channel's transports (`targets`) when its type has them."""
        if targets is None:
            seconds = _allowance(len(recipients), [gate.limiter], config)
            results = await self.plugins.send(info.type, info, recipients, gate, seconds)
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
                through = TransportGate(gate, opened.limiter)
                seconds = _allowance(len(recipients), [opened.limiter, gate.limiter], config)
                results = await self.plugins.send(
                    info.type, info, recipients, through, seconds, transport=transport, client=opened.client
                )
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

    async def _open_zones(self, key: Key, row: Any) -> list[str | None] | None:
        window_record = row.send_window or self.plugins.default_window(row.type)
        if not window_record:
            return None
        window = SendWindow.from_record(window_record)
        zones = await self.db.read(store.queued_zones, *key)
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
            await self.db.write(functools.partial(store.renew, owner=self.owner, ids=ids, expiry=expiry))

    def _outcomes(
        self,
        batch: list[store.Leased],
        results: Iterable[SendResult],
        config: EngineSettings,
        *,
        via: dict[int, str] | None = None,
        transports: bool = False,
        failover: bool = False,
    ) -> list[store.Outcome]:
        """What to record for each message. Through `transports`, a message its transport could not
        reach was never handed over: it waits again, unattempted, until a transport is usable; one
        whose transport failed fatally waits for another transport when there is one (`failover`)."""
        via = via or {}
        by_id = {r.message_id: r for r in results}
        now = self.clock.now()
        outcomes = []
        for message in batch:
            result = by_id.get(message.id)
            attempt = message.attempts + 1
            if result is None:
                outcomes.append(
                    store.Outcome(message.id, "failed", error="the plugin gave no result", reason="no_result")
                )
            elif result.status == SendStatus.NOT_STARTED or (
                transports
                and result.status == SendStatus.RETRY
                and (result.transport_down or (result.fatal and failover))
            ):
                outcomes.append(store.Outcome(message.id, "queued"))
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
                    store.Outcome(
                        message.id,
                        "retrying",
                        error=result.error,
                        reason=result.reason,
                        next_attempt_time=now + dt.timedelta(seconds=max(0.0, delay)),
                        outcome=result.outcome,
                    )
                )
            elif result.status == SendStatus.RETRY:
                outcomes.append(
                    store.Outcome(
                        message.id,
                        "failed",
                        error=result.error,
                        reason="retries_exhausted",
                        outcome=result.outcome,
                    )
                )
            else:
                state = {SendStatus.SENT: "sent", SendStatus.DELIVERED: "delivered"}.get(
                    result.status, "failed"
                )
                reason = result.reason or ("rejected" if state == "failed" else "")
                outcomes.append(
                    store.Outcome(
                        message.id,
                        state,
                        result.provider_id,
                        result.error,
                        reason,
                        parts=max(1, result.parts),
                        outcome=result.outcome,
                        talk_time=result.talk_time,
                    )
                )
        # A message handed back unsent keeps the transport of its last real attempt.
        return [
            dataclasses.replace(o, transport=via[o.id]) if o.id in via and o.state != "queued" else o
            for o in outcomes
        ]

    async def _record(self, key: Key, outcomes: list[store.Outcome]) -> None:
        campaign_id, channel_id = key

        def write(conn: Connection) -> None:
            record = self.campaigns.load(conn, campaign_id)
            channel = record.channel(channel_id)
            stopped = channel is None or channel.state not in (
                ChannelState.RUNNING,
                ChannelState.PAUSED,
                ChannelState.QUEUED,
            )
            # A message handed back unstarted, or to be retried, waits again, unless its channel was
            # stopped or failed meanwhile: then it will never be sent.
            final = [
                dataclasses.replace(
                    o, state="cancelled", next_attempt_time=None, attempted=o.state != "queued"
                )
                if stopped and o.state in ("queued", "retrying")
                else o
                for o in outcomes
            ]
            store.record(conn, campaign_id, channel_id, self.owner, final, self.clock.now())

        await self.db.write(write)
        finished = [o for o in outcomes if o.state not in ("queued", "cancelled")]
        if finished:
            self._finished.setdefault(key, collections.deque()).append(
                (self.clock.monotonic(), len(finished))
            )
            channel_type = self._types.get(key, "")
            for (state, via), n in collections.Counter((o.state, o.transport) for o in finished).items():
                metrics.MESSAGES.labels(channel_type, via or "default", state).inc(n)
        self.hub.publish(campaign_id)

    async def _guard(self, key: Key, record: CampaignRecord) -> bool:
        config = self.config
        limit = record.guard.get("max_failure_percent") or config.guard_max_failure_percent
        minimum = record.guard.get("min_sends") or config.guard_min_sends
        failed_now, finished_now = await self._finished_counts(key)
        failed_before, finished_before = self._guard_base.get(key, (0, 0))
        failed, finished = failed_now - failed_before, finished_now - finished_before
        if finished < minimum or failed * 100 <= limit * finished:
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

    async def _finished_counts(self, key: Key) -> tuple[int, int]:
        counts = await self.db.read(store.read_counts, key[0])
        mine = {state: n for (channel_id, state), n in counts.items() if channel_id == key[1]}
        failed = mine.get("failed", 0)
        return failed, failed + sum(mine.get(s, 0) for s in ("sent", "delivered", "assumed_delivered"))

    async def fail(self, campaign_id: str, channel_id: str, code: str, message: str) -> None:
        """Fail a channel with its error kept."""
        gate = self._gates.get((campaign_id, channel_id))
        if gate is not None:
            gate.open = False
        error = {"code": code, "message": message[:2000], "time": self.clock.now().isoformat()}

        def cancel_waiting(conn: Connection, record: CampaignRecord, chosen: list[ChannelRecord]) -> None:
            # FAILED is final: what still waits will never be sent.
            move_messages(
                conn, campaign_id, channel_id, ["queued", "retrying"], "cancelled", self.clock.now()
            )

        await self.campaigns.system_transition(
            campaign_id,
            channel_id,
            Operation.FAIL,
            cause="error",
            reason=message[:1000],
            error=error,
            before_commit=cancel_waiting,
        )
        log.error("channel failed", campaign=campaign_id, channel=channel_id, code=code, error=message[:500])
