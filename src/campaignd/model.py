"""What a campaign is made of: its records and the small values inside them.

Each value is built and checked once (from a request in `api/convert.py`, from its stored JSON
when a record is loaded) and then passed around as a frozen type. `to_json` gives exactly the
stored form the database has always held, so existing databases read and write the same.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from campaignd.errors import FieldViolation
from campaignd.lifecycle import CampaignState, ChannelState, derive_campaign_state

HHMM = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")
ALL_DAYS = frozenset(range(1, 8))


@dataclass(frozen=True)
class Audience:
    """Who a campaign's channels reach: lists and segments to target, and to leave out, by name
    (`lists/{id}`, `segments/{id}`)."""

    target_lists: tuple[str, ...] = ()
    target_segments: tuple[str, ...] = ()
    exclude_lists: tuple[str, ...] = ()
    exclude_segments: tuple[str, ...] = ()

    KEYS = ("target_lists", "target_segments", "exclude_lists", "exclude_segments")

    @classmethod
    def from_json(cls, stored: Mapping[str, Sequence[str]]) -> Audience:
        """From the stored form, a JSON object with the four keys."""
        return cls(*(tuple(stored.get(key, ())) for key in cls.KEYS))

    def to_json(self) -> dict[str, list[str]]:
        """The stored form."""
        return {key: list(getattr(self, key)) for key in self.KEYS}

    @property
    def targeted(self) -> bool:
        """Whether anyone is targeted: at least one list or segment."""
        return bool(self.target_lists or self.target_segments)


@dataclass(frozen=True)
class Guard:
    """A campaign's own failure-rate guard; 0 means the daemon's `[engine]` default."""

    max_failure_percent: float = 0.0
    min_sends: int = 0

    @classmethod
    def from_json(cls, stored: Mapping[str, Any]) -> Guard:
        """From the stored form."""
        return cls(stored.get("max_failure_percent", 0.0), stored.get("min_sends", 0))

    def to_json(self) -> dict[str, Any]:
        """The stored form."""
        return {"max_failure_percent": self.max_failure_percent, "min_sends": self.min_sends}


@dataclass(frozen=True)
class SendWindow:
    """Days of the week and local hours in which a channel's messages may go (SPEC §4.3).

    Local means the recipient's time zone when known, else the campaign's. A window whose end is
    before its start runs across midnight (22:00-06:00 is open late evening and early morning,
    and belongs to the day it starts on). No days means every day.
    """

    days: tuple[int, ...]  # ISO weekdays, 1 = Monday
    start: dt.time
    end: dt.time

    KEYS = frozenset({"days", "start_time", "end_time"})

    @classmethod
    def check(cls, value: Mapping[str, Any], path: str) -> tuple[SendWindow | None, list[FieldViolation]]:
        """The window `value` (in the stored form) describes, or None with every problem, each on
        its path under `path`."""
        problems = [FieldViolation(f"{path}.{key}", "unknown field") for key in sorted(set(value) - cls.KEYS)]
        days = value.get("days") or []
        if not isinstance(days, list | tuple):
            problems.append(FieldViolation(f"{path}.days", "must be a list of 1 (Monday) to 7 (Sunday)"))
            days = []
        for index, day in enumerate(days):
            if not isinstance(day, int) or isinstance(day, bool) or not 1 <= day <= 7:
                problems.append(FieldViolation(f"{path}.days[{index}]", "must be 1 (Monday) to 7 (Sunday)"))
        times = [value.get(key) for key in ("start_time", "end_time")]
        for key, text in zip(("start_time", "end_time"), times, strict=True):
            if not isinstance(text, str) or not HHMM.fullmatch(text):
                problems.append(FieldViolation(f"{path}.{key}", "must be HH:MM"))
        if times[0] and times[0] == times[1]:
            problems.append(FieldViolation(path, "start_time and end_time must differ"))
        if problems:
            return None, problems
        return cls.from_json({"days": sorted(set(days)), "start_time": times[0], "end_time": times[1]}), []

    @classmethod
    def from_json(cls, stored: Mapping[str, Any]) -> SendWindow:
        """From the stored form: {"days": [...], "start_time": "HH:MM", "end_time": "HH:MM"}."""
        return cls(
            days=tuple(stored.get("days") or ()),
            start=dt.time.fromisoformat(stored["start_time"]),
            end=dt.time.fromisoformat(stored["end_time"]),
        )

    def to_json(self) -> dict[str, Any]:
        """The stored form."""
        return {"days": list(self.days), "start_time": self.start_time, "end_time": self.end_time}

    @property
    def start_time(self) -> str:
        """The start as HH:MM."""
        return self.start.strftime("%H:%M")

    @property
    def end_time(self) -> str:
        """The end as HH:MM."""
        return self.end.strftime("%H:%M")

    @property
    def open_days(self) -> frozenset[int]:
        """The weekdays the window opens on."""
        return frozenset(self.days) or ALL_DAYS

    @property
    def overnight(self) -> bool:
        """Whether the window runs across midnight."""
        return self.end <= self.start

    def is_open(self, zone: ZoneInfo, now: dt.datetime) -> bool:
        """Whether a message to someone in `zone` may go at `now` (an aware datetime)."""
        local = now.astimezone(zone)
        clock, today, days = local.time(), local.isoweekday(), self.open_days
        if not self.overnight:
            return today in days and self.start <= clock < self.end
        yesterday = 7 if today == 1 else today - 1
        return (today in days and clock >= self.start) or (yesterday in days and clock < self.end)

    def next_open(self, zone: ZoneInfo, now: dt.datetime) -> dt.datetime:
        """When the window is next open for `zone`: `now` when open, else its next start (UTC)."""
        if self.is_open(zone, now):
            return now.astimezone(dt.UTC)
        local = now.astimezone(zone)
        # Within a week every open day comes round once, and today's start may still be ahead.
        openings = (
            _local(day, self.start, zone)
            for day in (local.date() + dt.timedelta(days=ahead) for ahead in range(8))
            if day.isoweekday() in self.open_days
        )
        return next(opening for opening in openings if opening > now).astimezone(dt.UTC)


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
QUIET_HOURS_WINDOW = SendWindow((), dt.time(8, 0), dt.time(21, 0))


@dataclass(frozen=True)
class TransportShare:
    """A channel's percentage of recipients through one configured transport."""

    transport: str
    percent: int

    @classmethod
    def from_json(cls, stored: Mapping[str, Any]) -> TransportShare:
        """From the stored form."""
        return cls(stored["transport"], stored["percent"])

    def to_json(self) -> dict[str, Any]:
        """The stored form."""
        return {"transport": self.transport, "percent": self.percent}


@dataclass(frozen=True)
class Remarketing:
    """A remarketing channel's audience: the recipients of an earlier channel with these outcomes."""

    campaign: str  # campaigns/{id}
    channel_id: str
    outcomes: tuple[str, ...]

    @classmethod
    def from_json(cls, stored: Mapping[str, Any]) -> Remarketing:
        """From the stored form."""
        return cls(stored["campaign"], stored["channel_id"], tuple(stored["outcomes"]))

    def to_json(self) -> dict[str, Any]:
        """The stored form."""
        return {"campaign": self.campaign, "channel_id": self.channel_id, "outcomes": list(self.outcomes)}

    @property
    def campaign_id(self) -> str:
        """The source campaign's id."""
        return self.campaign.removeprefix("campaigns/")


@dataclass(frozen=True)
class Attestation:
    """An operator's statement that the campaign may legally be sent, and when it was recorded."""

    accepted_by: str
    terms_version: str
    accept_time: dt.datetime

    @classmethod
    def from_json(cls, stored: Mapping[str, Any]) -> Attestation:
        """From the stored form."""
        return cls(
            stored["accepted_by"], stored["terms_version"], dt.datetime.fromisoformat(stored["accept_time"])
        )

    def to_json(self) -> dict[str, Any]:
        """The stored form."""
        return {
            "accepted_by": self.accepted_by,
            "terms_version": self.terms_version,
            "accept_time": self.accept_time.isoformat(),
        }


@dataclass
class ChannelRecord:
    """One channel of a campaign."""

    channel_id: str
    type: str
    state: ChannelState
    content: dict[str, Any]
    transports: tuple[TransportShare, ...]
    rate_limit: float
    state_time: dt.datetime
    schedule_time: dt.datetime | None = None
    send_window: SendWindow | None = None
    error: dict[str, Any] | None = None
    remarketing: Remarketing | None = None
    audience_counts: dict[str, int] | None = None
    position: int = 0
    ambiguous_sends: str | None = None  # "resend", or None: skip


@dataclass
class CampaignRecord:
    """A campaign with its channels."""

    id: str
    display_name: str
    labels: dict[str, str]
    audience: Audience
    time_zone: str
    guard: Guard
    archived: bool
    version: int
    create_time: dt.datetime
    update_time: dt.datetime
    attestation: Attestation | None = None
    channels: list[ChannelRecord] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The resource name."""
        return f"campaigns/{self.id}"

    @property
    def etag(self) -> str:
        """The conflict token: changes whenever the campaign or one of its channels changes."""
        return f'"{self.version}"'

    @property
    def state(self) -> CampaignState:
        """Derived from the channels' states."""
        return derive_campaign_state(c.state for c in self.channels)

    def channel(self, channel_id: str) -> ChannelRecord | None:
        """The channel with this id, if any."""
        return next((c for c in self.channels if c.channel_id == channel_id), None)
