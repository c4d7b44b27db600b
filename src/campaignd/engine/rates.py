"""Send rates honoured over any one-second window (SPEC §4.1), not on average, and spread out
within the second.

A token bucket of r tokens lets 2r sends through a window that straddles a refill; a sliding log
of the last second's sends cannot. The log alone lets a second's worth go at once, and while
sends are held at the rate that burst repeats every second; so each unit also waits for its place
in an evenly spaced stream at the rate, give or take SPREAD seconds' worth. Weights let an SMS of
three parts count as three messages.
"""

from __future__ import annotations

import asyncio
import collections
import math

from campaignd.clock import Clock

WINDOW = 1.0
# How far ahead of its place in an evenly spaced stream a unit may go: a provider sees at most
# this long's worth of sends (at the rate) at once, plus one.
SPREAD = 0.1
# How often a caller waiting for units that others hold looks again.
HELD_POLL = 0.01


class RateLimiter:
    """At most `rate` units in any window of one second; rates below 1 space single sends apart."""

    def __init__(self, rate: float, clock: Clock | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.clock = clock or Clock()
        self._log: collections.deque[tuple[float, float]] = collections.deque()  # (time, weight)
        self._in_window = 0.0
        self._reserved = 0.0  # held by reserve() and not yet sent
        # When the next unit is due in an evenly spaced stream at the rate (units sent and held
        # have taken their places before it).
        self._due = 0.0
        # The same for the units sent: held units taken together (after a start mark's write,
        # say) still go one by one at the rate, not at once.
        self._sent_due = 0.0
        self._lock = asyncio.Lock()
        self.rate = rate

    def set_rate(self, rate: float) -> None:
        """Change the rate (on reload); sends already logged still count."""
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate

    def _forget(self, now: float) -> None:
        horizon = self._horizon()
        while self._log and self._log[0][0] <= now - horizon:
            self._in_window -= self._log.popleft()[1]

    def _horizon(self) -> float:
        # Below one unit per second the window stretches so that one unit fits: 0.5/s is one per 2 s.
        return WINDOW if self.rate >= 1 else WINDOW / self.rate

    def _capacity(self) -> float:
        return max(self.rate, 1.0) if self.rate >= 1 else 1.0

    def delay(self, weight: float = 1.0, placed: bool = False) -> float:
        """Seconds to wait before `weight` units may go; 0 when they may go now. `placed`: units
        held by `reserve`, which have their place in the stream already."""
        now = self.clock.monotonic()
        due = self._sent_due if placed else max(self._due, self._sent_due)
        return max(due - SPREAD - now, self._window_delay(weight, now), 0.0)

    def _window_delay(self, weight: float, now: float) -> float:
        self._forget(now)
        capacity = self._capacity()
        if weight > capacity:
            # A unit heavier than the whole window (e.g. a 10-part SMS at 5/s) goes alone.
            if self._reserved:
                return HELD_POLL  # until the units held are sent or given up
            return 0.0 if not self._log else self._log[-1][0] + self._horizon() - now
        excess = self._in_window + self._reserved + weight - capacity
        if excess <= 1e-9:
            return 0.0
        released = 0.0
        # Units held are not in the log: they leave the window only once sent and aged out.
        for time, logged in self._log:
            released += logged
            if released >= excess - 1e-9:
                return max(0.0, time + self._horizon() - now)
        # The rest is held: it must be sent (or given up) first, by a caller that does not wait
        # behind this one.
        return HELD_POLL

    def record(self, weight: float = 1.0, placed: bool = False) -> None:
        """Count `weight` units as sent now (`placed`: held by `reserve`, which placed them)."""
        now = self.clock.monotonic()
        self._forget(now)
        self._log.append((now, weight))
        self._in_window += weight
        self._sent_due = max(self._sent_due, now) + weight / self.rate
        if not placed:
            self._place(weight, now)

    def _place(self, weight: float, now: float) -> None:
        self._due = max(self._due, now) + weight / self.rate

    async def reserve(self, weight: float = 1.0) -> None:
        """Wait until `weight` units could go and hold them, so that callers after this one wait
        behind it; `acquire(weight, reserved=True)` then takes them, or `release` gives them up."""
        async with self._lock:
            # The wait is for time to pass, not for another task, so a sleep is the right tool.
            while (wait := self.delay(weight)) > 0:  # noqa: ASYNC110
                await asyncio.sleep(math.nextafter(wait, math.inf))
            self._reserved += weight
            self._place(weight, self.clock.monotonic())

    def release(self, weight: float = 1.0) -> None:
        """Give up units held by `reserve`, and their place in the stream."""
        self._unhold(weight)
        self._due -= weight / self.rate

    def _unhold(self, weight: float) -> None:
        self._reserved = max(0.0, self._reserved - weight)

    async def acquire(self, weight: float = 1.0, reserved: bool = False) -> None:
        """Wait until `weight` units may go (held already when `reserved`), then count them."""
        if reserved:
            # Not behind the lock: a reserve() waiting under it may wait for exactly these units
            # to be sent. They keep their hold while they wait for their turn among the sends.
            while True:
                self._unhold(weight)
                wait = self.delay(weight, placed=True)
                if wait <= 0:
                    self.record(weight, placed=True)
                    return
                self._reserved += weight
                await asyncio.sleep(math.nextafter(wait, math.inf))
        async with self._lock:
            # The wait is for time to pass, not for another task, so a sleep is the right tool.
            while (wait := self.delay(weight)) > 0:  # noqa: ASYNC110
                await asyncio.sleep(math.nextafter(wait, math.inf))
            self.record(weight)


class RecentCount:
    """How many of something happened per second over the last `window` seconds, counted in
    one-second buckets (a send rate for the metrics, not a limit)."""

    def __init__(self, window: int = 10, clock: Clock | None = None) -> None:
        self.window = window
        self.clock = clock or Clock()
        self._buckets: collections.deque[list[int]] = collections.deque()  # [second, count]

    def add(self, n: int = 1) -> None:
        """Count `n` now."""
        second = int(self.clock.monotonic())
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += n
        else:
            self._buckets.append([second, n])
            while self._buckets[0][0] <= second - self.window:
                self._buckets.popleft()

    def per_second(self, since: float | None = None) -> float:
        """The count per second over the window, or over the time since `since` (a monotonic
        time, at least a second ago) when that is shorter."""
        now = self.clock.monotonic()
        first = int(now) - self.window + 1
        span = now - first
        if since is not None:
            span = min(span, max(1.0, now - since))
        return sum(n for second, n in self._buckets if second >= first) / span
