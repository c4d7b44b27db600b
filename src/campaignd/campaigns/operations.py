"""Campaign operations: each one transaction that locks the campaign, checks its etag, asks the
lifecycle whether the operation is legal, and writes the new state with its history.

Requests carrying a request_id are answered once: the answer, as the API sends it, is stored in
the same transaction and returned again for a repeat.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import functools
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from campaignd import errors, lifecycle
from campaignd.campaigns.launch import Chosen, Launcher
from campaignd.changes import ChangeHub
from campaignd.clock import Clock
from campaignd.config import EngineSettings
from campaignd.errors import ApiError, FieldViolation
from campaignd.lifecycle import ChannelState, MessageState, Operation, Refused
from campaignd.model import Attestation, CampaignRecord, ChannelRecord, Remarketing
from campaignd.plugin.manager import Plugins
from campaignd.store import campaigns as store
from campaignd.store import messages as message_store
from campaignd.store import resolution
from campaignd.store.campaigns import CampaignFilter, Event
from campaignd.store.db import Database
from campaignd.store.schema import campaigns as campaign_rows

# Fields of a campaign that decide what is sent; changing them is an EDIT of every channel.
SENDING_FIELDS = frozenset({"audience", "time_zone", "guard"})
MAX_CHANNELS = 16
# Fields that are only descriptive and may change in any state.
DESCRIPTIVE_FIELDS = frozenset({"display_name", "labels"})

# Work done in a transition's transaction once the lifecycle chose the channels: it may change
# the moves (a channel without a slot waits in QUEUED) and returns them.
Prepare = Callable[[Connection, CampaignRecord, Chosen], Chosen]

# A share lock on a campaign's row: writers of its messages' results take it, so that they and
# an operation (which takes the row for update) on the campaign never overlap.
_SHARE_CAMPAIGN = (
    sa.select(campaign_rows.c.id).where(campaign_rows.c.id == sa.bindparam("id")).with_for_update(read=True)
)


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who asks, and the request_id that makes the call idempotent."""

    actor: str
    request_id: str = ""


SYSTEM = Caller(actor="system")


@dataclasses.dataclass(frozen=True)
class Target:
    """What a lifecycle call acts on: a campaign, one of its channels or (no channel_id) every
    channel the operation is legal for, and the etag the caller last saw ("" for any)."""

    campaign_id: str
    channel_id: str = ""
    etag: str = ""


class Replies(Protocol):
    """The answers kept for calls with a request_id, in the form the API sends them."""

    def campaign(self, record: CampaignRecord) -> bytes:
        """The answer of a call that returns the campaign."""

    def deleted(self, name: str) -> bytes:
        """The answer of DeleteCampaign."""


class Sending(Protocol):
    """What lifecycle calls need of the daemon's engine, when it runs one."""

    def hold(self, campaign_id: str, channel_id: str = "") -> AbstractAsyncContextManager[None]:
        """Close the gates of the channels for the length of a Pause or Stop (the barrier)."""

    def wake(self) -> None:
        """Make a pass now."""


class CampaignManager:
    """The operations of CampaignService, independent of gRPC."""

    def __init__(
        self,
        database: Database,
        plugins: Plugins,
        hub: ChangeHub,
        engine: Callable[[], EngineSettings],
        replies: Replies,
        clock: Clock | None = None,
    ) -> None:
        self.db = database
        self.plugins = plugins
        self.hub = hub
        self.replies = replies
        self.clock = clock or Clock()
        self.launcher = Launcher(plugins, engine, self.clock)
        # This daemon's engine, once it has one: Pause and Stop close its gates first, and every
        # other call wakes it.
        self.sending: Sending | None = None

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

    def _reply(self, record: CampaignRecord | None) -> bytes:
        assert record is not None
        return self.replies.campaign(record)

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
        record = await self.db.read_here(store.get, campaign_id)
        if record is None:
            raise errors.not_found(f"campaigns/{campaign_id}")
        return record

    async def get_if_changed(
        self, campaign_id: str, known: store.Stamp | None
    ) -> tuple[store.Stamp, CampaignRecord | None]:
        """The campaign's stamp (`store.stamp`), and the campaign unless its stamp is still
        `known`; a changed stamp and the campaign from one read, so that they agree. NOT_FOUND."""

        def read(conn: Connection) -> tuple[store.Stamp | None, CampaignRecord | None]:
            now = store.stamp(conn, campaign_id)
            if now is None or now == known:
                return now, None
            return now, store.get(conn, campaign_id)

        # Usually unchanged: the stamp alone, one round trip on the calling loop.
        stamp = await self.db.row_here(store.STAMP, id=campaign_id) if known is not None else None
        record = None
        if stamp is None or stamp != known:
            stamp, record = await self.db.read_here(read)
        if stamp is None:
            raise errors.not_found(f"campaigns/{campaign_id}")
        return stamp, record

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

    async def messages(
        self,
        campaign_id: str,
        *,
        channel_id: str,
        states: Sequence[str],
        reason: str,
        after: int,
        limit: int,
    ) -> list[Any]:
        """A page of a campaign's messages (of one channel, when named), oldest first."""

        def read(conn: Connection) -> list[Any]:
            record = self.load(conn, campaign_id)
            if channel_id and record.channel(channel_id) is None:
                raise errors.not_found(f"{record.name}/channels/{channel_id}")
            return message_store.list_messages(
                conn,
                campaign_id,
                channel_ids=[channel_id] if channel_id else [c.channel_id for c in record.channels],
                states=states,
                reason=reason,
                after=after,
                limit=limit,
            )

        return await self.db.read(read)

    async def estimate(self, campaign_id: str, channel_id: str) -> dict[str, resolution.AudienceCounts]:
        """How the audience resolves now for each DRAFT channel (or the one named), nothing written."""

        def estimate(conn: Connection) -> dict[str, resolution.AudienceCounts]:
            record = self.load(conn, campaign_id)
            chosen = [c for c, _ in self.decide(record, Operation.ESTIMATE, channel_id)]
            self.launcher.check_audience(conn, record, chosen)
            return {c.channel_id: self.launcher.resolve(conn, record, c, freeze=False) for c in chosen}

        return await self.db.read(estimate)

    def load(self, conn: Connection, campaign_id: str, *, share: bool = False) -> CampaignRecord:
        """The campaign, or NOT_FOUND; with `share`, its row stays share-locked until commit, so
        that no operation moves its channels meanwhile."""
        if share and conn.dialect.name == "postgresql":
            # SQLite writers already hold the database lock. On PostgreSQL the channels are read
            # by the next statement, which sees an operation that committed while the lock waited.
            conn.execute(_SHARE_CAMPAIGN, {"id": campaign_id})
        record = store.get(conn, campaign_id)
        if record is None:
            raise errors.not_found(f"campaigns/{campaign_id}")
        return record

    # -- create, update, delete -------------------------------------------------------------

    async def create(self, record: CampaignRecord, caller: Caller) -> bytes:
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
            return await self._once("CreateCampaign", caller, work, self._reply)
        except IntegrityError:
            raise errors.already_exists(record.name) from None

    async def update(
        self, campaign_id: str, changes: CampaignRecord, fields: frozenset[str], etag: str, caller: Caller
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

        return await self._once("UpdateCampaign", caller, work, self._reply)

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

    async def delete(self, campaign_id: str, force: bool, etag: str, caller: Caller) -> bytes:
        """Delete the campaign with its channels and history, as the lifecycle allows."""

        def work(conn: Connection) -> None:
            record = self._load(conn, campaign_id, etag)
            decision = lifecycle.decide_delete((c.state for c in record.channels), force)
            if isinstance(decision, Refused):
                raise _refusal(decision)
            message_store.delete_messages(conn, campaign_id)
            store.delete(conn, campaign_id)
            return None

        def deleted(_: CampaignRecord | None) -> bytes:
            return self.replies.deleted(f"campaigns/{campaign_id}")

        data = await self._once("DeleteCampaign", caller, work, deleted)
        self.hub.publish(campaign_id)
        return data

    async def archive(self, campaign_id: str, archived: bool, etag: str, caller: Caller) -> bytes:
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
            "ArchiveCampaign" if archived else "UnarchiveCampaign", caller, work, self._reply
        )

    async def duplicate(self, campaign_id: str, new_id: str, display_name: str, caller: Caller) -> bytes:
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

        return await self._once("DuplicateCampaign", caller, work, self._reply)

    async def add_channel(self, campaign_id: str, channel: ChannelRecord, etag: str, caller: Caller) -> bytes:
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

        return await self._once("AddChannel", caller, work, self._reply)

    def _check_remarketing_source(self, conn: Connection, source: Remarketing) -> None:
        origin = store.get(conn, source.campaign_id)
        if origin is None or origin.channel(source.channel_id) is None:
            raise errors.invalid_argument(
                [
                    FieldViolation(
                        "channel.remarketing", f"no channel {source.channel_id!r} in {source.campaign}"
                    )
                ]
            )

    # -- lifecycle calls --------------------------------------------------------------------

    async def schedule(
        self, target: Target, caller: Caller, schedule_time: dt.datetime, attestation: Attestation
    ) -> bytes:
        """SCHEDULE: check the channels for launch, keep the attestation and the time."""

        def prepare(conn: Connection, record: CampaignRecord, chosen: Chosen) -> Chosen:
            self.launcher.check(conn, record, [c for c, _ in chosen])
            record.attestation = attestation
            for channel, _ in chosen:
                channel.schedule_time = schedule_time
            return chosen

        return await self._transition("ScheduleCampaign", Operation.SCHEDULE, target, caller, prepare=prepare)

    async def unschedule(self, target: Target, caller: Caller) -> bytes:
        """UNSCHEDULE: back to DRAFT, the time cleared."""

        def prepare(conn: Connection, record: CampaignRecord, chosen: Chosen) -> Chosen:
            for channel, _ in chosen:
                channel.schedule_time = None
            return chosen

        return await self._transition(
            "UnscheduleCampaign", Operation.UNSCHEDULE, target, caller, prepare=prepare
        )

    async def launch(self, target: Target, caller: Caller, attestation: Attestation) -> bytes:
        """LAUNCH: check the channels and (policy "refuse") their slots, keep the attestation,
        and freeze each channel's recipients into QUEUED messages (§3.5 step 3)."""

        def prepare(conn: Connection, record: CampaignRecord, chosen: Chosen) -> Chosen:
            channels = [c for c, _ in chosen]
            self.launcher.check(conn, record, channels)
            self.launcher.launch_slots(conn, record, channels)
            record.attestation = attestation
            self.launcher.freeze(conn, record, channels)
            return chosen

        return await self._transition("LaunchCampaign", Operation.LAUNCH, target, caller, prepare=prepare)

    async def pause(self, target: Target, caller: Caller, reason: str) -> bytes:
        """PAUSE: no send starts once this returns (the gates close first)."""
        return await self._transition("PauseCampaign", Operation.PAUSE, target, caller, reason=reason)

    async def resume(self, target: Target, caller: Caller, reason: str) -> bytes:
        """RESUME: sending continues, held to the slots (a channel paused while QUEUED has none)."""
        return await self._transition(
            "ResumeCampaign", Operation.RESUME, target, caller, reason=reason, prepare=self._into_running
        )

    async def stop(self, target: Target, caller: Caller, reason: str) -> bytes:
        """STOP: what still waits is CANCELLED."""
        return await self._transition(
            "StopCampaign",
            Operation.STOP,
            target,
            caller,
            reason=reason,
            prepare=self._moving([MessageState.QUEUED, MessageState.RETRYING], MessageState.CANCELLED),
        )

    async def restart(self, target: Target, caller: Caller, reason: str) -> bytes:
        """RESTART a stopped channel, held to the slots: "rebuilds the schedule for every recipient
        not yet sent"."""

        def prepare(conn: Connection, record: CampaignRecord, chosen: Chosen) -> Chosen:
            # The cancelled ones that were never attempted queue again, and send windows apply to
            # them from now on, as at launch; numbers suppressed since the launch are left out
            # (OPTED_OUT).
            now = self.clock.now()
            for channel, _ in chosen:
                message_store.requeue_for_restart(conn, record.id, channel.channel_id, channel.type, now)
            return self._into_running(conn, record, chosen)

        return await self._transition(
            "RestartCampaign", Operation.RESTART, target, caller, reason=reason, prepare=prepare
        )

    async def retry_failed(self, target: Target, caller: Caller) -> bytes:
        """RETRY_FAILED: the FAILED messages of a completed channel are sent again, held to the slots."""
        requeue = self._moving([MessageState.FAILED], MessageState.QUEUED)

        def prepare(conn: Connection, record: CampaignRecord, chosen: Chosen) -> Chosen:
            return self._into_running(conn, record, requeue(conn, record, chosen))

        return await self._transition(
            "RetryFailedMessages", Operation.RETRY_FAILED, target, caller, prepare=prepare
        )

    def _into_running(self, conn: Connection, record: CampaignRecord, chosen: Chosen) -> Chosen:
        return self.launcher.into_running(conn, record, chosen)

    def _moving(self, frm: list[MessageState], to: MessageState) -> Prepare:
        def move(conn: Connection, record: CampaignRecord, chosen: Chosen) -> Chosen:
            now = self.clock.now()
            for channel, _ in chosen:
                message_store.move_messages(
                    conn, record.id, channel.channel_id, [s.value for s in frm], to.value, now
                )
            return chosen

        return move

    async def _transition(
        self,
        method: str,
        operation: Operation,
        target: Target,
        caller: Caller,
        *,
        reason: str = "",
        prepare: Prepare | None = None,
    ) -> bytes:
        """Apply a lifecycle operation to one channel, or to every channel it is legal for, with
        the engine's barrier around Pause and Stop."""

        def work(conn: Connection) -> CampaignRecord:
            record = self._load(conn, target.campaign_id, target.etag)
            chosen = self.decide(record, operation, target.channel_id)
            if prepare is not None:
                chosen = prepare(conn, record, chosen)
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

        if self.sending is None:
            return await self._once(method, caller, work, self._reply)
        if operation in (Operation.PAUSE, Operation.STOP):
            # The barrier: the gates close before the state changes and stay closed after.
            async with self.sending.hold(target.campaign_id, target.channel_id):
                return await self._once(method, caller, work, self._reply)
        data = await self._once(method, caller, work, self._reply)
        self.sending.wake()
        return data

    # -- the daemon's own moves -------------------------------------------------------------

    async def start(self, campaign_id: str, channel_id: str) -> bool:
        """START a scheduled channel whose time came: checked again as at launch (the plugins'
        options or the transports may have changed since it was scheduled), its recipients
        frozen; it waits in QUEUED for a slot, whatever `slot_policy` says. ApiError
        (VALIDATION_FAILED) when it no longer passes the checks."""

        def prepare(conn: Connection, record: CampaignRecord, chosen: Chosen) -> Chosen:
            channels = [c for c, _ in chosen]
            self.launcher.check(conn, record, channels)
            self.launcher.freeze(conn, record, channels)
            return chosen

        return await self.system_transition(
            campaign_id,
            channel_id,
            Operation.START,
            cause="schedule",
            reason="its time came",
            prepare=prepare,
        )

    async def activate(self, campaign_id: str, channel_id: str, channel_type: str) -> bool:
        """ACTIVATE a QUEUED channel if its type has a slot for the campaign, counted in the
        transaction of the move; False, changing nothing, when it has none."""
        if self.launcher.limited(channel_type):
            # A read first: a channel waiting for a slot costs no write per pass.
            free = functools.partial(
                self.launcher.has_slot, channel_type=channel_type, campaign_id=campaign_id, lock=False
            )
            if not await self.db.read(free):
                return False

        def prepare(conn: Connection, record: CampaignRecord, chosen: Chosen) -> Chosen:
            channel = chosen[0][0]
            return chosen if self.launcher.has_slot(conn, channel.type, record.id) else []

        return await self.system_transition(
            campaign_id,
            channel_id,
            Operation.ACTIVATE,
            cause="schedule",
            reason="a slot is free",
            prepare=prepare,
        )

    async def fail(self, campaign_id: str, channel_id: str, error: dict[str, Any], reason: str) -> bool:
        """FAIL a channel with its error kept; FAILED is final, so what still waits will never be
        sent: its QUEUED and RETRYING messages are CANCELLED with reason `channel_failed`."""

        def prepare(conn: Connection, record: CampaignRecord, chosen: Chosen) -> Chosen:
            for channel, _ in chosen:
                channel.error = error
                message_store.move_messages(
                    conn,
                    campaign_id,
                    channel.channel_id,
                    ["queued", "retrying"],
                    "cancelled",
                    self.clock.now(),
                    reason="channel_failed",
                )
            return chosen

        return await self.system_transition(
            campaign_id, channel_id, Operation.FAIL, cause="error", reason=reason, prepare=prepare
        )

    async def system_transition(
        self,
        campaign_id: str,
        channel_id: str,
        operation: Operation,
        *,
        cause: str,
        reason: str = "",
        prepare: Prepare | None = None,
    ) -> bool:
        """A transition the daemon makes itself (schedule, slot, completion, guard, error).

        Returns False, changing nothing, when the channel is no longer in a state that allows it
        (an operator got there first), or when `prepare` takes the move back.
        """

        def work(conn: Connection) -> CampaignRecord | None:
            record = store.get(conn, campaign_id, for_update=True)
            channel = record.channel(channel_id) if record is not None else None
            if record is None or channel is None:
                return None
            decision = lifecycle.decide(channel.state, operation, self.plugins.semantics(channel.type))
            if isinstance(decision, Refused) or decision.target is None:
                return None
            chosen: Chosen = [(channel, decision)]
            if prepare is not None:
                chosen = prepare(conn, record, chosen)
            if not chosen:
                return None
            channel, decision = chosen[0]
            assert decision.target is not None
            before = channel.state
            channel.state, channel.state_time = decision.target, self.clock.now()
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

    def decide(self, record: CampaignRecord, operation: Operation, channel_id: str) -> Chosen:
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
