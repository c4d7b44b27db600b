"""The rate limiter against a clock the test moves."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaignd.clock import Clock
from campaignd.engine.rates import SPREAD, RateLimiter


class FakeClock(Clock):
    """A monotonic clock that only the test moves."""

    def __init__(self) -> None:
        self.now_seconds = 1000.0

    def monotonic(self) -> float:
        return self.now_seconds


def _drive(
    limiter: RateLimiter, clock: FakeClock, sends: int, weights: list[float] | None = None
) -> list[float]:
    """Send as fast as the limiter allows, jumping the clock over each wait; returns send times."""
    times = []
    for i in range(sends):
        weight = weights[i] if weights else 1.0
        while (wait := limiter.delay(weight)) > 0:
            clock.now_seconds += wait
        limiter.record(weight)
        times.append(clock.now_seconds)
    return times


def _max_in_any_window(times: list[float], weights: list[float], window: float = 1.0) -> float:
    worst = 0.0
    for i, start in enumerate(times):
        total = sum(w for t, w in zip(times[i:], weights[i:], strict=True) if t < start + window - 1e-9)
        worst = max(worst, total)
    return worst


def test_never_more_than_the_rate_in_any_one_second_window() -> None:
    """At 100/s, 1000 sends never put more than 100 into any one-second window."""
    clock = FakeClock()
    times = _drive(RateLimiter(100, clock), clock, 1000)
    assert _max_in_any_window(times, [1.0] * 1000) == 100
    # An evenly spaced stream at the rate, the first SPREAD seconds' worth at once.
    assert times[-1] - times[0] == pytest.approx(999 / 100 - SPREAD, abs=0.01)


def test_sends_are_spread_within_the_second() -> None:
    """At 100/s no tenth of a second carries more than the SPREAD allowance (11 at once, at the
    start and after a quiet spell) and the tenth's own share: the log alone let the first
    second's 100 go at once, and then 100 at once every second."""
    clock = FakeClock()
    limiter = RateLimiter(100, clock)
    times = _drive(limiter, clock, 300)
    clock.now_seconds += 5.0
    times += _drive(limiter, clock, 300)
    assert _max_in_any_window(times, [1.0] * 600, window=0.1) <= 100 * SPREAD + 11
    assert _max_in_any_window(times, [1.0] * 600) == 100
    gaps = [b - a for a, b in itertools.pairwise(times[:300])]
    # Never a second's pause: at most the SPREAD allowance's, when it comes out of the window.
    assert max(gaps) <= SPREAD + 0.01 + 1e-6


def test_a_burst_after_idle_is_capped_too() -> None:
    """After a quiet spell, the burst allowed is the rate, not twice the rate."""
    clock = FakeClock()
    limiter = RateLimiter(10, clock)
    first = _drive(limiter, clock, 10)
    clock.now_seconds += 0.95
    second = _drive(limiter, clock, 10)
    assert _max_in_any_window(first + second, [1.0] * 20) == 10


def test_rates_below_one_space_sends_apart() -> None:
    """At 0.5/s sends are two seconds apart."""
    clock = FakeClock()
    times = _drive(RateLimiter(0.5, clock), clock, 4)
    assert [round(b - a, 6) for a, b in itertools.pairwise(times)] == [2.0, 2.0, 2.0]


def test_weights_count_as_units() -> None:
    """A three-part SMS uses three units of the per-second allowance."""
    clock = FakeClock()
    weights = [3.0] * 10
    times = _drive(RateLimiter(6, clock), clock, 10, weights)
    assert _max_in_any_window(times, weights) <= 6


def test_a_unit_heavier_than_the_rate_goes_alone() -> None:
    """A weight above the rate waits for a full empty window, then goes by itself."""
    clock = FakeClock()
    limiter = RateLimiter(2, clock)
    times = _drive(limiter, clock, 3, [1.0, 5.0, 1.0])
    assert times[1] - times[0] == pytest.approx(1.0)


@settings(max_examples=60, deadline=None)
@given(
    rate=st.sampled_from([1, 3, 7.5, 50, 200]),
    weights=st.lists(st.sampled_from([1.0, 1.0, 1.0, 2.0, 3.0]), min_size=1, max_size=300),
    gaps=st.lists(st.floats(min_value=0, max_value=0.3), min_size=300, max_size=300),
)
def test_property_no_window_exceeds_the_rate(rate: float, weights: list[float], gaps: list[float]) -> None:
    """Whatever the pauses between attempts, no one-second window carries more than the rate."""
    clock = FakeClock()
    limiter = RateLimiter(rate, clock)
    times = []
    for weight, gap in zip(weights, gaps, strict=False):
        clock.now_seconds += gap
        while (wait := limiter.delay(weight)) > 0:
            clock.now_seconds += wait
        limiter.record(weight)
        times.append(clock.now_seconds)
    allowed = max(rate, max(weights))
    assert _max_in_any_window(times, weights[: len(times)]) <= allowed + 1e-9


def test_acquire_waits_in_real_time() -> None:
    """acquire() really sleeps: 30 units at 20/s take at least half a second of wall time."""

    async def run() -> float:
        limiter = RateLimiter(20)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.gather(*(limiter.acquire() for _ in range(30)))
        return loop.time() - started

    assert asyncio.run(run()) >= 0.5


def test_reserved_units_hold_their_place_until_taken() -> None:
    """reserve() holds units without logging a send: at 20/s, twenty reservations fill the
    window and a twenty-first waits. The twenty acquire(reserved=True), asked at once (as after
    a start mark's write), go one by one at the rate, not in a burst."""

    async def run() -> None:
        limiter = RateLimiter(20)
        for _ in range(20):
            await limiter.reserve()
        assert limiter.delay() > 0  # the held units count
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(limiter.reserve(), 0.2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        sent: list[float] = []

        async def send() -> None:
            await limiter.acquire(reserved=True)
            sent.append(loop.time() - started)

        await asyncio.gather(*(send() for _ in range(20)))
        # SPREAD's worth (2 at 20/s) and one more at once, then one per 50 ms.
        assert 0.7 < sent[-1] < 1.2, sent
        assert max(sum(1 for t in sent if a <= t < a + 0.1) for a in sent) <= 4, sent
        assert limiter.delay() > 0  # now as sends, in the window

    asyncio.run(run())


def test_more_callers_than_the_rate_all_get_through() -> None:
    """At 2/s, four callers that each reserve, then acquire what they reserved (the engine's
    batches in flight), send 12 units in about 6 s. A reserve() waiting for units another
    caller holds must not keep that caller from sending them (it did: none was ever sent)."""

    async def run() -> None:
        limiter = RateLimiter(2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        sent: list[float] = []

        async def caller() -> None:
            for _ in range(3):
                await limiter.reserve()
                await asyncio.sleep(0.01)  # the start mark's write
                await limiter.acquire(reserved=True)
                sent.append(loop.time() - started)

        await asyncio.wait_for(asyncio.gather(*(caller() for _ in range(4))), 10)
        assert len(sent) == 12
        assert 4.5 < sent[-1] < 7.0, sent
        assert all(sum(1 for t in sent if a <= t < a + 1.0) <= 2 for a in sent), sent

    asyncio.run(run())


def test_released_units_free_their_place() -> None:
    """Units given up with release() let the next caller go at once."""

    async def run() -> None:
        limiter = RateLimiter(2)
        await limiter.reserve()
        await limiter.reserve()
        assert limiter.delay() > 0
        limiter.release()
        assert limiter.delay() == 0
        await asyncio.wait_for(limiter.reserve(), 0.05)

    asyncio.run(run())


def test_rejects_non_positive_rates() -> None:
    """A rate of zero or less is a programming error, refused at once."""
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(0)
    limiter = RateLimiter(1)
    with pytest.raises(ValueError, match="positive"):
        limiter.set_rate(-random.random())
