"""The current rate, from samples of the sends started so far."""

from __future__ import annotations

import datetime as dt

import pytest

from campaignd.campaigns.progress import RATE_WINDOW, SAMPLE_INTERVAL, RateMeter, current_rate
from campaignd.clock import Clock


class FakeClock(Clock):
    """A clock the test moves."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

    def now(self) -> dt.datetime:
        return self.start + dt.timedelta(seconds=self.t - 1000.0)

    def monotonic(self) -> float:
        return self.t


def _steady(rate: float, seconds: float) -> list[tuple[float, int]]:
    """Samples every SAMPLE_INTERVAL of a channel sending `rate` per second."""
    steps = int(seconds / SAMPLE_INTERVAL)
    return [(i * SAMPLE_INTERVAL, round(rate * i * SAMPLE_INTERVAL)) for i in range(steps + 1)]


def test_the_rate_is_the_increase_over_the_last_window() -> None:
    """At 200/s the rate is 200/s, early in the run (over the time sampled) and later (over 10 s)."""
    samples = _steady(200.0, 30.0)
    for now in (1.0, 5.0, 12.0, 30.0):
        seen = [s for s in samples if s[0] <= now]
        assert current_rate(seen, now) == pytest.approx(200.0, rel=0.01)


def test_a_change_of_pace_shows_within_a_window() -> None:
    """From 100/s to 300/s: ten seconds later the rate is 300/s."""
    slow = _steady(100.0, 20.0)
    fast = [(20.0 + t, 2000 + n) for t, n in _steady(300.0, 20.0)[1:]]
    samples = slow + fast
    assert current_rate([s for s in samples if s[0] <= 20.0], 20.0) == pytest.approx(100.0, rel=0.01)
    assert current_rate([s for s in samples if s[0] <= 30.5], 30.5) == pytest.approx(300.0, rel=0.02)


def test_once_sampling_stops_the_rate_falls_to_zero() -> None:
    """After the last sample (the channel stopped running) the rate falls, and is 0 a window later."""
    samples = _steady(100.0, 20.0)
    assert current_rate(samples, 20.25) == pytest.approx(100.0, rel=0.01)
    falling = [current_rate(samples, t) for t in (22.0, 25.0, 28.0)]
    assert falling == sorted(falling, reverse=True)
    assert 0 < falling[-1] < 100.0
    assert current_rate(samples, 20.0 + RATE_WINDOW) == 0.0


def test_one_sample_is_no_rate() -> None:
    """Before a second sample there is nothing to measure."""
    assert current_rate([], 5.0) == 0.0
    assert current_rate([(1.0, 10)], 5.0) == 0.0


def test_the_meter_keeps_one_run_and_the_samples_of_one_window() -> None:
    """Samples of a run give its rate; a sample over a window old is forgotten."""
    clock = FakeClock()
    meter = RateMeter(None, clock)  # type: ignore[arg-type]  # no database: observed by hand
    began = clock.now()
    for i in range(121):
        meter.observe(("c", "m"), began, 50 * i)
        clock.t += SAMPLE_INTERVAL
    clock.t -= SAMPLE_INTERVAL
    assert meter.rate("c", "m") == pytest.approx(200.0)
    assert len(meter._runs[("c", "m")].samples) == RATE_WINDOW / SAMPLE_INTERVAL + 1


def test_a_new_run_starts_a_new_measure() -> None:
    """After a pause and a resume (a new state_time) the rate measures only the new run."""
    clock = FakeClock()
    meter = RateMeter(None, clock)  # type: ignore[arg-type]
    first = clock.now()
    meter.observe(("c", "m"), first, 0)
    clock.t += 1.0
    meter.observe(("c", "m"), first, 1000)
    clock.t += 60.0
    resumed = clock.now()
    meter.observe(("c", "m"), resumed, 1000)
    clock.t += 4.0
    meter.observe(("c", "m"), resumed, 1100)
    assert meter.rate("c", "m") == pytest.approx(25.0)
