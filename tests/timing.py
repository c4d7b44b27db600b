"""The mark for tests that time a real daemon, or a real process, on a shared machine."""

from __future__ import annotations

import pytest

# These tests assert timings (a rate within 15 %, a bound on sends in doubt at a kill, a worker
# killed within its grace) that hold on an idle machine and that a machine loaded by other work
# can stretch once. A second run must pass on its own: behaviour that is wrong fails both runs.
timed = pytest.mark.flaky(reruns=1, reruns_delay=5)
