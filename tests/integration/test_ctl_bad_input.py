"""campaignctl with out-of-range values: a message and exit 2, or the documented capping."""

from __future__ import annotations

import pytest

from tests.integration.conftest import DaemonProcess
from tests.integration.ctl import ctl_at, ok

ATTESTATION = ["--accepted-by", "tests", "--terms-version", "v1"]


@pytest.mark.parametrize(
    "when",
    [
        "+9999999999d",
        "+999999999d",
        "+99999999999999999999s",
        "9999-12-31T23:59:59-01:00",
        "0001-01-01T00:00:00+01:00",
    ],
)
def test_schedule_times_out_of_range_are_usage_errors(daemon: DaemonProcess, when: str) -> None:
    """A --at beyond what a time can hold is refused with a message and exit 2, not a traceback."""
    ok(daemon, "create", "--id", "later", "--display-name", "Later")
    result = ctl_at(daemon, "schedule", "later", "--at", when, *ATTESTATION)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert "invalid time" in result.stderr


def test_a_page_size_beyond_the_protocol_is_capped(daemon: DaemonProcess) -> None:
    """--page-size above what the request holds is capped like the daemon caps it, not a crash."""
    ok(daemon, "create", "--id", "paged", "--display-name", "Paged")
    assert "paged" in ok(daemon, "list", "--page-size", "3000000000")
    assert "paged" in ok(daemon, "list", "--page-size", "9" * 30)
