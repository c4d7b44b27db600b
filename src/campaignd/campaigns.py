"""Campaign operations: each one transaction that locks the campaign, checks its etag, asks the
lifecycle whether the operation is legal, and writes the new state with its history.

Requests carrying a request_id are answered once: the encoded response is stored in the same
transaction and returned again for a repeat.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from campaignd import errors, lifecycle
from campaignd.audience import filters
from campaignd.changes import ChangeHub
from campaignd.clock import Clock
from campaignd.errors import ApiError, Code, FieldViolation
from campaignd.lifecycle import Allowed, ChannelState, Operation, Refused
from campaignd.plugin.manager import Plugins
from campaignd.store import campaigns as store
from campaignd.store import lists as list_store
from campaignd.store import messages as message_store
from campaignd.store import resolution
from campaignd.store import segments as segment_store
from campaignd.store.campaigns import CampaignFilter, CampaignRecord, ChannelRecord, Event
from campaignd.store.db import Database

T = TypeVar("T")
Encode = Callable[[CampaignRecord], bytes]

# Fields of a campaign that decide what is sent; changing them is an EDIT of every channel.
SENDING_FIELDS = frozenset({"audience", "time_zone", "guard"})
MAX_CHANNELS = 16
# Fields that are only descriptive and may change in any state.
DESCRIPTIVE_FIELDS = frozenset({"display_name", "labels"})


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who asks, and the request_id that makes the call idempotent."""

    actor: str
    request_id: str = ""


SYSTEM = Caller(actor="system")


class CampaignManager:
    """The operations of CampaignService, independent of gRPC."""

    def __init__(
        self, database: Database, plugins: Plugins, hub: ChangeHub, clock: Clock | None = None
    ) -> None:
        self.db = database
        self.plugins = plugins
        self.hub = hub
        self.clock = clock or Clock()

    # -- plumbing ---------------------------------------------------------------------------

    async def _once(
        self,
        method: str,
        caller: Caller,
        work: Callable[[Connection], CampaignRecord | None],
        encode: Callable[[CampaignRecord | None], bytes],
    ) -> bytes:
        """Run `work` in one write transaction and return its encoded result, stored for replays."""

        def transaction(conn: Connection) -> tuple[bytes, str | None]:
            if caller.request_id:
                stored = store.stored_response(conn, method, caller.request_id)
                if stored is not None:
                    return stored, None
            record = work(conn)
            data = encode(record)
            if caller.request_id:
                store.store_response(conn, method, caller.request_id, data, self.clock.now())
            return data, record.id if record is not None else None

        try:
            data, changed = await self.db.write(transaction)
        except IntegrityError:
            # Two calls with one request_id raced; the loser returns the winner's answer.
            if caller.request_id:
                stored = await self.db.read(store.stored_response, method, caller.request_id)
                if stored is not None:
                    return stored
            raise
        if changed is not None:
            self.hub.publish(changed)
        return data

    def _load(self, conn: Connection, campaign_id: str, etag: str) -> CampaignRecord:
        record = store.get(conn, campaign_id, for_update=True)
        if record is None:
            raise errors.not_found(f"campaigns/{campaign_id}")
        if etag and etag != record.etag:
            raise errors.etag_mismatch(record.name)
        return record

    def _commit(
        self, conn: Connection, record: CampaignRecord, events: list[dict[str, Any]]
    ) -> CampaignRecord:
        expected = record.version
        record.version += 1
        record.update_time = self.clock.now()
        if not store.save(conn, record, expected_version=expected):
            # The row lock makes this unreachable; a lost compare-and-set must never pass silently.
            raise errors.etag_mismatch(record.name)
        store.add_events(conn, events)
        return record

    def _event(
        self,
        record: CampaignRecord,
        caller: Caller,
        operation: str,
        *,
        channel: ChannelRecord | None = None,
        from_state: ChannelState | None = None,
        reason: str = "",
        cause: str = "operator",
    ) -> dict[str, Any]:
        state = channel.state if channel is not None else None
        return {
            "campaign_id": record.id,
            "channel_id": channel.channel_id if channel is not None else "",
            "operation": operation,
            "from_state": (from_state or state or "").__str__(),
            "to_state": (state or "").__str__(),
            "actor": caller.actor,
            "cause": cause,
            "reason": reason,
            "time": self.clock.now(),
            "request_id": caller.request_id,
        }

    # -- reads ------------------------------------------------------------------------------

    async def get(self, campaign_id: str) -> CampaignRecord:
        """The campaign, or NOT_FOUND."""
        record = await self.db.read(store.get, campaign_id)
        if record is None:
            raise errors.not_found(f"campaigns/{campaign_id}")
        return record

    async def list_campaigns(
        self, selection: CampaignFilter, after: tuple[dt.datetime, str] | None, limit: int
    ) -> list[CampaignRecord]:
        """A page of campaigns, newest first."""

        def read(conn: Connection) -> list[CampaignRecord]:
            return store.list_page(conn, selection, after=after, limit=limit)

        return await self.db.read(read)

    async def history(self, campaign_id: str, after: int, limit: int) -> list[Event]:
        """A page of the campaign's history, oldest first."""

        def read(conn: Connection) -> list[Event]:
            if not store.exists(conn, campaign_id):
                raise errors.not_found(f"campaigns/{campaign_id}")
            return store.list_events(conn, campaign_id, after=after, limit=limit)

        return await self.db.read(read)

    # -- create, update, delete -------------------------------------------------------------

    async def create(self, record: CampaignRecord, caller: Caller, encode: Encode) -> bytes:
        """Store a new DRAFT campaign."""

        def work(conn: Connection) -> CampaignRecord:
            if store.exists(conn, record.id):
                raise errors.already_exists(record.name)
            for channel in record.channels:
                if channel.remarketing is not None:
                    self._check_remarketing_source(conn, channel.remarketing)
            now = self.clock.now()
            new = dataclasses.replace(
                record,
                version=1,
                create_time=now,
                update_time=now,
                archived=False,
                attestation=None,
                channels=[_fresh_channel(c, now) for c in record.channels],
            )
            store.insert(conn, new)
            store.add_events(conn, [self._event(new, caller, "create")])
            return new

        try:
            return await self._once("CreateCampaign", caller, work, _required(encode))
        except IntegrityError:
            raise errors.already_exists(record.name) from None

    async def update(
        self,
        campaign_id: str,
        changes: CampaignRecord,
        fields: frozenset[str],
        etag: str,
        caller: Caller,
        encode: Encode,
    ) -> bytes:
        """Apply the masked fields of `changes`; fields that decide what is sent follow the lifecycle."""

        def work(conn: Connection) -> CampaignRecord:
            record = self._load(conn, campaign_id, etag)
            events: list[dict[str, Any]] = []
            edited = self._edited_channels(record, changes, fields)
            if edited or fields & SENDING_FIELDS:
                if record.archived:
                    raise _refusal(
                        Refused(lifecycle.Reason.ARCHIVED, "the campaign is archived; unarchive it first")
                    )
                targets = record.channels if fields & SENDING_FIELDS else edited
                for channel in targets:
                    # Whatever UpdateCampaign changes is more than the schedule (that moves only
                    # through ScheduleCampaign), which is what a SCHEDULE_ONLY type refuses.
                    decision = lifecycle.decide(
                        channel.state,
                        Operation.EDIT,
                        self.plugins.semantics(channel.type),
                        edit_fields=fields & (SENDING_FIELDS | {"channels"}),
                    )
                    if isinstance(decision, Refused):
                        raise _refusal(decision, channel.channel_id)
                    if decision.target is not None and decision.target != channel.state:
                        before = channel.state
                        channel.state, channel.state_time, channel.schedule_time = (
                            decision.target,
                            self.clock.now(),
                            None,
                        )
                        events.append(
                            self._event(
                                record,
                                caller,
                                "edit",
                                channel=channel,
                                from_state=before,
                                reason="edited while scheduled",
                            )
                        )
            for name in fields & (SENDING_FIELDS | DESCRIPTIVE_FIELDS):
                setattr(record, name, copy.deepcopy(getattr(changes, name)))
            for channel in edited:
                new = changes.channel(channel.channel_id)
                assert new is not None
                channel.content, channel.transports = new.content, new.transports
                channel.rate_limit, channel.send_window = new.rate_limit, new.send_window
                channel.ambiguous_sends = new.ambiguous_sends
            events.append(self._event(record, caller, "update", reason=",".join(sorted(fields))))
            return self._commit(conn, record, events)

        return await self._once("UpdateCampaign", caller, work, _required(encode))

    def _edited_channels(
        self, record: CampaignRecord, changes: CampaignRecord, fields: frozenset[str]
    ) -> list[ChannelRecord]:
        if "channels" not in fields:
            return []
        edited = []
        for index, new in enumerate(changes.channels):
            old = record.channel(new.channel_id)
            if old is None:
                raise errors.invalid_argument(
                    [
                        FieldViolation(
                            "campaign.channels",
                            f"no channel {new.channel_id!r}; add channels with AddChannel",
                        )
                    ]
                )
            if new.type and new.type != old.type:
                raise errors.invalid_argument(
                    [FieldViolation(f"campaign.channels[{new.channel_id}].type", "is immutable")]
                )
            if not new.type:
                # The request left the type out, so its content could not be checked before now.
                path = f"campaign.channels[{index}]"
                problems = [
                    FieldViolation(f"{path}.content.{p.field}", p.description)
                    for p in self.plugins.validate(old.type, new.content, launching=False)
                ] + [
                    FieldViolation(f"{path}.{p.field}", p.description)
                    for p in self.plugins.check_transports(old.type, new.transports, launching=False)
                ]
                if problems:
                    raise errors.invalid_argument(problems)
            if (new.content, new.transports, new.rate_limit, new.send_window, new.ambiguous_sends) != (
                old.content,
                old.transports,
                old.rate_limit,
                old.send_window,
                old.ambiguous_sends,
            ):
                edited.append(old)
        return edited

    async def delete(
        self, campaign_id: str, force: bool, etag: str, caller: Caller, encode: Callable[[str], bytes]
    ) -> bytes:
        """Delete the campaign with its channels and history, as the lifecycle allows."""

        def work(conn: Connection) -> None:
            record = self._load(conn, campaign_id, etag)
            decision = lifecycle.decide_delete((c.state for c in record.channels), force)
            if isinstance(decision, Refused):
                raise _refusal(decision)
            message_store.delete_messages(conn, campaign_id)
            store.delete(conn, campaign_id)
            return None

        def encode_name(_: CampaignRecord | None) -> bytes:
            return encode(f"campaigns/{campaign_id}")

        data = await self._once("DeleteCampaign", caller, work, encode_name)
        self.hub.publish(campaign_id)
        return data

    # -- lifecycle --------------------------------------------------------------------------

    async def transition(
        self,
        method: str,
        operation: Operation,
        campaign_id: str,
        channel_id: str,
        etag: str,
        caller: Caller,
        encode: Encode,
        *,
        reason: str = "",
        before_commit: Callable[[Connection, CampaignRecord, list[ChannelRecord]], None] | None = None,
    ) -> bytes:
        """Apply a lifecycle operation to one channel, or to every channel it is legal for."""

        def work(conn: Connection) -> CampaignRecord:
            record = self._load(conn, campaign_id, etag)
            chosen = self.decide(record, operation, channel_id)
            if before_commit is not None:
                before_commit(conn, record, [channel for channel, _ in chosen])
            events = []
            now = self.clock.now()
            for channel, decision in chosen:
                before = channel.state
                if decision.target is not None:
                    channel.state, channel.state_time = decision.target, now
                events.append(
                    self._event(
                        record, caller, operation.value, channel=channel, from_state=before, reason=reason
                    )
                )
            return self._commit(conn, record, events)

        return await self._once(method, caller, work, _required(encode))

    async def system_transition(
        self,
        campaign_id: str,
        channel_id: str,
        operation: Operation,
        *,
        cause: str,
        reason: str = "",
        error: dict[str, Any] | None = None,
        before_commit: Callable[[Connection, CampaignRecord, list[ChannelRecord]], None] | None = None,
    ) -> bool:
        """A transition the daemon makes itself (schedule, slot, completion, guard, error).

        Returns False, changing nothing, when the channel is no longer in a state that allows it
        (an operator got there first).
        """

        def work(conn: Connection) -> CampaignRecord | None:
            record = store.get(conn, campaign_id, for_update=True)
            channel = record.channel(channel_id) if record is not None else None
            if record is None or channel is None:
                return None
            decision = lifecycle.decide(channel.state, operation, self.plugins.semantics(channel.type))
            if isinstance(decision, Refused) or decision.target is None:
                return None
            if before_commit is not None:
                before_commit(conn, record, [channel])
            before = channel.state
            channel.state, channel.state_time = decision.target, self.clock.now()
            if error is not None:
                channel.error = error
            event = self._event(
                record,
                SYSTEM,
                operation.value,
                channel=channel,
                from_state=before,
                reason=reason,
                cause=cause,
            )
            return self._commit(conn, record, [event])

        changed = await self.db.write(work)
        if changed is not None:
            self.hub.publish(campaign_id)
        return changed is not None

    def decide(
        self, record: CampaignRecord, operation: Operation, channel_id: str
    ) -> list[tuple[ChannelRecord, Allowed]]:
        """The channels `operation` acts on, each with its decision; raises the refusal otherwise."""
        if channel_id:
            channel = record.channel(channel_id)
            if channel is None:
                raise errors.not_found(f"{record.name}/channels/{channel_id}")
            decision = lifecycle.decide(
                channel.state, operation, self.plugins.semantics(channel.type), archived=record.archived
            )
            if isinstance(decision, Refused):
                raise _refusal(decision, channel_id)
            return [(channel, decision)]
        by_id = {c.channel_id: (c.state, self.plugins.semantics(c.type)) for c in record.channels}
        decided = lifecycle.decide_for_campaign(operation, by_id, archived=record.archived)
        if isinstance(decided, Refused):
            if len(record.channels) == 1 and decided.reason is lifecycle.Reason.NOTHING_TO_DO:
                # One channel: its own refusal says more than "nothing to do".
                return self.decide(record, operation, record.channels[0].channel_id)
            raise _refusal(decided)
        return [(c, decided[c.channel_id]) for c in record.channels if c.channel_id in decided]

    def check_launchable(
        self, conn: Connection, record: CampaignRecord, chosen: Iterable[ChannelRecord]
    ) -> None:
        """§3.5 validation: every problem of the channels about to start, reported at once."""
        problems = []
        chosen = list(chosen)
        for channel in chosen:
            problems.extend(self.channel_problems(channel))
            if channel.remarketing is None and not any(
                record.audience.get(k) for k in ("target_lists", "target_segments")
            ):
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

    def load(self, conn: Connection, campaign_id: str) -> CampaignRecord:
        """The campaign (without locking it), or NOT_FOUND."""
        record = store.get(conn, campaign_id)
        if record is None:
            raise errors.not_found(f"campaigns/{campaign_id}")
        return record

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

    async def archive(
        self, campaign_id: str, archived: bool, etag: str, caller: Caller, encode: Encode
    ) -> bytes:
        """Set or clear the archived flag as the lifecycle allows."""

        def work(conn: Connection) -> CampaignRecord:
            record = self._load(conn, campaign_id, etag)
            decision = (
                lifecycle.decide_archive((c.state for c in record.channels), record.archived)
                if archived
                else lifecycle.decide_unarchive(record.archived)
            )
            if isinstance(decision, Refused):
                raise _refusal(decision)
            record.archived = archived
            return self._commit(
                conn, record, [self._event(record, caller, "archive" if archived else "unarchive")]
            )

        return await self._once(
            "ArchiveCampaign" if archived else "UnarchiveCampaign", caller, work, _required(encode)
        )

    async def duplicate(
        self, campaign_id: str, new_id: str, display_name: str, caller: Caller, encode: Encode
    ) -> bytes:
        """A new DRAFT copy with the same audience and channel content."""

        def work(conn: Connection) -> CampaignRecord:
            source = store.get(conn, campaign_id)
            if source is None:
                raise errors.not_found(f"campaigns/{campaign_id}")
            if store.exists(conn, new_id):
                raise errors.already_exists(f"campaigns/{new_id}")
            now = self.clock.now()
            copy_record = dataclasses.replace(
                copy.deepcopy(source),
                id=new_id,
                display_name=display_name or f"{source.display_name} (copy)"[:200],
                archived=False,
                attestation=None,
                version=1,
                create_time=now,
                update_time=now,
                channels=[_fresh_channel(c, now) for c in copy.deepcopy(source.channels)],
            )
            store.insert(conn, copy_record)
            store.add_events(
                conn, [self._event(copy_record, caller, "duplicate", reason=f"copy of {source.name}")]
            )
            return copy_record

        return await self._once("DuplicateCampaign", caller, work, _required(encode))

    async def add_channel(
        self, campaign_id: str, channel: ChannelRecord, etag: str, caller: Caller, encode: Encode
    ) -> bytes:
        """Add a DRAFT channel to a campaign that is not archived."""

        def work(conn: Connection) -> CampaignRecord:
            record = self._load(conn, campaign_id, etag)
            if record.archived:
                raise _refusal(
                    Refused(lifecycle.Reason.ARCHIVED, "the campaign is archived; unarchive it first")
                )
            if record.channel(channel.channel_id) is not None:
                raise errors.already_exists(f"{record.name}/channels/{channel.channel_id}")
            if len(record.channels) >= MAX_CHANNELS:
                raise errors.invalid_argument(
                    [FieldViolation("channel", f"a campaign has at most {MAX_CHANNELS} channels")]
                )
            if channel.remarketing is not None:
                self._check_remarketing_source(conn, channel.remarketing)
            new = _fresh_channel(channel, self.clock.now())
            record.channels.append(new)
            return self._commit(conn, record, [self._event(record, caller, "add_channel", channel=new)])

        return await self._once("AddChannel", caller, work, _required(encode))

    def _check_remarketing_source(self, conn: Connection, source: dict[str, Any]) -> None:
        campaign_id = str(source["campaign"]).removeprefix("campaigns/")
        origin = store.get(conn, campaign_id)
        if origin is None or origin.channel(source["channel_id"]) is None:
            raise errors.invalid_argument(
                [
                    FieldViolation(
                        "channel.remarketing", f"no channel {source['channel_id']!r} in {source['campaign']}"
                    )
                ]
            )


def _fresh_channel(channel: ChannelRecord, now: dt.datetime) -> ChannelRecord:
    return dataclasses.replace(
        channel,
        state=ChannelState.DRAFT,
        state_time=now,
        schedule_time=None,
        error=None,
        audience_counts=None,
    )


def _refusal(decision: Refused, channel_id: str = "") -> ApiError:
    metadata = {"channel_id": channel_id} if channel_id else {}
    return errors.failed_precondition(decision.reason.value, decision.message, **metadata)


def _required(encode: Encode) -> Callable[[CampaignRecord | None], bytes]:
    def encode_record(record: CampaignRecord | None) -> bytes:
        assert record is not None
        return encode(record)

    return encode_record


def _missing_audience(conn: Connection, audience: dict[str, list[str]]) -> list[FieldViolation]:
    problems = []
    for key in ("target_lists", "exclude_lists"):
        for index, name in enumerate(audience.get(key, [])):
            if not list_store.list_exists(conn, name.removeprefix("lists/")):
                problems.append(FieldViolation(f"campaign.audience.{key}[{index}]", f"{name} does not exist"))
    for key in ("target_segments", "exclude_segments"):
        for index, name in enumerate(audience.get(key, [])):
            if segment_store.get_segment(conn, name.removeprefix("segments/")) is None:
                problems.append(FieldViolation(f"campaign.audience.{key}[{index}]", f"{name} does not exist"))
    return problems


def _audience(conn: Connection, record: CampaignRecord, channel: ChannelRecord) -> resolution.Audience:
    if channel.remarketing is not None:
        source = channel.remarketing
        return resolution.Audience(
            remarketing=(
                source["campaign"].removeprefix("campaigns/"),
                source["channel_id"],
                source["outcomes"],
            )
        )

    def segment_filters(names: list[str]) -> list[filters.Filter]:
        found = []
        for name in names:
            row = segment_store.get_segment(conn, name.removeprefix("segments/"))
            if row is not None:
                found.append(filters.parse(row.filter))
        return found

    lists = {
        k: [n.removeprefix("lists/") for n in record.audience.get(k, [])]
        for k in ("target_lists", "exclude_lists")
    }
    return resolution.Audience(
        target_lists=lists["target_lists"],
        target_filters=segment_filters(record.audience.get("target_segments", [])),
        exclude_lists=lists["exclude_lists"],
        exclude_filters=segment_filters(record.audience.get("exclude_segments", [])),
    )
