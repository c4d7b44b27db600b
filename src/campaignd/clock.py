"""The one clock: wall time for records and schedules, monotonic time for rates and timeouts."""

from __future__ import annotations

import datetime as dt
import time


class Clock:
    """Real time. Tests substitute a subclass they can move."""

    def now(self) -> dt.datetime:
        """The current UTC time, timezone-aware."""
        return dt.datetime.now(dt.UTC)

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        return time.monotonic()
