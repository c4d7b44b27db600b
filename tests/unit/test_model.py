"""The values of a campaign: checked once, and stored in the form databases already hold."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from campaignd.errors import FieldViolation
from campaignd.model import Attestation, Audience, Guard, Remarketing, SendWindow, TransportShare

# Stored forms as the daemon has always written them (json.dumps of the column values).
STORED: list[tuple[Any, dict[str, Any]]] = [
    (
        Audience,
        {
            "target_lists": ["lists/a", "lists/b"],
            "target_segments": ["segments/s"],
            "exclude_lists": [],
            "exclude_segments": ["segments/t"],
        },
    ),
    (Guard, {"max_failure_percent": 7.5, "min_sends": 200}),
    (Guard, {"max_failure_percent": 0.0, "min_sends": 0}),
    (SendWindow, {"days": [1, 2, 3], "start_time": "09:00", "end_time": "17:30"}),
    (SendWindow, {"days": [], "start_time": "22:00", "end_time": "06:00"}),
    (TransportShare, {"transport": "relay-a", "percent": 70}),
    (
        Remarketing,
        {"campaign": "campaigns/spring", "channel_id": "mail", "outcomes": ["failed", "no_answer"]},
    ),
    (
        Attestation,
        {
            "accepted_by": "ops@example.org",
            "terms_version": "v2",
            "accept_time": "2026-03-01T10:00:00.250000+00:00",
        },
    ),
]


@pytest.mark.parametrize(("kind", "stored"), STORED)
def test_a_stored_value_reads_and_writes_back_byte_for_byte(kind: Any, stored: dict[str, Any]) -> None:
    """Loading a stored value and storing it again gives the same JSON text."""
    assert json.dumps(kind.from_json(stored).to_json()) == json.dumps(stored)


def test_an_audience_of_an_older_row_without_every_key_reads() -> None:
    """Keys missing from a stored audience read as empty."""
    audience = Audience.from_json({"target_lists": ["lists/a"]})
    assert audience == Audience(target_lists=("lists/a",))
    assert audience.targeted
    assert not Audience().targeted


def test_a_send_window_is_checked_with_every_problem_on_its_path() -> None:
    """Bad days, times that are not HH:MM, equal start and end and unknown keys are all reported."""
    window, problems = SendWindow.check(
        {"days": [0, 3, 8], "start_time": "9:00", "end_time": "24:00", "zone": "x"}, "w"
    )
    assert window is None
    assert problems == [
        FieldViolation("w.zone", "unknown field"),
        FieldViolation("w.days[0]", "must be 1 (Monday) to 7 (Sunday)"),
        FieldViolation("w.days[2]", "must be 1 (Monday) to 7 (Sunday)"),
        FieldViolation("w.start_time", "must be HH:MM"),
        FieldViolation("w.end_time", "must be HH:MM"),
    ]
    _, same = SendWindow.check({"start_time": "08:00", "end_time": "08:00"}, "w")
    assert same == [FieldViolation("w", "start_time and end_time must differ")]


def test_a_good_send_window_keeps_its_days_sorted_once() -> None:
    """Days given twice or out of order are stored once, in order."""
    window, problems = SendWindow.check({"days": [5, 1, 5], "start_time": "08:00", "end_time": "21:00"}, "w")
    assert problems == []
    assert window is not None
    assert window.to_json() == {"days": [1, 5], "start_time": "08:00", "end_time": "21:00"}
    assert (window.start, window.end) == (dt.time(8), dt.time(21))


def test_an_attestation_keeps_its_time() -> None:
    """The accept time is a timezone-aware datetime, written back in ISO 8601."""
    when = dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.UTC)
    attestation = Attestation("ops", "v1", when)
    assert Attestation.from_json(attestation.to_json()) == attestation
    assert attestation.to_json()["accept_time"] == "2026-03-01T10:00:00+00:00"


def test_a_remarketing_source_names_its_campaign() -> None:
    """The source campaign's id is its name without the collection."""
    assert Remarketing("campaigns/spring", "mail", ("failed",)).campaign_id == "spring"
