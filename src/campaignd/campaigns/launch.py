"""Launching a channel: its checks for launch (SPEC §3.5), the slots of its type (§4.4), and
freezing its recipients into messages.

Every way into RUNNING comes through here, inside the transaction of its move: LaunchCampaign,
the engine's start of a scheduled channel and its activation of a QUEUED one, and Resume,
Restart and RetryFailedMessages. The slot count is one function, made exact by the store's
slot lock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence

from sqlalchemy.engine import Connection

from campaignd import errors, lifecycle
from campaignd.audience import filters
from campaignd.clock import Clock
from campaignd.config import EngineSettings
from campaignd.errors import ApiError, Code, FieldViolation
from campaignd.lifecycle import Allowed, ChannelState
from campaignd.model import Audience, CampaignRecord, ChannelRecord
from campaignd.plugin.manager import Plugins
from campaignd.store import channels as channel_store
from campaignd.store import lists as list_store
from campaignd.store import locks, resolution
from campaignd.store import segments as segment_store

Chosen = list[tuple[ChannelRecord, Allowed]]


class Launcher:
    """The checks, slots and resolution every launch path shares."""

    def __init__(self, plugins: Plugins, engine: Callable[[], EngineSettings], clock: Clock) -> None:
        self.plugins = plugins
        self.engine = engine
        self.clock = clock

    # -- checks -------------------------------------------------------------------------------

    def check(self, conn: Connection, record: CampaignRecord, chosen: Iterable[ChannelRecord]) -> None:
        """§3.5 validation: every problem of the channels about to start, reported at once."""
        problems = []
        chosen = list(chosen)
        for channel in chosen:
            problems.extend(self.channel_problems(channel))
            if channel.remarketing is None and not record.audience.targeted:
                problems.append(
                    FieldViolation(
                        "campaign.audience", f"channel {channel.channel_id!r} has no target list or segment"
                    )
                )
        if any(c.remarketing is None for c in chosen):
            problems.extend(_missing_audience(conn, record.audience))
        if problems:
            raise ApiError(
                Code.FAILED_PRECONDITION,
                "VALIDATION_FAILED",
                "the campaign is not ready: " + "; ".join(f"{p.field}: {p.description}" for p in problems),
                problems,
            )

    def channel_problems(self, channel: ChannelRecord) -> list[FieldViolation]:
        """What keeps a channel from sending: its content and its transports, checked as at launch."""
        path = f"campaign.channels[{channel.channel_id}]"
        content = self.plugins.validate(channel.type, channel.content, launching=True)
        transports = self.plugins.check_transports(channel.type, channel.transports, launching=True)
        return [FieldViolation(f"{path}.content.{p.field}", p.description) for p in content] + [
            FieldViolation(f"{path}.{p.field}", p.description) for p in transports
        ]

    def check_audience(
        self, conn: Connection, record: CampaignRecord, chosen: Iterable[ChannelRecord]
    ) -> None:
        """FAILED_PRECONDITION when a list or segment the channels target does not exist."""
        if any(c.remarketing is None for c in chosen):
            problems = _missing_audience(conn, record.audience)
            if problems:
                raise ApiError(
                    Code.FAILED_PRECONDITION,
                    "VALIDATION_FAILED",
                    "; ".join(f"{p.field}: {p.description}" for p in problems),
                    problems,
                )

    # -- recipients ---------------------------------------------------------------------------

    def resolve(
        self, conn: Connection, record: CampaignRecord, channel: ChannelRecord, *, freeze: bool
    ) -> resolution.AudienceCounts:
        """Resolve one channel's recipients (§3.5 step 3); with `freeze`, write them as QUEUED messages."""
        declared = self.plugins.types.get(channel.type)
        address = declared.address if declared is not None else "email"
        when = (record.id, channel.channel_id, self.clock.now()) if freeze else None
        return resolution.resolve(
            conn, _audience(conn, record, channel), address=address, channel_type=channel.type, freeze=when
        )

    def freeze(self, conn: Connection, record: CampaignRecord, chosen: Iterable[ChannelRecord]) -> None:
        """Write the channels' recipients as QUEUED messages: the audience is resolved at launch
        or start, not when the channel was scheduled."""
        for channel in chosen:
            channel.schedule_time = None
            counts = self.resolve(conn, record, channel, freeze=True)
            channel.audience_counts = dataclasses.asdict(counts)

    # -- slots --------------------------------------------------------------------------------

    def limited(self, channel_type: str) -> bool:
        """Whether `[engine] slots` limits the type."""
        return channel_type in self.engine().slots

    def has_slot(self, conn: Connection, channel_type: str, campaign_id: str, *, lock: bool = True) -> bool:
        """Whether the campaign may have a channel of `channel_type` RUNNING: `[engine] slots` does
        not limit the type, the campaign holds one of its slots already, or fewer campaigns than
        the limit hold one. With `lock` (in a write transaction), the count holds until commit."""
        limit = self.engine().slots.get(channel_type)
        if limit is None:
            return True
        if lock:
            locks.slot_lock(conn, channel_type)
        holders = channel_store.slot_holders(conn, channel_type)
        return campaign_id in holders or len(holders) < limit

    def free_slots(
        self, conn: Connection, record: CampaignRecord, chosen: Sequence[ChannelRecord]
    ) -> dict[str, bool]:
        """Whether each type of the chosen channels has a slot free for the campaign; with
        `slot_policy = "refuse"`, NO_SLOT naming the first chosen channel whose type has none."""
        free = {t: self.has_slot(conn, t, record.id) for t in sorted({c.type for c in chosen})}
        blocked = next((c for c in chosen if not free[c.type]), None)
        if blocked is not None and self.engine().slot_policy == "refuse":
            raise self._no_slot(conn, blocked)
        return free

    def launch_slots(self, conn: Connection, record: CampaignRecord, chosen: Sequence[ChannelRecord]) -> None:
        """At launch, which moves to QUEUED: with `slot_policy = "refuse"`, NO_SLOT when a chosen
        channel's type has no free slot now; with "queue", nothing (activation takes the slot)."""
        if self.engine().slot_policy == "refuse":
            self.free_slots(conn, record, chosen)

    def into_running(self, conn: Connection, record: CampaignRecord, chosen: Chosen) -> Chosen:
        """The moves of `chosen`, with those into RUNNING held to the slots: a channel whose type
        has no free slot for the campaign waits in QUEUED instead (`slot_policy = "queue"`), or
        the whole call is refused with NO_SLOT ("refuse")."""
        running = [c for c, d in chosen if d.target is ChannelState.RUNNING]
        free = self.free_slots(conn, record, running)
        return [(c, d if free.get(c.type, True) else lifecycle.without_slot(d)) for c, d in chosen]

    def _no_slot(self, conn: Connection, channel: ChannelRecord) -> ApiError:
        limit = self.engine().slots[channel.type]
        holders = len(channel_store.slot_holders(conn, channel.type))
        return errors.failed_precondition(
            "NO_SLOT",
            f"{holders} campaign(s) already run a {channel.type} channel, the limit is {limit}",
            channel_id=channel.channel_id,
        )


def _missing_audience(conn: Connection, audience: Audience) -> list[FieldViolation]:
    problems = []
    for key in ("target_lists", "exclude_lists"):
        for index, name in enumerate(getattr(audience, key)):
            if not list_store.list_exists(conn, name.removeprefix("lists/")):
                problems.append(FieldViolation(f"campaign.audience.{key}[{index}]", f"{name} does not exist"))
    for key in ("target_segments", "exclude_segments"):
        for index, name in enumerate(getattr(audience, key)):
            if segment_store.get_segment(conn, name.removeprefix("segments/")) is None:
                problems.append(FieldViolation(f"campaign.audience.{key}[{index}]", f"{name} does not exist"))
    return problems


def _audience(conn: Connection, record: CampaignRecord, channel: ChannelRecord) -> resolution.Audience:
    if channel.remarketing is not None:
        source = channel.remarketing
        return resolution.Audience(remarketing=(source.campaign_id, source.channel_id, source.outcomes))

    def segment_filters(names: Iterable[str]) -> list[filters.Filter]:
        found = []
        for name in names:
            row = segment_store.get_segment(conn, name.removeprefix("segments/"))
            if row is not None:
                found.append(filters.parse(row.filter))
        return found

    audience = record.audience
    return resolution.Audience(
        target_lists=[n.removeprefix("lists/") for n in audience.target_lists],
        target_filters=segment_filters(audience.target_segments),
        exclude_lists=[n.removeprefix("lists/") for n in audience.exclude_lists],
        exclude_filters=segment_filters(audience.exclude_segments),
    )
