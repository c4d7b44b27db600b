"""What a watch reads of a campaign at each update: its counters every time, but its failure
reasons and engagement (a pass over its failed messages and over its events) only once they are
older than COSTLY_SPACING times as long as reading them took; a unary report reads them afresh."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import types
from collections.abc import AsyncGenerator
from typing import Any, cast

import pytest

from campaignd.campaigns import progress
from campaignd.campaigns.progress import COSTLY_SPACING, Reports
from campaignd.changes import ChangeHub
from campaignd.lifecycle import CampaignState, ChannelState
from campaignd.store import counts as count_store
from campaignd.store import events as event_store
from campaignd.store import messages as message_store
from campaignd.store.events import Engagement

NOW = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)


class Store:
    """The report's reads, on a monotonic clock that the pass over the events moves by `cost`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, cost: float) -> None:
        self.seconds = 1000.0
        self.cost = cost
        self.opened = 1
        self.failed = 0
        self.passes = 0
        self.counter_reads = 0
        monkeypatch.setattr(time, "monotonic", lambda: self.seconds)
        monkeypatch.setattr(count_store, "read_counts", self.read_counts)
        monkeypatch.setattr(message_store, "failure_reasons", self.failure_reasons)
        monkeypatch.setattr(event_store, "engagement", self.engagement)

    def read_counts(self, conn: Any, campaign_id: str) -> dict[tuple[str, str], int]:
        self.counter_reads += 1
        return {("main", "sent"): 10 - self.failed, ("main", "failed"): self.failed}

    def failure_reasons(self, conn: Any, campaign_id: str) -> dict[tuple[str, str], int]:
        return {("main", "bounced"): self.failed}

    def engagement(self, conn: Any, campaign_id: str) -> dict[str, Engagement]:
        self.passes += 1
        self.seconds += self.cost
        return {"main": Engagement(opened=self.opened, opens=self.opened)}


def _reports(store: Store) -> Reports:
    record = types.SimpleNamespace(
        id="spring",
        name="campaigns/spring",
        state=CampaignState.RUNNING,
        channels=[
            types.SimpleNamespace(
                channel_id="main", type="test-email", state=ChannelState.COMPLETED, audience_counts={}
            )
        ],
    )

    async def read(fn: Any) -> Any:
        await asyncio.sleep(0)  # as a read on a worker thread lets other calls in
        return fn(None)

    manager = types.SimpleNamespace(
        load=lambda conn, campaign_id: record,
        db=types.SimpleNamespace(read=read),
        clock=types.SimpleNamespace(now=lambda: NOW),
        hub=ChangeHub(),
    )
    rates = types.SimpleNamespace(rate=lambda campaign_id, channel_id: 0.0)
    return Reports(cast(Any, manager), cast(Any, rates), None, lambda: 10)


def _opened(reports: Reports, *, reuse: bool) -> int:
    _, report = asyncio.run(reports.snapshot("spring", reuse=reuse))
    return report.totals.engagement.opened


@pytest.mark.parametrize("cost", [0.001, 0.25])
def test_a_watch_reuses_the_costly_parts_for_20_times_their_read(
    monkeypatch: pytest.MonkeyPatch, cost: float
) -> None:
    store = Store(monkeypatch, cost)
    reports = _reports(store)
    assert _opened(reports, reuse=True) == 1
    assert store.passes == 1
    store.opened = 2
    store.seconds += COSTLY_SPACING * cost - 0.0005
    assert [_opened(reports, reuse=True) for _ in range(3)] == [1, 1, 1]
    assert (store.passes, store.counter_reads) == (1, 4)  # the counters are read every time
    store.seconds += 0.001
    assert _opened(reports, reuse=True) == 2
    assert store.passes == 2


def test_a_unary_report_reads_everything_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(monkeypatch, 0.25)
    reports = _reports(store)
    assert _opened(reports, reuse=True) == 1
    store.opened = 3
    assert _opened(reports, reuse=False) == 3
    assert store.passes == 2
    # ... and what it read is what a watch reuses next.
    assert _opened(reports, reuse=True) == 3
    assert store.passes == 2


def test_failure_reasons_are_reused_with_the_engagement(monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(monkeypatch, 0.25)
    store.failed = 1
    reports = _reports(store)
    _, report = asyncio.run(reports.snapshot("spring", reuse=True))
    assert report.totals.failed_by_reason == {"bounced": 1}
    store.failed = 2
    _, report = asyncio.run(reports.snapshot("spring", reuse=True))
    # The counters are current; the reasons are the last read's until it is old enough.
    assert report.totals.counts["failed"] == 2
    assert report.totals.failed_by_reason == {"bounced": 1}
    store.seconds += COSTLY_SPACING * 0.25
    _, report = asyncio.run(reports.snapshot("spring", reuse=True))
    assert report.totals.failed_by_reason == {"bounced": 2}


def test_the_first_update_of_a_watch_is_read_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(monkeypatch, 0.25)
    reports = _reports(store)
    assert _opened(reports, reuse=True) == 1
    store.opened = 5

    async def first() -> int:
        updates: AsyncGenerator[progress.Update, None] = reports.watch("spring")
        update = await anext(updates)
        await updates.aclose()
        return update.report.totals.engagement.opened

    assert asyncio.run(first()) == 5


def test_watches_that_find_them_old_read_them_once(monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(monkeypatch, 0.25)
    reports = _reports(store)
    _opened(reports, reuse=True)
    store.opened = 7
    store.seconds += COSTLY_SPACING * 0.25

    async def four_watches() -> list[int]:
        snapshots = await asyncio.gather(*(reports.snapshot("spring", reuse=True) for _ in range(4)))
        return [report.totals.engagement.opened for _, report in snapshots]

    # One reads them again; the others keep the last read's meanwhile.
    assert sorted(asyncio.run(four_watches())) == [1, 1, 1, 7]
    assert store.passes == 2
    assert _opened(reports, reuse=True) == 7
