"""CampaignService: validates requests, calls the campaign operations, answers with resources."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import re
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

from grpc import aio

from campaignd.api import convert
from campaignd.api.answers import CampaignAnswers
from campaignd.api.auth import current_principal
from campaignd.api.convert import Violations, campaign_id_from_name
from campaignd.api.errors import streaming, unary
from campaignd.audience.contacts import ContactFieldError, normalise_email, normalise_phone
from campaignd.campaigns import Caller, CampaignManager, Previews, Reports, Target
from campaignd.config import Settings
from campaignd.engine.events import EventRecorder
from campaignd.errors import ApiError
from campaignd.lifecycle import CampaignState, MessageState
from campaignd.model import CampaignRecord
from campaignd.plugin import EventKind, MessageEvent
from campaignd.plugin.manager import Plugins
from campaignd.store import messages as message_store
from campaignd.store.campaigns import CampaignFilter
from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import campaign_service_pb2_grpc as svc_grpc
from campaignd.v1 import resources_pb2 as pb

Context = aio.ServicerContext[Any, Any]
UPDATABLE = frozenset({"display_name", "labels", "audience", "time_zone", "guard", "channels"})


def _caller(request_id: str) -> Caller:
    return Caller(actor=current_principal.get().name, request_id=request_id)


def _campaign(data: bytes) -> pb.Campaign:
    return pb.Campaign.FromString(data)


def _new_id() -> str:
    return "c" + secrets.token_hex(8)


class CampaignReplies:
    """The answers stored for calls with a request_id: the serialised response messages."""

    def campaign(self, record: CampaignRecord) -> bytes:
        """A Campaign."""
        return convert.campaign_message(record).SerializeToString()

    def deleted(self, name: str) -> bytes:
        """A DeleteCampaignResponse."""
        return svc.DeleteCampaignResponse(name=name).SerializeToString()


class CampaignService(svc_grpc.CampaignServiceServicer):
    """The gRPC face of campaign management."""

    def __init__(
        self,
        manager: CampaignManager,
        reports: Reports,
        previews: Previews,
        settings: Callable[[], Settings],
        tokens: convert.PageTokens,
        recorder: EventRecorder,
    ) -> None:
        self.manager = manager
        self.reports = reports
        self.previews = previews
        self.recorder = recorder
        self.tokens = tokens
        self.settings = settings
        self.answers = CampaignAnswers(manager)

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
        return _campaign(await self.manager.create(record, _caller(request.request_id)))

    @unary
    async def GetCampaign(self, request: svc.GetCampaignRequest, context: Context) -> pb.Campaign:
        return await self.answers.campaign(campaign_id_from_name(request.name))

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
            campaign_id, changes, fields, request.campaign.etag, _caller(request.request_id)
        )
        return _campaign(data)

    @unary
    async def DeleteCampaign(
        self, request: svc.DeleteCampaignRequest, context: Context
    ) -> svc.DeleteCampaignResponse:
        campaign_id = self._common(request.name, "", request.etag, request.request_id)
        data = await self.manager.delete(
            campaign_id, request.force, request.etag, _caller(request.request_id)
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

    def _target(self, request: Any, v: Violations | None = None, *, reason: str = "") -> Target:
        """The campaign, channel and etag of a lifecycle request, checked with the rest of `v`."""
        v = v or Violations()
        v.text("reason", reason, max_length=MAX_REASON)
        campaign_id = self._common(request.name, request.channel_id, request.etag, request.request_id, v)
        return Target(campaign_id, request.channel_id, request.etag)

    # -- lifecycle ------------------------------------------------------------------------------

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
        target = self._target(request, v)
        assert schedule_time is not None
        return _campaign(
            await self.manager.schedule(target, _caller(request.request_id), schedule_time, attestation)
        )

    @unary
    async def UnscheduleCampaign(
        self, request: svc.UnscheduleCampaignRequest, context: Context
    ) -> pb.Campaign:
        return _campaign(await self.manager.unschedule(self._target(request), _caller(request.request_id)))

    @unary
    async def LaunchCampaign(self, request: svc.LaunchCampaignRequest, context: Context) -> pb.Campaign:
        v = Violations()
        attestation = convert.attestation(
            v, request.attestation, request.HasField("attestation"), "attestation", self.manager.clock.now()
        )
        target = self._target(request, v)
        return _campaign(await self.manager.launch(target, _caller(request.request_id), attestation))

    @unary
    async def PauseCampaign(self, request: svc.PauseCampaignRequest, context: Context) -> pb.Campaign:
        target = self._target(request, reason=request.reason)
        return _campaign(await self.manager.pause(target, _caller(request.request_id), request.reason))

    @unary
    async def ResumeCampaign(self, request: svc.ResumeCampaignRequest, context: Context) -> pb.Campaign:
        target = self._target(request, reason=request.reason)
        return _campaign(await self.manager.resume(target, _caller(request.request_id), request.reason))

    @unary
    async def StopCampaign(self, request: svc.StopCampaignRequest, context: Context) -> pb.Campaign:
        target = self._target(request, reason=request.reason)
        return _campaign(await self.manager.stop(target, _caller(request.request_id), request.reason))

    @unary
    async def RestartCampaign(self, request: svc.RestartCampaignRequest, context: Context) -> pb.Campaign:
        target = self._target(request, reason=request.reason)
        return _campaign(await self.manager.restart(target, _caller(request.request_id), request.reason))

    @unary
    async def RetryFailedMessages(
        self, request: svc.RetryFailedMessagesRequest, context: Context
    ) -> pb.Campaign:
        return _campaign(await self.manager.retry_failed(self._target(request), _caller(request.request_id)))

    @unary
    async def ArchiveCampaign(self, request: svc.ArchiveCampaignRequest, context: Context) -> pb.Campaign:
        campaign_id = self._common(request.name, "", request.etag, request.request_id)
        return _campaign(
            await self.manager.archive(campaign_id, True, request.etag, _caller(request.request_id))
        )

    @unary
    async def UnarchiveCampaign(self, request: svc.UnarchiveCampaignRequest, context: Context) -> pb.Campaign:
        campaign_id = self._common(request.name, "", request.etag, request.request_id)
        return _campaign(
            await self.manager.archive(campaign_id, False, request.etag, _caller(request.request_id))
        )

    @unary
    async def DuplicateCampaign(self, request: svc.DuplicateCampaignRequest, context: Context) -> pb.Campaign:
        v = Violations()
        convert.check_id(v, "campaign_id", request.campaign_id)
        # Empty means "<original> (copy)"; a given one must not be blank, like every display_name.
        v.text("display_name", request.display_name, max_length=200, required=bool(request.display_name))
        campaign_id = self._common(request.name, "", "", request.request_id, v)
        data = await self.manager.duplicate(
            campaign_id, request.campaign_id or _new_id(), request.display_name, _caller(request.request_id)
        )
        return _campaign(data)

    @unary
    async def AddChannel(self, request: svc.AddChannelRequest, context: Context) -> pb.Campaign:
        v = Violations()
        if not request.HasField("channel"):
            v.add("channel", "required")
        channel = convert.channel_record(v, request.channel, self.plugins, path="channel")
        campaign_id = self._common(request.name, "", request.etag, request.request_id, v)
        data = await self.manager.add_channel(campaign_id, channel, request.etag, _caller(request.request_id))
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
        results = await self.previews.test_send(campaign_id, request.channel_id, request.addresses)
        return svc.SendTestMessageResponse(
            results=[
                svc.TestSendResult(address=r.address, accepted=r.accepted, detail=r.detail) for r in results
            ]
        )

    @unary
    async def PreviewMessage(
        self, request: svc.PreviewMessageRequest, context: Context
    ) -> svc.PreviewMessageResponse:
        v = Violations()
        convert.check_id(v, "channel_id", request.channel_id, required=True)
        v.text("address", request.address, max_length=320, required=True)
        campaign_id = self._common(request.name, "", "", "", v)
        rendered = await self.previews.preview(campaign_id, request.channel_id, request.address)
        return svc.PreviewMessageResponse(
            summary=rendered.summary,
            text=rendered.text,
            data=rendered.data,
            parts=rendered.parts,
            encoding=rendered.encoding,
        )

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
        counts = await self.manager.estimate(campaign_id, request.channel_id)
        return svc.EstimateRecipientsResponse(
            channels={
                channel_id: pb.AudienceCounts(**dataclasses.asdict(c)) for channel_id, c in counts.items()
            }
        )

    @unary
    async def GetCampaignReport(
        self, request: svc.GetCampaignReportRequest, context: Context
    ) -> pb.CampaignReport:
        return convert.report_message(await self.reports.report(campaign_id_from_name(request.name)))

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
        rows = await self.manager.messages(
            campaign_id,
            channel_id=request.channel_id,
            states=states,
            reason=request.reason,
            after=int(page.position["a"]) if page.position else 0,
            limit=page.limit,
        )
        shown, next_token = page.result(rows, lambda last: {"a": last.id})
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
        # Closed with the stream, so that a client that goes away stops counting as a watcher.
        async with contextlib.aclosing(self.reports.watch(campaign_id_from_name(request.name))) as updates:
            async for update in updates:
                yield svc.WatchCampaignResponse(
                    campaign=convert.campaign_message(update.record),
                    report=convert.report_message(update.report),
                    snapshot=update.snapshot,
                    time=convert.timestamp(update.report.report_time),
                )

    @unary
    async def RecordEvents(
        self, request: svc.RecordEventsRequest, context: Context
    ) -> svc.RecordEventsResponse:
        v = Violations()
        if not request.events:
            v.add("events", "required")
        elif len(request.events) > MAX_EVENTS:
            v.add("events", f"more than {MAX_EVENTS} events")
        events = [message_event(v, f"events[{i}]", e) for i, e in enumerate(request.events[:MAX_EVENTS])]
        v.raise_if_any()
        results = await self.recorder.record_messages([_as_stored(e) for e in events if e is not None])
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


def _as_stored(event: MessageEvent) -> MessageEvent:
    """The event with its recipient's address as contacts keep it (lower case, a Unicode domain,
    E.164), so that an address written as it was sent (an IDN domain in ASCII, another case)
    finds its message; an address that does not parse is looked up as given."""
    if event.recipient is None:
        return event
    campaign_id, channel_id, address = event.recipient
    try:
        if "@" in address:
            address = normalise_email(address)
        elif address.startswith("+"):
            address = normalise_phone(address, "")
    except ContactFieldError:
        return event
    return dataclasses.replace(event, recipient=(campaign_id, channel_id, address))


MAX_REASON = 1000
MAX_EVENTS = 1000
# The longest CLICKED url, in characters: the email channel's click redirects take as long.
MAX_URL = 2000
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


def message_event(v: Violations, path: str, event: svc.MessageEvent) -> MessageEvent | None:
    """The event as the recorder takes it, or None with its problems added to `v` (also what
    `campaignctl events record` checks each line with before sending any)."""
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
        if not re.fullmatch(r"https?://\S+", event.url) or len(event.url) > MAX_URL:
            v.add(
                f"{path}.url",
                f"required for CLICKED: an absolute http(s) URL of at most {MAX_URL} characters",
            )
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
