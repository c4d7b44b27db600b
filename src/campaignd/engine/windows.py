"""Send windows (SPEC §4.3): days of the week and local hours in which messages may go.

Local means the recipient's time zone when known, else the campaign's. A window whose end is
before its start runs across midnight (22:00-06:00 is open late evening and early morning, and
belongs to the day it starts on).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

ALL_DAYS = frozenset(range(1, 8))
# A window's start_time or end_time, as requests, stored records and plugins' defaults write it.
HHMM = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")


@dataclass(frozen=True)
class SendWindow:
    """ISO weekdays (1 = Monday) and a local [start, end) time range."""

    days: frozenset[int]
    start: dt.time
    end: dt.time

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> SendWindow:
        """From the stored form: {"days": [...], "start_time": "HH:MM", "end_time": "HH:MM"}."""
        return cls(
            days=frozenset(record.get("days") or ALL_DAYS),
            start=dt.time.fromisoformat(record["start_time"]),
            end=dt.time.fromisoformat(record["end_time"]),
        )

    @property
    def overnight(self) -> bool:
        """Whether the window runs across midnight."""
        return self.end <= self.start

    def is_open(self, zone: ZoneInfo, now: dt.datetime) -> bool:
        """Whether a message to someone in `zone` may go at `now` (an aware datetime)."""
        local = now.astimezone(zone)
        clock, today = local.time(), local.isoweekday()
        if not self.overnight:
            return today in self.days and self.start <= clock < self.end
        yesterday = 7 if today == 1 else today - 1
        return (today in self.days and clock >= self.start) or (yesterday in self.days and clock < self.end)

    def next_open(self, zone: ZoneInfo, now: dt.datetime) -> dt.datetime:
        """When the window is next open for `zone`: `now` when open, else its next start (UTC)."""
        if self.is_open(zone, now):
            return now.astimezone(dt.UTC)
        local = now.astimezone(zone)
        for ahead in range(8):
            day = local.date() + dt.timedelta(days=ahead)
            if day.isoweekday() not in self.days:
                continue
            opening = _local(day, self.start, zone)
            if opening > now:
                return opening.astimezone(dt.UTC)
        raise ValueError("a send window with no days never opens")


def _local(day: dt.date, clock: dt.time, zone: ZoneInfo) -> dt.datetime:
    # A start inside a DST gap (02:30 on the spring-forward day) does not exist; take the moment
    # the clocks jump to, which is when such a window really opens.
    naive = dt.datetime.combine(day, clock)
    aware = naive.replace(tzinfo=zone)
    round_trip = aware.astimezone(dt.UTC).astimezone(zone).replace(tzinfo=None)
    if round_trip != naive:
        aware = (naive + dt.timedelta(hours=1)).replace(minute=0, second=0, tzinfo=zone)
    return aware


# Quiet hours for SMS and voice (TCPA: 8 am to 9 pm at the called party's location).
QUIET_HOURS_WINDOW = SendWindow(ALL_DAYS, dt.time(8, 0), dt.time(21, 0))
