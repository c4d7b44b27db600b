"""CampaignService: validates requests, calls CampaignManager, answers with resources."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import re
import secrets
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

from grpc import aio
from sqlalchemy.engine import Connection

from campaignd import errors
from campaignd.api import convert
from campaignd.api.auth import current_principal
from campaignd.api.convert import Violations, campaign_id_from_name
from campaignd.api.errors import streaming, unary
from campaignd.audience.contacts import ContactFieldError, normalise_email, normalise_phone
from campaignd.campaigns import Caller, CampaignManager
from campaignd.cluster.node import Cluster, SingleNode
from campaignd.config import Settings
from campaignd.engine.core import Engine
from campaignd.engine.events import EventRecorder
from campaignd.engine.transports import Transports, send_once
from campaignd.errors import ApiError, Code
from campaignd.lifecycle import MESSAGE_DONE_STATES, CampaignState, ChannelState, MessageState, Operation
from campaignd.plugin import (
    ChannelInfo,
    EventKind,
    MessageEvent,
    Recipient,
    Rendered,
    SendStatus,
    TemplateError,
)
from campaignd.plugin.manager import PluginCallError, Plugins
from campaignd.store import channels as channel_store
from campaignd.store import contacts as contact_store
from campaignd.store import counts as count_store
from campaignd.store import events as event_store
from campaignd.store import messages as message_store
from campaignd.store.campaigns import CampaignFilter, CampaignRecord, ChannelRecord
from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import campaign_service_pb2_grpc as svc_grpc
from campaignd.v1 import resources_pb2 as pb

Context = aio.ServicerContext[Any, Any]
UPDATABLE = frozenset({"display_name", "labels", "audience", "time_zone", "guard", "channels"})


def _test_addresses(
    addresses: Iterable[str], kind: str, default_region: str, field: str = "addresses"
) -> list[str]:
    v = Violations()
    found = []
    for index, address in enumerate(addresses):
        try:
            found.append(
                normalise_email(address) if kind == "email" else normalise_phone(address, default_region)
            )
        except ContactFieldError as exc:
            v.add(f"{field}[{index}]" if field == "addresses" else field, exc.reason)
    v.raise_if_any()
    return found


def _caller(request_id: str) -> Caller:
    return Caller(actor=current_principal.get().name, request_id=request_id)


def _encode(record: CampaignRecord) -> bytes:
    return convert.campaign_message(record).SerializeToString()


def _campaign(data: bytes) -> pb.Campaign:
    return pb.Campaign.FromString(data)


def _new_id() -> str:
    return "c" + secrets.token_hex(8)


class CampaignService(svc_grpc.CampaignServiceServicer):
    """The gRPC face of campaign management."""

    def __init__(
        self,
        manager: CampaignManager,
        settings: Callable[[], Settings],
        engine: Engine | None,
        transports: Transports,
        tokens: convert.PageTokens,
        recorder: EventRecorder | None = None,
        node: Cluster | SingleNode | None = None,
    ) -> None:
        self.manager = manager
        self.recorder = recorder or EventRecorder(manager.db, manager.hub, manager.clock)
        self.tokens = tokens
        self.settings = settings
        self.engine = engine
        self.transports = transports
        if node is None:
            node = SingleNode(settings)
            node.attach(engine, transports)
        # Whose gates Pause and Stop close: this daemon's, or every member's of its cluster.
        self.node = node
        self.watchers = 0

    @property
    def plugins(self) -> Plugins:
        """The loaded channel plugins."""
        return self.manager.plugins

    # -- resources ----------------------------------------------------------------------------

    @unary
    async def CreateCampaign(self, request: svc.CreateCampaignRequest, context: Context) -> pb.Campaign:
        v = Violations()
        campaign_id = request.campaign_id or _new_id()
        convert.check_id(v, "campaign_id", request.campaign_id)
        v.request_id("request_id", request.request_id)
        if not request.HasField("campaign"):
            v.add("campaign", "required")
        record = convert.campaign_record(v, request.campaign, campaign_id, self.plugins)
        v.raise_if_any()
        return _campaign(await self.manager.create(record, _caller(request.request_id), _encode))

    @unary
    async def GetCampaign(self, request: svc.GetCampaignRequest, context: Context) -> pb.Campaign:
        record = await self.manager.get(campaign_id_from_name(request.name))
        return convert.campaign_message(record)

    @unary
    async def ListCampaigns(
        self, request: svc.ListCampaignsRequest, context: Context
    ) -> svc.ListCampaignsResponse:
        v = Violations()
        states = set()
        for index, value in enumerate(request.states):
            if value not in pb.Campaign.State.values() or value == pb.Campaign.STATE_UNSPECIFIED:
                v.add(f"states[{index}]", f"unknown state {value}")
            else:
                states.add(CampaignState[pb.Campaign.State.Name(value)])
        v.text("channel_type", request.channel_type, max_length=63)
        for key, label in request.labels.items():
            v.text(f"labels[{key[:70]}]", key + label, max_length=126)
        selection = CampaignFilter(
            frozenset(states),
            request.channel_type,
            dict(sorted(request.labels.items())),
            request.show_archived,
        )
        page = self.tokens.page(v, request, selection, 50, self.settings().limits.max_page_size)
        v.raise_if_any()
        after = None
        if page.position is not None:
            after = (dt.datetime.fromisoformat(str(page.position["t"])), str(page.position["i"]))
        records = await self.manager.list_campaigns(selection, after, page.limit)
        shown, next_token = page.result(
            records, lambda last: {"t": last.create_time.isoformat(), "i": last.id}
        )
        return svc.ListCampaignsResponse(
            campaigns=[convert.campaign_message(r) for r in shown], next_page_token=next_token
        )

    @unary
    async def UpdateCampaign(self, request: svc.UpdateCampaignRequest, context: Context) -> pb.Campaign:
        v = Violations()
        campaign_id = campaign_id_from_name(request.campaign.name, "campaign.name")
        paths = list(request.update_mask.paths)
        if not paths:
            v.add("update_mask", f"required: name the fields to change, of {sorted(UPDATABLE)}")
        for index, path in enumerate(paths):
            if path not in UPDATABLE:
                v.add(
                    f"update_mask.paths[{index}]", f"cannot update {path!r}; updatable: {sorted(UPDATABLE)}"
                )
        v.request_id("request_id", request.request_id)
        v.etag("campaign.etag", request.campaign.etag)
        fields = frozenset(paths) & UPDATABLE
        changes = convert.campaign_record(v, request.campaign, campaign_id, self.plugins, fields=fields)
        v.raise_if_any()
        data = await self.manager.update(
            campaign_id, changes, fields, request.campaign.etag, _caller(request.request_id), _encode
        )
        return _campaign(data)

    @unary
    async def DeleteCampaign(
        self, request: svc.DeleteCampaignRequest, context: Context
    ) -> svc.DeleteCampaignResponse:
        campaign_id = self._common(request.name, "", request.etag, request.request_id)

        def encode(name: str) -> bytes:
            return svc.DeleteCampaignResponse(name=name).SerializeToString()

        data = await self.manager.delete(
            campaign_id, request.force, request.etag, _caller(request.request_id), encode
        )
        return svc.DeleteCampaignResponse.FromString(data)

    def _common(
        self, name: str, channel_id: str, etag: str, request_id: str, v: Violations | None = None
    ) -> str:
        v = v or Violations()
        try:
            campaign_id = campaign_id_from_name(name)
        except ApiError as exc:
            v.found.extend(exc.violations)
            campaign_id = ""
        convert.check_id(v, "channel_id", channel_id)
        v.etag("etag", etag)
        v.request_id("request_id", request_id)
        v.raise_if_any()
        return campaign_id

    # -- lifecycle ------------------------------------------------------------------------------

    async def _transition(
        self,
        method: str,
        operation: Operation,
        request: Any,
        *,
        reason: str = "",
        v: Violations | None = None,
        before_commit: Callable[[Connection, CampaignRecord, list[ChannelRecord]], None] | None = None,
    ) -> pb.Campaign:
        v = v or Violations()
        v.text("reason", reason, max_length=MAX_REASON)
        campaign_id = self._common(request.name, request.channel_id, request.etag, request.request_id, v)

        async def transition() -> bytes:
            return await self.manager.transition(
                method,
                operation,
                campaign_id,
                request.channel_id,
                request.etag,
                _caller(request.request_id),
                _encode,
                reason=reason,
                before_commit=before_commit,
            )

        if operation in (Operation.PAUSE, Operation.STOP):
            # The barrier: the gates close (on every member of a cluster) before the state
            # changes and stay closed after.
            async with self.node.hold(campaign_id, request.channel_id):
                return _campaign(await transition())
        if self.engine is None:
            return _campaign(await transition())
        data = await transition()
        self.engine.wake()
        return _campaign(data)

    @unary
    async def ScheduleCampaign(self, request: svc.ScheduleCampaignRequest, context: Context) -> pb.Campaign:
        v = Violations()
        now = self.manager.clock.now()
        schedule_time = None
        if not request.HasField("schedule_time"):
            v.add("schedule_time", "required")
        else:
            schedule_time = convert.check_timestamp(v, "schedule_time", request.schedule_time)
            if schedule_time is not None and schedule_time <= now:
                v.add("schedule_time", "must be in the future")
        attestation = convert.attestation(
            v, request.attestation, request.HasField("attestation"), "attestation", now
        )

        def prepare(conn: Connection, record: CampaignRecord, chosen: list[ChannelRecord]) -> None:
            self.manager.check_launchable(conn, record, chosen)
            record.attestation = attestation
            for channel in chosen:
                channel.schedule_time = schedule_time

        return await self._transition(
            "ScheduleCampaign", Operation.SCHEDULE, request, v=v, before_commit=prepare
        )

    @unary
    async def UnscheduleCampaign(
        self, request: svc.UnscheduleCampaignRequest, context: Context
    ) -> pb.Campaign:
        def clear(conn: Connection, record: CampaignRecord, chosen: list[ChannelRecord]) -> None:
            for channel in chosen:
                channel.schedule_time = None

        return await self._transition(
            "UnscheduleCampaign", Operation.UNSCHEDULE, request, before_commit=clear
        )

    @unary
    async def LaunchCampaign(self, request: svc.LaunchCampaignRequest, context: Context) -> pb.Campaign:
        v = Violations()
        attestation = convert.attestation(
            v, request.attestation, request.HasField("attestation"), "attestation", self.manager.clock.now()
        )

        def prepare(conn: Connection, record: CampaignRecord, chosen: list[ChannelRecord]) -> None:
            self.manager.check_launchable(conn, record, chosen)
            self._check_slots(conn, record, chosen)
            record.attestation = attestation
            for channel in chosen:
                channel.schedule_time = None
                # §3.5 step 3: the audience is resolved now and frozen into message rows.
                counts = self.manager.resolve(conn, record, channel, freeze=True)
                channel.audience_counts = dataclasses.asdict(counts)

        return await self._transition("LaunchCampaign", Operation.LAUNCH, request, v=v, before_commit=prepare)

    def _check_slots(self, conn: Connection, record: CampaignRecord, chosen: list[ChannelRecord]) -> None:
        engine = self.settings().engine
        if engine.slot_policy != "refuse":
            return
        for channel in chosen:
            limit = engine.slots.get(channel.type)
            holders = channel_store.slot_holders(conn, channel.type) - {record.id}
            if limit is not None and len(holders) >= limit:
                raise errors.failed_precondition(
                    "NO_SLOT",
                    f"{len(holders)} campaign(s) already run a {channel.type} channel, the limit is {limit}",
                    channel_id=channel.channel_id,
                )

    @unary
    async def PauseCampaign(self, request: svc.PauseCampaignRequest, context: Context) -> pb.Campaign:
        return await self._transition("PauseCampaign", Operation.PAUSE, request, reason=request.reason)

    @unary
    async def ResumeCampaign(self, request: svc.ResumeCampaignRequest, context: Context) -> pb.Campaign:
        return await self._transition("ResumeCampaign", Operation.RESUME, request, reason=request.reason)

    @unary
    async def StopCampaign(self, request: svc.StopCampaignRequest, context: Context) -> pb.Campaign:
        return await self._transition(
            "StopCampaign",
            Operation.STOP,
            request,
            reason=request.reason,
            before_commit=self._moving([MessageState.QUEUED, MessageState.RETRYING], MessageState.CANCELLED),
        )

    @unary
    async def RestartCampaign(self, request: svc.RestartCampaignRequest, context: Context) -> pb.Campaign:
        # "Rebuilds the schedule for every recipient not yet sent": the cancelled ones that were
        # never attempted queue again, and send windows apply to them from now on, as at launch;
        # numbers suppressed since the launch are left out (OPTED_OUT).
        def requeue(conn: Connection, record: CampaignRecord, chosen: list[ChannelRecord]) -> None:
            now = self.manager.clock.now()
            for channel in chosen:
                message_store.requeue_for_restart(conn, record.id, channel.channel_id, channel.type, now)

        return await self._transition(
            "RestartCampaign", Operation.RESTART, request, reason=request.reason, before_commit=requeue
        )

    @unary
    async def RetryFailedMessages(
        self, request: svc.RetryFailedMessagesRequest, context: Context
    ) -> pb.Campaign:
        return await self._transition(
            "RetryFailedMessages",
            Operation.RETRY_FAILED,
            request,
            before_commit=self._moving([MessageState.FAILED], MessageState.QUEUED),
        )

    def _moving(
        self, frm: list[MessageState], to: MessageState
    ) -> Callable[[Connection, CampaignRecord, list[ChannelRecord]], None]:
        def move(conn: Connection, record: CampaignRecord, chosen: list[ChannelRecord]) -> None:
            now = self.manager.clock.now()
            for channel in chosen:
                message_store.move_messages(
                    conn, record.id, channel.channel_id, [s.value for s in frm], to.value, now
                )

        return move

    @unary
    async def ArchiveCampaign(self, request: svc.ArchiveCampaignRequest, context: Context) -> pb.Campaign:
        campaign_id = self._common(request.name, "", request.etag, request.request_id)
        return _campaign(
            await self.manager.archive(campaign_id, True, request.etag, _caller(request.request_id), _encode)
        )

    @unary
    async def UnarchiveCampaign(self, request: svc.UnarchiveCampaignRequest, context: Context) -> pb.Campaign:
        campaign_id = self._common(request.name, "", request.etag, request.request_id)
        return _campaign(
            await self.manager.archive(campaign_id, False, request.etag, _caller(request.request_id), _encode)
        )

    @unary
    async def DuplicateCampaign(self, request: svc.DuplicateCampaignRequest, context: Context) -> pb.Campaign:
        v = Violations()
        convert.check_id(v, "campaign_id", request.campaign_id)
        v.text("display_name", request.display_name, max_length=200)
        campaign_id = self._common(request.name, "", "", request.request_id, v)
        data = await self.manager.duplicate(
            campaign_id,
            request.campaign_id or _new_id(),
            request.display_name,
            _caller(request.request_id),
            _encode,
        )
        return _campaign(data)

    @unary
    async def AddChannel(self, request: svc.AddChannelRequest, context: Context) -> pb.Campaign:
        v = Violations()
        if not request.HasField("channel"):
            v.add("channel", "required")
        channel = convert.channel_record(v, request.channel, self.plugins, path="channel")
        campaign_id = self._common(request.name, "", request.etag, request.request_id, v)
        data = await self.manager.add_channel(
            campaign_id, channel, request.etag, _caller(request.request_id), _encode
        )
        return _campaign(data)

    # -- sending-related reads ------------------------------------------------------------------

    @unary
    async def SendTestMessage(
        self, request: svc.SendTestMessageRequest, context: Context
    ) -> svc.SendTestMessageResponse:
        v = Violations()
        convert.check_id(v, "channel_id", request.channel_id, required=True)
        if not request.addresses:
            v.add("addresses", "required: at least one address")
        if len(request.addresses) > 10:
            v.add("addresses", "at most 10 addresses")
        for index, address in enumerate(request.addresses):
            v.text(f"addresses[{index}]", address, max_length=320, required=True)
        campaign_id = self._common(request.name, "", "", "", v)
        record = await self.manager.get(campaign_id)
        [(channel, _)] = self.manager.decide(record, Operation.TEST_SEND, request.channel_id)
        declared = self.plugins.types[channel.type]
        problems = self.manager.channel_problems(channel)
        if problems:
            raise ApiError(
                Code.FAILED_PRECONDITION,
                "CHANNEL_INCOMPLETE",
                "the channel cannot send until these are fixed",
                violations=problems,
            )
        recipients = await self._recipients(declared.address, request.addresses, "addresses")
        info = ChannelInfo(record.name, channel.channel_id, channel.type, channel.content)
        # Rendered first, so that a template that fails or overruns a limit for one of the
        # addresses is refused before anything is sent. Other problems of one address (one the
        # provider cannot take) stay that address's answer, as the plugin reports them.
        await asyncio.gather(
            *(self._render(info, recipient, templates_only=True) for recipient in recipients)
        )
        try:
            results = await send_once(
                self.plugins,
                self.transports,
                info,
                channel.transports,
                recipients,
                self.settings().engine.sending_timeout,
            )
        except PluginCallError as exc:
            raise ApiError(Code.UNAVAILABLE, "PLUGIN_ERROR", str(exc)) from None
        by_id = {r.message_id: r for r in results}
        answers = []
        for recipient in recipients:
            result = by_id.get(recipient.message_id)
            accepted = result is not None and result.status in (SendStatus.SENT, SendStatus.DELIVERED)
            detail = "" if result is None else (result.provider_id if accepted else result.error)
            answers.append(svc.TestSendResult(address=recipient.address, accepted=accepted, detail=detail))
        return svc.SendTestMessageResponse(results=answers)

    @unary
    async def PreviewMessage(
        self, request: svc.PreviewMessageRequest, context: Context
    ) -> svc.PreviewMessageResponse:
        v = Violations()
        convert.check_id(v, "channel_id", request.channel_id, required=True)
        v.text("address", request.address, max_length=320, required=True)
        record = await self.manager.get(self._common(request.name, "", "", "", v))
        channel = record.channel(request.channel_id)
        if channel is None:
            raise ApiError(
                Code.NOT_FOUND, "NOT_FOUND", f"{record.name} has no channel {request.channel_id!r}"
            )
        declared = self.plugins.types[channel.type]
        [recipient] = await self._recipients(declared.address, [request.address], "address")
        info = ChannelInfo(record.name, channel.channel_id, channel.type, channel.content)
        rendered = await self._render(info, recipient)
        if rendered is None:
            raise ApiError(
                Code.FAILED_PRECONDITION,
                "PLUGIN_ERROR",
                f"channel type {channel.type!r} cannot render messages",
            )
        return svc.PreviewMessageResponse(
            summary=rendered.summary,
            text=rendered.text,
            data=rendered.data,
            parts=rendered.parts,
            encoding=rendered.encoding,
        )

    async def _render(
        self, info: ChannelInfo, recipient: Recipient, *, templates_only: bool = False
    ) -> Rendered | None:
        """A channel's message for one recipient, or None when its type renders no previews;
        INVALID_ARGUMENT naming the content (and the field, when known) when a template fails or
        goes over a limit, or (unless `templates_only`, then None) on another content problem."""
        try:
            return await self.plugins.render(info, recipient)
        except ValueError as exc:
            if templates_only and not isinstance(exc, TemplateError):
                return None
            path = f"campaign.channels[{info.channel_id}].content"
            name = exc.field if isinstance(exc, TemplateError) else ""
            raise errors.invalid_argument(
                [errors.FieldViolation(f"{path}.{name}" if name else path, str(exc))]
            ) from None
        except PluginCallError as exc:
            raise ApiError(Code.FAILED_PRECONDITION, "PLUGIN_ERROR", str(exc)) from None

    async def _recipients(self, kind: str, addresses: Sequence[str], field: str) -> list[Recipient]:
        """Recipients outside any campaign (test sends, previews): each address normalised for
        its `kind`, with the fields of the contact that has it, if any; negative message ids."""
        normalised = _test_addresses(addresses, kind, self.settings().audience.default_region, field)
        contacts = await self.manager.db.read(
            lambda conn: contact_store.contacts_by_address(conn, kind, normalised)
        )
        return [
            Recipient(-(index + 1), address, contacts.get(address, {}), 1)
            for index, address in enumerate(normalised)
        ]

    @unary
    async def ListChannelTypes(
        self, request: svc.ListChannelTypesRequest, context: Context
    ) -> svc.ListChannelTypesResponse:
        return svc.ListChannelTypesResponse(channel_types=convert.channel_types(self.plugins))

    @unary
    async def EstimateRecipients(
        self, request: svc.EstimateRecipientsRequest, context: Context
    ) -> svc.EstimateRecipientsResponse:
        campaign_id = self._common(request.name, request.channel_id, "", "")

        def estimate(conn: Connection) -> dict[str, pb.AudienceCounts]:
            record = self.manager.load(conn, campaign_id)
            chosen = [c for c, _ in self.manager.decide(record, Operation.ESTIMATE, request.channel_id)]
            self.manager.check_audience(conn, record, chosen)
            return {
                c.channel_id: pb.AudienceCounts(
                    **dataclasses.asdict(self.manager.resolve(conn, record, c, freeze=False))
                )
                for c in chosen
            }

        return svc.EstimateRecipientsResponse(channels=await self.manager.db.read(estimate))

    @unary
    async def GetCampaignReport(
        self, request: svc.GetCampaignReportRequest, context: Context
    ) -> pb.CampaignReport:
        campaign_id = campaign_id_from_name(request.name)
        _, report = await self._snapshot(campaign_id)
        # Per transport needs a pass over the messages, so only this call makes it, not each
        # update of a watch.
        by_transport, parts, outcomes = await self.manager.db.read(
            lambda conn: (
                message_store.transport_counts(conn, campaign_id),
                message_store.part_counts(conn, campaign_id),
                message_store.outcome_counts(conn, campaign_id),
            )
        )
        for channel in report.channels:
            mine: dict[str, dict[str, int]] = {}
            for (channel_id, transport, state), n in by_transport.items():
                if channel_id == channel.channel_id:
                    mine.setdefault(transport, {})[state] = n
            for transport, counts in mine.items():
                channel.by_transport[transport].CopyFrom(_progress(counts, {}))
            sent = parts.get(channel.channel_id, {})
            channel.parts.CopyFrom(
                pb.PartCounts(
                    sent=sum(sent.values()), delivered=sent.get("delivered", 0), failed=sent.get("failed", 0)
                )
            )
            for (channel_id, said), n in outcomes.items():
                if channel_id == channel.channel_id:
                    channel.progress.by_outcome[said] = n
                    report.totals.by_outcome[said] += n
        return report

    async def _snapshot(self, campaign_id: str) -> tuple[CampaignRecord, pb.CampaignReport]:
        def read(
            conn: Connection,
        ) -> tuple[
            CampaignRecord,
            dict[tuple[str, str], int],
            dict[tuple[str, str], int],
            dict[str, event_store.Engagement],
        ]:
            record = self.manager.load(conn, campaign_id)
            counts = count_store.read_counts(conn, campaign_id)
            # The reasons take a pass over the failed messages; most updates of a watch have none.
            failed = any(n for (_, state), n in counts.items() if state == "failed")
            reasons = message_store.failure_reasons(conn, campaign_id) if failed else {}
            return record, counts, reasons, event_store.engagement(conn, campaign_id)

        record, counts, reasons, engaged = await self.manager.db.read(read)
        report = build_report(record, counts, reasons, self.manager.clock.now(), self.engine)
        add_engagement(report, engaged)
        return record, report

    @unary
    async def ListMessages(
        self, request: svc.ListMessagesRequest, context: Context
    ) -> svc.ListMessagesResponse:
        v = Violations()
        campaign_id = campaign_id_from_name(request.parent, "parent")
        convert.check_id(v, "channel_id", request.channel_id)
        for index, value in enumerate(request.states):
            if value not in pb.Message.State.values() or value == pb.Message.STATE_UNSPECIFIED:
                v.add(f"states[{index}]", f"unknown state {value}")
        v.text("reason", request.reason, max_length=100)
        states = sorted(
            MessageState[pb.Message.State.Name(value)].value
            for value in request.states
            if value in pb.Message.State.values() and value != pb.Message.STATE_UNSPECIFIED
        )
        selection = (campaign_id, request.channel_id, tuple(states), request.reason)
        page = self.tokens.page(v, request, selection, 100, self.settings().limits.max_page_size)
        v.raise_if_any()

        def read(conn: Connection) -> list[message_store.MessageRow]:
            record = self.manager.load(conn, campaign_id)
            if request.channel_id and record.channel(request.channel_id) is None:
                raise errors.not_found(f"{record.name}/channels/{request.channel_id}")
            return message_store.list_messages(
                conn,
                campaign_id,
                channel_id=request.channel_id,
                states=states,
                reason=request.reason,
                after=int(page.position["a"]) if page.position else 0,
                limit=page.limit,
            )

        shown, next_token = page.result(await self.manager.db.read(read), lambda last: {"a": last.id})
        return svc.ListMessagesResponse(
            messages=[_message(campaign_id, r) for r in shown], next_page_token=next_token
        )

    @unary
    async def ListCampaignHistory(
        self, request: svc.ListCampaignHistoryRequest, context: Context
    ) -> svc.ListCampaignHistoryResponse:
        v = Violations()
        campaign_id = campaign_id_from_name(request.parent, "parent")
        page = self.tokens.page(v, request, campaign_id, 100, self.settings().limits.max_page_size)
        v.raise_if_any()
        after = int(page.position["a"]) if page.position is not None else 0
        events = await self.manager.history(campaign_id, after, page.limit)
        shown, next_token = page.result(events, lambda last: {"a": last.sequence})
        return svc.ListCampaignHistoryResponse(
            events=[convert.event_message(e) for e in shown], next_page_token=next_token
        )

    @streaming
    async def WatchCampaign(
        self, request: svc.WatchCampaignRequest, context: Context
    ) -> AsyncIterator[svc.WatchCampaignResponse]:
        campaign_id = campaign_id_from_name(request.name)
        if self.watchers >= self.settings().limits.max_watchers:
            raise ApiError(
                Code.RESOURCE_EXHAUSTED, "TOO_MANY_WATCHERS", "too many WatchCampaign streams are open"
            )
        self.watchers += 1
        hub = self.manager.hub
        try:
            previous = b""
            snapshot = True
            while not hub.closed:
                changed = hub.subscribe(campaign_id)
                try:
                    record, report = await self._snapshot(campaign_id)
                except ApiError:
                    if snapshot:
                        raise
                    return  # deleted while watched: the stream ends
                now = self.manager.clock.now()
                campaign = convert.campaign_message(record)
                report.ClearField("report_time")  # compared without it: only real changes are sent
                body = campaign.SerializeToString() + report.SerializeToString(deterministic=True)
                report.report_time.FromDatetime(now)
                if snapshot or body != previous:
                    update = svc.WatchCampaignResponse(
                        campaign=campaign, report=report, snapshot=snapshot, time=convert.timestamp(now)
                    )
                    yield update
                previous, snapshot = body, False
                # While anything may change, look again every second even without a wake-up.
                await hub.wait(changed, 1.0)
        finally:
            self.watchers -= 1

    @unary
    async def RecordEvents(
        self, request: svc.RecordEventsRequest, context: Context
    ) -> svc.RecordEventsResponse:
        v = Violations()
        if not request.events:
            v.add("events", "required")
        elif len(request.events) > MAX_EVENTS:
            v.add("events", f"more than {MAX_EVENTS} events")
        events = [_message_event(v, f"events[{i}]", e) for i, e in enumerate(request.events[:MAX_EVENTS])]
        v.raise_if_any()
        results = await self.recorder.record_messages([e for e in events if e is not None])
        return svc.RecordEventsResponse(
            results=[
                svc.MessageEventResult(
                    event_id=event.event_id,
                    status=svc.MessageEventResult.Status.Value(status.upper()),
                    reason=reason,
                )
                for event, (status, reason) in zip(request.events, results, strict=True)
            ]
        )


MAX_REASON = 1000
MAX_EVENTS = 1000
MESSAGE_NAME = re.compile(
    r"campaigns/([a-z][a-z0-9-]{0,62})/channels/([a-z][a-z0-9-]{0,62})/messages/([0-9]{1,18})"
)
EVENT_KINDS = {
    svc.MessageEvent.DELIVERED: EventKind.DELIVERED,
    svc.MessageEvent.OPENED: EventKind.OPENED,
    svc.MessageEvent.CLICKED: EventKind.CLICKED,
    svc.MessageEvent.BOUNCED: EventKind.BOUNCED,
    svc.MessageEvent.COMPLAINED: EventKind.COMPLAINED,
    svc.MessageEvent.UNSUBSCRIBED: EventKind.UNSUBSCRIBED,
}


def _message_event(v: Violations, path: str, event: svc.MessageEvent) -> MessageEvent | None:
    """The event as the recorder takes it, or None with its problems added to `v`."""
    before = len(v.found)
    v.text(f"{path}.event_id", event.event_id, max_length=200, required=True)
    kind = EVENT_KINDS.get(event.kind)
    if kind is None:
        v.add(
            f"{path}.kind", "required: one of DELIVERED, OPENED, CLICKED, BOUNCED, COMPLAINED, UNSUBSCRIBED"
        )
    message = None
    recipient = None
    which = event.WhichOneof("target")
    if which == "message":
        found = MESSAGE_NAME.fullmatch(event.message)
        if found is None:
            v.add(
                f"{path}.message",
                "must be campaigns/{campaign_id}/channels/{channel_id}/messages/{message_id}",
            )
        else:
            message = (found[1], found[2], int(found[3]))
    elif which == "provider_message_id":
        v.text(f"{path}.provider_message_id", event.provider_message_id, max_length=200, required=True)
    elif which == "recipient":
        r = event.recipient
        if not r.campaign.startswith("campaigns/") or not convert.ID.fullmatch(
            r.campaign[len("campaigns/") :]
        ):
            v.add(f"{path}.recipient.campaign", "must be campaigns/{campaign_id}")
        convert.check_id(v, f"{path}.recipient.channel_id", r.channel_id, required=True)
        v.text(f"{path}.recipient.address", r.address, max_length=320, required=True)
        recipient = (r.campaign[len("campaigns/") :], r.channel_id, r.address)
    else:
        v.add(f"{path}.target", "required: message, provider_message_id or recipient")
    if kind is EventKind.CLICKED:
        if not re.fullmatch(r"https?://[^\s]{1,1990}", event.url):
            v.add(f"{path}.url", "required for CLICKED: an absolute http(s) URL of at most 2000 characters")
    elif event.url:
        v.add(f"{path}.url", "only for CLICKED")
    if event.soft and kind is not EventKind.BOUNCED:
        v.add(f"{path}.soft", "only for BOUNCED")
    v.text(f"{path}.diagnostic", event.diagnostic, max_length=1000)
    if len(v.found) > before or kind is None:
        return None
    return MessageEvent(
        event_id=event.event_id,
        kind=kind,
        message=message,
        provider_id=event.provider_message_id,
        recipient=recipient,
        url=event.url,
        detail=event.diagnostic,
        soft=event.soft,
    )


def add_engagement(report: pb.CampaignReport, engaged: dict[str, event_store.Engagement]) -> None:
    """Fill the report's engagement counts per channel and in total from recorded events."""
    for channel in report.channels:
        counts = engaged.get(channel.channel_id)
        if counts is None:
            continue
        for progress in (channel.progress, report.totals):
            progress.opened += counts.opened
            progress.opens += counts.opens
            progress.clicked += counts.clicked
            progress.clicks += counts.clicks
            progress.bounced += counts.bounced
            progress.complained += counts.complained
            progress.unsubscribed += counts.unsubscribed
            for url, n in counts.clicks_by_link.items():
                progress.clicks_by_link[url] += n


def _progress(counts: dict[str, int], reasons: dict[str, int]) -> pb.Progress:
    total = sum(counts.values())
    done = sum(n for state, n in counts.items() if MessageState(state) in MESSAGE_DONE_STATES)
    progress = pb.Progress(
        total=total, failed_by_reason=reasons, percent_done=round(100.0 * done / total, 2) if total else 0.0
    )
    for state, n in counts.items():
        # Progress has one counter per message state, named like the state.
        setattr(progress, state, n)
    return progress


def build_report(
    record: CampaignRecord,
    counts: dict[tuple[str, str], int],
    reasons: dict[tuple[str, str], int],
    now: dt.datetime,
    engine: Engine | None = None,
) -> pb.CampaignReport:
    """The report of a campaign from its message counts per (channel, state) and failure reasons,
    with the current rate, ETA and window reopening from this daemon's engine when it has one."""
    channels = []
    all_counts: dict[str, int] = {}
    all_reasons: dict[str, int] = {}
    for channel in record.channels:
        mine = {state: n for (channel_id, state), n in counts.items() if channel_id == channel.channel_id}
        why = {reason: n for (channel_id, reason), n in reasons.items() if channel_id == channel.channel_id}
        for state, n in mine.items():
            all_counts[state] = all_counts.get(state, 0) + n
        for reason, n in why.items():
            all_reasons[reason] = all_reasons.get(reason, 0) + n
        progress = _progress(mine, why)
        if engine is not None:
            _live(
                progress,
                engine,
                record.id,
                channel.channel_id,
                now,
                running=channel.state == ChannelState.RUNNING,
            )
        channels.append(
            pb.ChannelReport(
                channel_id=channel.channel_id,
                type=channel.type,
                state=pb.Channel.State.Value(ChannelState(channel.state).name),
                progress=progress,
                audience=pb.AudienceCounts(**(channel.audience_counts or {})),
            )
        )
    totals = _progress(all_counts, all_reasons)
    totals.current_rate = sum(c.progress.current_rate for c in channels)
    etas = [c.progress.eta.ToDatetime(tzinfo=dt.UTC) for c in channels if c.progress.HasField("eta")]
    if etas:
        totals.eta.FromDatetime(max(etas))
    return pb.CampaignReport(
        campaign=record.name,
        state=pb.Campaign.State.Value(record.state.name),
        totals=totals,
        channels=channels,
        report_time=convert.timestamp(now),
    )


def _live(
    progress: pb.Progress,
    engine: Engine,
    campaign_id: str,
    channel_id: str,
    now: dt.datetime,
    *,
    running: bool,
) -> None:
    rate = engine.rate(campaign_id, channel_id)
    progress.current_rate = round(rate, 2)
    remaining = progress.queued + progress.sending + progress.retrying
    # A channel that is not running has no end to estimate.
    if running and rate > 0 and remaining:
        progress.eta.FromDatetime(now + dt.timedelta(seconds=remaining / rate))
    reopens = engine.window_reopens(campaign_id, channel_id)
    if reopens is not None:
        progress.window_reopens_time.FromDatetime(reopens)


def _message(campaign_id: str, row: message_store.MessageRow) -> pb.Message:
    message = pb.Message(
        name=f"campaigns/{campaign_id}/channels/{row.channel_id}/messages/{row.id}",
        contact=f"contacts/{row.contact_id}" if row.contact_id else "",
        address=row.address,
        state=pb.Message.State.Value(MessageState(row.state).name),
        attempts=row.attempts,
        transport=row.transport or "",
        provider_id=row.provider_id or "",
        last_error=row.last_error or "",
        reason=row.reason or "",
        outcome=row.outcome or "",
        # A message handed to the provider took one part unless its plugin said more.
        parts=row.parts or (1 if row.attempts or row.provider_id else 0),
    )
    if row.talk_time is not None:
        message.talk_time.FromNanoseconds(round(row.talk_time * 1e9))
    message.state_times["queued"].FromDatetime(row.create_time)
    if row.state != "queued":
        message.state_times[row.state].FromDatetime(row.update_time)
    return message
