"""Send windows in recipients' local time, and their stored form."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from campaignd.model import QUIET_HOURS_WINDOW, SendWindow

NY = ZoneInfo("America/New_York")
TOKYO = ZoneInfo("Asia/Tokyo")
UTC = ZoneInfo("UTC")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=UTC)


WEEKDAYS_9_TO_5 = SendWindow.from_json({"days": [1, 2, 3, 4, 5], "start_time": "09:00", "end_time": "17:00"})


def test_open_in_local_hours_only() -> None:
    """A 9-17 window is open at 10:00 New York time and closed at 08:59 there."""
    # 2026-11-24 is a Tuesday; New York is UTC-5 in November.
    assert WEEKDAYS_9_TO_5.is_open(NY, utc(2026, 11, 24, 15, 0))
    assert not WEEKDAYS_9_TO_5.is_open(NY, utc(2026, 11, 24, 13, 59))
    assert not WEEKDAYS_9_TO_5.is_open(NY, utc(2026, 11, 24, 22, 0))


def test_one_moment_open_in_one_zone_and_closed_in_another() -> None:
    """At 15:00 UTC the window is open in New York and closed in Tokyo (00:00 there)."""
    now = utc(2026, 11, 24, 15, 0)
    assert WEEKDAYS_9_TO_5.is_open(NY, now)
    assert not WEEKDAYS_9_TO_5.is_open(TOKYO, now)
    assert WEEKDAYS_9_TO_5.next_open(TOKYO, now) == utc(2026, 11, 25, 0, 0)  # 09:00 Wednesday in Tokyo


def test_weekend_waits_for_monday() -> None:
    """On Saturday the next opening of a weekday window is Monday 09:00 local."""
    saturday_noon_ny = utc(2026, 11, 28, 17, 0)
    assert WEEKDAYS_9_TO_5.next_open(NY, saturday_noon_ny) == utc(2026, 11, 30, 14, 0)


def test_overnight_window_belongs_to_the_day_it_starts() -> None:
    """A Friday-only 22:00-06:00 window is open Friday 23:00 and Saturday 05:00, not Saturday 23:00."""
    window = SendWindow.from_json({"days": [5], "start_time": "22:00", "end_time": "06:00"})
    assert window.is_open(UTC, utc(2026, 11, 27, 23, 0))
    assert window.is_open(UTC, utc(2026, 11, 28, 5, 0))
    assert not window.is_open(UTC, utc(2026, 11, 28, 23, 0))
    assert not window.is_open(UTC, utc(2026, 11, 27, 21, 0))


def test_next_open_is_now_when_open() -> None:
    """next_open of an open window is the moment asked about."""
    now = utc(2026, 11, 24, 15, 0)
    assert WEEKDAYS_9_TO_5.next_open(NY, now) == now


def test_quiet_hours_default() -> None:
    """SMS and voice quiet hours: 08:00-21:00 at the recipient's location."""
    assert QUIET_HOURS_WINDOW.is_open(NY, utc(2026, 11, 24, 13, 0))  # 08:00 in New York
    assert not QUIET_HOURS_WINDOW.is_open(NY, utc(2026, 11, 25, 2, 0))  # 21:00 in New York


def test_dst_gap_start_opens_when_clocks_jump() -> None:
    """A window starting at 02:30 on the spring-forward night opens at 03:00 local."""
    window = SendWindow.from_json({"days": [], "start_time": "02:30", "end_time": "04:00"})
    # 2026-03-08 02:00 EST -> 03:00 EDT in New York.
    before = dt.datetime(2026, 3, 8, 1, 0, tzinfo=NY)
    opening = window.next_open(NY, before)
    assert opening.astimezone(NY).replace(tzinfo=None) == dt.datetime(2026, 3, 8, 3, 0)


def test_window_without_days_opens_every_day() -> None:
    """No days means every day: the window opens on a Sunday, and keeps no days when stored."""
    window = SendWindow.from_json({"days": [], "start_time": "09:00", "end_time": "10:00"})
    assert window.is_open(UTC, utc(2026, 11, 29, 9, 30))  # a Sunday
    assert window.to_json() == {"days": [], "start_time": "09:00", "end_time": "10:00"}


@given(
    now=st.datetimes(
        min_value=dt.datetime(2025, 1, 1), max_value=dt.datetime(2030, 1, 1), timezones=st.just(UTC)
    ),
    zone=st.sampled_from([NY, TOKYO, ZoneInfo("Europe/Berlin"), ZoneInfo("Australia/Lord_Howe"), UTC]),
    start=st.integers(0, 23),
    length=st.integers(1, 23),
    days=st.lists(st.integers(1, 7), unique=True).map(lambda d: tuple(sorted(d))),
)
def test_property_next_open_is_open_and_not_in_the_past(
    now: dt.datetime, zone: ZoneInfo, start: int, length: int, days: tuple[int, ...]
) -> None:
    """The moment next_open returns is never before now, and the window is open then."""
    window = SendWindow(days, dt.time(start), dt.time((start + length) % 24))
    opening = window.next_open(zone, now)
    assert opening >= now
    assert window.is_open(zone, opening)
