"""Progress and reports (SPEC §4.6), without protobuf: messages per state from the stored
counters, failure reasons, engagement, the current rate and the ETA.

The current rate counts sends as they start, from what is stored, so it is the same on every
daemon of a database, whichever of them send (or none of them: an API-only daemon reports it
too): the finished messages in the counters, plus the SENDING ones marked started (a mark is
written just before its send). Each daemon reads that sum for the running channels every
SAMPLE_INTERVAL and takes its increase over the last RATE_WINDOW seconds. The finished count
alone moves a batch at a time, when the batch's results are written: its increase over 10
seconds counted batches whose sends began before the window, and swung from half to twice the
real rate as batches of several seconds' sends fell in or out of it.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from typing import Protocol

from sqlalchemy.engine import Connection

from campaignd import logs
from campaignd.campaigns.operations import CampaignManager
from campaignd.clock import Clock
from campaignd.errors import ApiError, Code
from campaignd.lifecycle import MESSAGE_DONE_STATES, CampaignState, ChannelState, MessageState
from campaignd.model import CampaignRecord
from campaignd.store import channels as channel_store
from campaignd.store import counts as count_store
from campaignd.store import events as event_store
from campaignd.store import messages as message_store
from campaignd.store.db import Database, storage_fault
from campaignd.store.events import Engagement

log = logs.get("campaignd.progress")
Key = tuple[str, str]  # (campaign id, channel id)
# Until when (monotonic) watches may reuse a campaign's failure reasons and engagement, how long
# reading them took (seconds), and they.
_Costly = tuple[float, float, dict[tuple[str, str], int], dict[str, Engagement]]

RATE_WINDOW = 10.0  # seconds over which the current rate is measured (SPEC §4.6)
SAMPLE_INTERVAL = 0.25  # how often each daemon reads the sends of the running channels
# The states of messages that are done with: a send's result, or an opt-out found at send time.
FINISHED_STATES = ("sent", "delivered", "assumed_delivered", "failed", "opted_out")
# A watch reuses a campaign's failure reasons and engagement, the parts of a report that take a
# pass over rows (its failed messages, its events), for this many times as long as reading them
# took. A watcher wakes at every change, many times a second while the campaign sends, and
# counting 300,000 events took 180-260 ms: read each time, they kept a core busy.
COSTLY_SPACING = 20


@dataclasses.dataclass
class Progress:
    """Messages of a channel (or of a whole campaign) per state, and what is known besides."""

    counts: dict[str, int] = dataclasses.field(default_factory=dict)  # per message state
    failed_by_reason: dict[str, int] = dataclasses.field(default_factory=dict)
    current_rate: float = 0.0
    eta: dt.datetime | None = None
    window_reopens_time: dt.datetime | None = None
    engagement: Engagement = dataclasses.field(default_factory=Engagement)
    by_outcome: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def total(self) -> int:
        """Every message."""
        return sum(self.counts.values())

    @property
    def percent_done(self) -> float:
        """Messages in a done state (SENT or final), in percent of all, to two decimals."""
        done = sum(n for state, n in self.counts.items() if MessageState(state) in MESSAGE_DONE_STATES)
        return round(100.0 * done / self.total, 2) if self.total else 0.0

    @property
    def remaining(self) -> int:
        """Messages still to be sent: QUEUED, SENDING or RETRYING."""
        return sum(self.counts.get(s, 0) for s in ("queued", "sending", "retrying"))


@dataclasses.dataclass
class PartCounts:
    """Parts (SMS segments) of the messages handed to a provider."""

    sent: int = 0
    delivered: int = 0
    failed: int = 0


@dataclasses.dataclass
class ChannelReport:
    """One channel's progress; `by_transport` and `parts` only in a full report."""

    channel_id: str
    type: str
    state: ChannelState
    progress: Progress
    audience: dict[str, int]
    by_transport: dict[str, Progress] = dataclasses.field(default_factory=dict)
    parts: PartCounts | None = None


@dataclasses.dataclass
class CampaignReport:
    """A campaign's progress: its channels' and their totals."""

    campaign: str
    state: CampaignState
    totals: Progress
    channels: list[ChannelReport]
    report_time: dt.datetime


@dataclasses.dataclass(frozen=True)
class Update:
    """One update of a watch: the campaign and its report; `snapshot` for the first."""

    record: CampaignRecord
    report: CampaignReport
    snapshot: bool


class SendWindows(Protocol):
    """What this daemon's engine knows of channels waiting for their send window."""

    def window_reopens(self, campaign_id: str, channel_id: str) -> dt.datetime | None:
        """When a channel waiting for its send window can send again, if it is waiting."""


# -- the current rate ---------------------------------------------------------------------------


def current_rate(samples: Sequence[tuple[float, int]], now: float, window: float = RATE_WINDOW) -> float:
    """Sends per second from `samples`, the (monotonic time, sends started so far) of one run of a
    channel, oldest first: their increase since the last sample at least `window` seconds old
    (or, earlier in the run, since the first). After the samples stop (the channel no longer
    runs), the time since counts too, so the rate falls to 0 within `window`."""
    if len(samples) < 2:
        return 0.0
    start = max((i for i, (t, _) in enumerate(samples) if t <= now - window), default=0)
    (since, first), (last_time, last) = samples[start], samples[-1]
    end = last_time if now - last_time <= 2 * SAMPLE_INTERVAL else now
    return (last - first) / (end - since) if end > since else 0.0


@dataclasses.dataclass
class _Run:
    """The samples a daemon took of one run of a channel (from one move into RUNNING)."""

    began: dt.datetime
    samples: collections.deque[tuple[float, int]]


class RateMeter:
    """The current rate of every running channel, from what is stored."""

    def __init__(self, database: Database, clock: Clock | None = None) -> None:
        self.db = database
        self.clock = clock or Clock()
        self._runs: dict[Key, _Run] = {}

    def observe(self, key: Key, began: dt.datetime, sends: int) -> None:
        """A running channel's sends started so far, as read now; `began` is when its run began."""
        now = self.clock.monotonic()
        run = self._runs.get(key)
        if run is None or run.began != began:
            # Resumed or restarted: sends before a pause would make the rate after it look higher.
            run = self._runs[key] = _Run(began, collections.deque())
        run.samples.append((now, sends))
        # The last sample at least a window old is the one the rate is measured from.
        while len(run.samples) > 2 and run.samples[1][0] <= now - RATE_WINDOW:
            run.samples.popleft()

    def rate(self, campaign_id: str, channel_id: str) -> float:
        """Sends started per second over the last RATE_WINDOW seconds, by every daemon together.
        Callable from any thread: it reads a copy of the samples that `sample` appends to."""
        run = self._runs.get((campaign_id, channel_id))
        return current_rate(tuple(run.samples), self.clock.monotonic()) if run is not None else 0.0

    async def run(self) -> None:
        """Sample the running channels every SAMPLE_INTERVAL until cancelled."""
        while True:
            try:
                await self.sample()
            except Exception as exc:
                if storage_fault(exc) is None:
                    log.exception("could not read the sends of the running channels")
            await asyncio.sleep(SAMPLE_INTERVAL)

    async def sample(self) -> None:
        """Observe every running channel once, and forget runs that ended a while ago."""
        for key, began, sends in await self.db.read(_running_sends):
            self.observe(key, began, sends)
        stale = self.clock.monotonic() - 2 * RATE_WINDOW
        for key in [k for k, run in self._runs.items() if run.samples[-1][0] < stale]:
            del self._runs[key]


def _running_sends(conn: Connection) -> list[tuple[Key, dt.datetime, int]]:
    found = []
    for row in channel_store.channels_in(conn, ["running"]):
        key = (row.campaign_id, row.channel_id)
        found.append((key, row.state_time, message_store.sends_so_far(conn, *key, FINISHED_STATES)))
    return found


# -- reports ------------------------------------------------------------------------------------


class Reports:
    """Reports and progress of campaigns, as GetCampaignReport and WatchCampaign give them."""

    def __init__(
        self,
        manager: CampaignManager,
        rates: RateMeter,
        windows: SendWindows | None,
        max_watchers: Callable[[], int],
    ) -> None:
        self.manager = manager
        self.rates = rates
        self.windows = windows
        self.max_watchers = max_watchers
        self.watchers = 0
        self._costly: dict[str, _Costly] = {}  # by campaign id

    async def snapshot(
        self, campaign_id: str, *, reuse: bool = False
    ) -> tuple[CampaignRecord, CampaignReport]:
        """The campaign and its report, from the counters (no pass over the messages). With
        `reuse`, the failure reasons and engagement may be a recent read's (COSTLY_SPACING)."""
        kept = self._costly.get(campaign_id) if reuse else None
        if kept is not None and time.monotonic() >= kept[0]:
            # This watch reads them again; the others keep reusing them meanwhile, rather than
            # all read at once.
            self._costly[campaign_id] = (time.monotonic() + COSTLY_SPACING * kept[1], *kept[1:])
            kept = None

        def read(conn: Connection) -> tuple[CampaignRecord, dict[tuple[str, str], int], _Costly]:
            record = self.manager.load(conn, campaign_id)
            counts = count_store.read_counts(conn, campaign_id)
            if kept is not None:
                return record, counts, kept
            began = time.monotonic()
            # The reasons take a pass over the failed messages; most updates of a watch have none.
            failed = any(n for (_, state), n in counts.items() if state == "failed")
            reasons = message_store.failure_reasons(conn, campaign_id) if failed else {}
            engaged = event_store.engagement(conn, campaign_id)
            now = time.monotonic()
            return record, counts, (now + COSTLY_SPACING * (now - began), now - began, reasons, engaged)

        record, counts, costly = await self.manager.db.read(read)
        if costly is not kept:
            now = time.monotonic()
            for stale in [k for k, entry in self._costly.items() if entry[0] <= now]:
                del self._costly[stale]
            self._costly[campaign_id] = costly
        _, _, reasons, engaged = costly
        return record, self._build(record, counts, reasons, engaged)

    async def report(self, campaign_id: str) -> CampaignReport:
        """The full report: the snapshot's, with counts per transport, parts and outcomes, which
        take a pass over the messages."""
        _, report = await self.snapshot(campaign_id)
        by_transport, parts, outcomes = await self.manager.db.read(
            lambda conn: (
                message_store.transport_counts(conn, campaign_id),
                message_store.part_counts(conn, campaign_id),
                message_store.outcome_counts(conn, campaign_id),
            )
        )
        for channel in report.channels:
            for (channel_id, transport, state), n in by_transport.items():
                if channel_id == channel.channel_id:
                    channel.by_transport.setdefault(transport, Progress()).counts[state] = n
            sent = parts.get(channel.channel_id, {})
            channel.parts = PartCounts(sum(sent.values()), sent.get("delivered", 0), sent.get("failed", 0))
            for (channel_id, said), n in outcomes.items():
                if channel_id == channel.channel_id:
                    channel.progress.by_outcome[said] = n
                    report.totals.by_outcome[said] = report.totals.by_outcome.get(said, 0) + n
        return report

    async def watch(self, campaign_id: str) -> AsyncGenerator[Update, None]:
        """The campaign and its report now, then again whenever either changes, and at least
        every second while anything may change; ends when the campaign is deleted or the daemon
        stops. RESOURCE_EXHAUSTED when `[limits] max_watchers` streams are open."""
        if self.watchers >= self.max_watchers():
            raise ApiError(
                Code.RESOURCE_EXHAUSTED, "TOO_MANY_WATCHERS", "too many WatchCampaign streams are open"
            )
        self.watchers += 1
        hub = self.manager.hub
        try:
            previous: tuple[object, ...] | None = None
            while not hub.closed:
                changed = hub.subscribe(campaign_id)
                try:
                    # The first update is read afresh; the next ones may reuse the costly parts.
                    record, report = await self.snapshot(campaign_id, reuse=previous is not None)
                except ApiError:
                    if previous is None:
                        raise
                    return  # deleted while watched: the stream ends
                # Compared without the report's time: only real changes are sent.
                body = (record, report.state, report.totals, report.channels)
                if body != previous:
                    yield Update(record, report, snapshot=previous is None)
                previous = body
                await hub.wait(changed, 1.0)
        finally:
            self.watchers -= 1

    def _build(
        self,
        record: CampaignRecord,
        counts: dict[tuple[str, str], int],
        reasons: dict[tuple[str, str], int],
        engaged: dict[str, Engagement],
    ) -> CampaignReport:
        now = self.manager.clock.now()
        channels = []
        for channel in record.channels:
            key = (record.id, channel.channel_id)
            mine = {state: n for (channel_id, state), n in counts.items() if channel_id == channel.channel_id}
            why = {r: n for (channel_id, r), n in reasons.items() if channel_id == channel.channel_id}
            progress = Progress(mine, why, engagement=engaged.get(channel.channel_id, Engagement()))
            running = channel.state == ChannelState.RUNNING
            rate = self.rates.rate(*key)
            progress.current_rate = round(rate, 2)
            # A channel that is not running has no end to estimate.
            if running and rate > 0 and progress.remaining:
                progress.eta = now + dt.timedelta(seconds=progress.remaining / rate)
            if self.windows is not None:
                progress.window_reopens_time = self.windows.window_reopens(*key)
            channels.append(
                ChannelReport(
                    channel.channel_id,
                    channel.type,
                    channel.state,
                    progress,
                    dict(channel.audience_counts or {}),
                )
            )
        totals = Progress(
            _sum(c.progress.counts for c in channels),
            _sum(c.progress.failed_by_reason for c in channels),
            current_rate=sum(c.progress.current_rate for c in channels),
            eta=max((c.progress.eta for c in channels if c.progress.eta is not None), default=None),
            engagement=_engagement(c.progress.engagement for c in channels),
        )
        return CampaignReport(record.name, record.state, totals, channels, now)


def _sum(parts: Iterable[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for part in parts:
        for key, n in part.items():
            total[key] = total.get(key, 0) + n
    return total


def _engagement(parts: Iterable[Engagement]) -> Engagement:
    total = Engagement()
    for part in parts:
        for name in ("opened", "opens", "clicked", "clicks", "bounced", "complained", "unsubscribed"):
            setattr(total, name, getattr(total, name) + getattr(part, name))
        total.clicks_by_link = _sum([total.clicks_by_link, part.clicks_by_link])
    return total
