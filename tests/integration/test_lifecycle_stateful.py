"""Random operation sequences, one client at a time and many at once, through the real daemon's API.

The model is the lifecycle module itself: every answer of the daemon is compared with what
`lifecycle.decide`, `decide_for_campaign`, `decide_archive`, `decide_unarchive` and `decide_delete`
say for the same channel states and the test channel types' `SEMANTICS`, and every campaign's
history must replay, channel by channel, from DRAFT to the channel's current state.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import itertools
import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from campaignd import lifecycle
from campaignd.lifecycle import Allowed, ChannelState, Operation, Reason, Refused
from campaignd.testing.channels import SEMANTICS
from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import campaign_service_pb2_grpc
from campaignd.v1 import resources_pb2 as pb
from tests.integration.conftest import API_ONLY, DaemonFactory, DaemonProcess

# The engine is off (an API-only daemon): the model covers the lifecycle alone.
TYPES = sorted(SEMANTICS)
RPC_TIMEOUT = 10.0
MAX_LIVE_CAMPAIGNS = 3
CONTENT_FIELDS = frozenset({"content"})
TRANSITIONS = [
    Operation.LAUNCH,
    Operation.SCHEDULE,
    Operation.UNSCHEDULE,
    Operation.PAUSE,
    Operation.RESUME,
    Operation.STOP,
    Operation.RESTART,
    Operation.RETRY_FAILED,
]
# Launch, pause and resume are drawn more often so that random sequences get past QUEUED.
WEIGHTED_TRANSITIONS = [*TRANSITIONS, Operation.LAUNCH, Operation.PAUSE, Operation.RESUME, Operation.PAUSE]
CAMPAIGN_OPERATIONS = [
    "archive",
    "unarchive",
    "duplicate",
    "delete",
    "delete_force",
    "rename",
    "edit_all",
    "edit_one",
]
OK = grpc.StatusCode.OK
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
NOT_FOUND = grpc.StatusCode.NOT_FOUND

Stub = campaign_service_pb2_grpc.CampaignServiceStub
# (channel_id, operation, from_state, to_state) of one history entry; campaign-wide ones have no states.
EventKey = tuple[str, str, ChannelState | None, ChannelState | None]


# -- talking to the daemon ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What an RPC answered: OK with the response, or an accepted error code with its ErrorInfo reason."""

    code: grpc.StatusCode
    reason: str = ""
    response: Any = None


def call(method: Callable[..., Any], request: Any) -> Outcome:
    """Call `method`; only OK, FAILED_PRECONDITION and NOT_FOUND are answers a valid request may get."""
    try:
        return Outcome(OK, response=method(request, timeout=RPC_TIMEOUT))
    except grpc.RpcError as exc:
        code = exc.code()
        if code not in (FAILED_PRECONDITION, NOT_FOUND):
            raise AssertionError(
                f"{type(request).__name__} {request} answered {code.name}: {exc.details()}"
            ) from None
        return Outcome(code, reason=error_reason(exc))


def error_reason(exc: grpc.RpcError) -> str:
    """The ErrorInfo reason in the rich status details, or ''."""
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


def history(stub: Stub, name: str) -> list[pb.CampaignEvent]:
    """Every history entry of the campaign, following page tokens."""
    events: list[pb.CampaignEvent] = []
    token = ""
    while True:
        page = stub.ListCampaignHistory(
            svc.ListCampaignHistoryRequest(parent=name, page_size=1000, page_token=token), timeout=RPC_TIMEOUT
        )
        events.extend(page.events)
        token = page.next_page_token
        if not token:
            return events


def channel_state(value: int) -> ChannelState | None:
    """The lifecycle state for a Channel.State value; None for STATE_UNSPECIFIED."""
    name = pb.Channel.State.Name(pb.Channel.State.ValueType(value))
    return None if name == "STATE_UNSPECIFIED" else ChannelState[name]


def attestation() -> pb.ConsentAttestation:
    """A consent attestation for launch and schedule."""
    return pb.ConsentAttestation(accepted_by="stateful-test", terms_version="v1")


def content(text: str) -> struct_pb2.Struct:
    """Channel content for the test types."""
    message = struct_pb2.Struct()
    message.update({"text": text})
    return message


def lifecycle_request(op: Operation, name: str, channel_id: str, **extra: Any) -> tuple[str, Any]:
    """The RPC method name and request for a channel-level lifecycle operation."""
    if op is Operation.LAUNCH:
        return "LaunchCampaign", svc.LaunchCampaignRequest(
            name=name, channel_id=channel_id, attestation=attestation(), **extra
        )
    if op is Operation.SCHEDULE:
        request = svc.ScheduleCampaignRequest(
            name=name, channel_id=channel_id, attestation=attestation(), **extra
        )
        request.schedule_time.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
        return "ScheduleCampaign", request
    method, message = {
        Operation.UNSCHEDULE: ("UnscheduleCampaign", svc.UnscheduleCampaignRequest),
        Operation.PAUSE: ("PauseCampaign", svc.PauseCampaignRequest),
        Operation.RESUME: ("ResumeCampaign", svc.ResumeCampaignRequest),
        Operation.STOP: ("StopCampaign", svc.StopCampaignRequest),
        Operation.RESTART: ("RestartCampaign", svc.RestartCampaignRequest),
        Operation.RETRY_FAILED: ("RetryFailedMessages", svc.RetryFailedMessagesRequest),
    }[op]
    return method, message(name=name, channel_id=channel_id, **extra)


def check_campaign(campaign: pb.Campaign, events: list[pb.CampaignEvent]) -> dict[str, ChannelState]:
    """Invariants every campaign keeps whatever happened to it; returns its channel states.

    (1) every channel state is a legal value, (2) the campaign state is derived from them,
    (4) sequence numbers increase and each channel's history replays from DRAFT to its state.
    """
    states: dict[str, ChannelState] = {}
    for channel in campaign.channels:
        state = channel_state(channel.state)
        assert state is not None, f"{campaign.name}/{channel.channel_id} has no state"
        states[channel.channel_id] = state
        assert channel.HasField("schedule_time") == (state is ChannelState.SCHEDULED), (
            f"{campaign.name}/{channel.channel_id} in {state.name} with schedule_time "
            f"{channel.schedule_time if channel.HasField('schedule_time') else None}"
        )
    derived = lifecycle.derive_campaign_state(states.values())
    assert pb.Campaign.State.Name(campaign.state) == derived.name, (
        f"{campaign.name} is {pb.Campaign.State.Name(campaign.state)}, "
        f"its channels {states} make {derived.name}"
    )
    sequences = [e.sequence for e in events]
    assert all(a < b for a, b in itertools.pairwise(sequences)), f"sequences do not increase: {sequences}"
    assert {e.channel_id for e in events} <= {"", *states}, f"history names unknown channels: {events}"
    for channel_id, state in states.items():
        current = ChannelState.DRAFT
        for event in (e for e in events if e.channel_id == channel_id):
            assert channel_state(event.from_state) is current, (
                f"{campaign.name}/{channel_id}: entry {event.sequence} ({event.operation}) starts from "
                f"{pb.Channel.State.Name(event.from_state)}, but the replay is at {current.name}"
            )
            replayed = channel_state(event.to_state)
            assert replayed is not None, (
                f"{campaign.name}/{channel_id}: entry {event.sequence} has no to_state"
            )
            current = replayed
        assert current is state, (
            f"{campaign.name}/{channel_id}: history ends in {current.name}, state {state.name}"
        )
    return states


# -- the model ---------------------------------------------------------------------------------


@dataclasses.dataclass
class ModelChannel:
    """What the test expects of one channel."""

    channel_id: str
    type: str
    text: str
    state: ChannelState = ChannelState.DRAFT


@dataclasses.dataclass
class ModelCampaign:
    """What the test expects of one campaign, including its whole history."""

    display_name: str
    channels: list[ModelChannel]
    etag: str
    archived: bool = False
    attested: bool = False
    events: list[EventKey] = dataclasses.field(default_factory=list)

    def channel(self, channel_id: str) -> ModelChannel | None:
        """The channel with this id, if any."""
        return next((c for c in self.channels if c.channel_id == channel_id), None)


@dataclasses.dataclass(frozen=True)
class Refusal:
    """The error the daemon must answer with."""

    code: grpc.StatusCode
    reason: str = ""

    @classmethod
    def of(cls, decision: Refused) -> Refusal:
        """FAILED_PRECONDITION with the lifecycle's reason."""
        return cls(FAILED_PRECONDITION, decision.reason.value)


Plan = list[tuple[ModelChannel, Allowed]] | Refusal


def plan_transition(model: ModelCampaign | None, op: Operation, channel_id: str) -> Plan:
    """The channels `op` acts on according to the lifecycle, or the refusal it must get."""
    if model is None:
        return Refusal(NOT_FOUND)
    if channel_id:
        channel = model.channel(channel_id)
        if channel is None:
            return Refusal(NOT_FOUND)
        decision = lifecycle.decide(channel.state, op, SEMANTICS[channel.type], archived=model.archived)
        return Refusal.of(decision) if isinstance(decision, Refused) else [(channel, decision)]
    decided = lifecycle.decide_for_campaign(
        op, {c.channel_id: (c.state, SEMANTICS[c.type]) for c in model.channels}, archived=model.archived
    )
    if isinstance(decided, Refused):
        if len(model.channels) == 1 and decided.reason is Reason.NOTHING_TO_DO:
            # With one channel the daemon answers with that channel's own refusal.
            return plan_transition(model, op, model.channels[0].channel_id)
        return Refusal.of(decided)
    return [(c, decided[c.channel_id]) for c in model.channels if c.channel_id in decided]


def expect_refusal(outcome: Outcome, refusal: Refusal, what: str) -> None:
    """The daemon refused exactly as the model says."""
    assert outcome.code == refusal.code, f"{what}: expected {refusal}, got {outcome.code.name} {outcome}"
    if refusal.reason:
        assert outcome.reason == refusal.reason, (
            f"{what}: expected reason {refusal.reason}, got {outcome.reason}"
        )


def expect_success(outcome: Outcome, what: str) -> Any:
    """The daemon accepted; returns its response."""
    assert outcome.code == OK, (
        f"{what}: the lifecycle allows it, the daemon answered {outcome.code.name} {outcome}"
    )
    return outcome.response


# -- the sequential state machine -----------------------------------------------------------------


CAMPAIGN_NUMBERS = itertools.count()
TEXT_NUMBERS = itertools.count()


class LifecycleMachine(RuleBasedStateMachine):
    """Drives one daemon with random operations and checks it against the lifecycle model."""

    stub: Stub | None = None  # set by the `machine_daemon` fixture

    def __init__(self) -> None:
        super().__init__()
        self.campaigns: dict[str, ModelCampaign] = {}
        self.deleted: list[str] = []

    @property
    def api(self) -> Stub:
        """The stub of the test's daemon."""
        assert self.stub is not None, "the machine_daemon fixture did not run"
        return self.stub

    # -- helpers ----------------------------------------------------------------------------------

    def _live(self, data: st.DataObject) -> str:
        return data.draw(st.sampled_from(list(self.campaigns)), label="campaign")

    def _channel(self, data: st.DataObject, campaign_id: str) -> str:
        channel_ids = [c.channel_id for c in self.campaigns[campaign_id].channels]
        return data.draw(st.sampled_from(channel_ids), label="channel")

    def _accept(self, model: ModelCampaign, campaign: pb.Campaign, what: str) -> None:
        assert campaign.etag != model.etag, f"{what} changed the campaign but not its etag {model.etag}"
        model.etag = campaign.etag
        got = [(c.channel_id, channel_state(c.state)) for c in campaign.channels]
        want = [(c.channel_id, c.state) for c in model.channels]
        assert got == want, f"{what}: the response has channels {got}, the lifecycle says {want}"

    def _add_model(self, campaign: pb.Campaign, model: ModelCampaign) -> None:
        self.campaigns[campaign.name.removeprefix("campaigns/")] = model

    # -- rules ------------------------------------------------------------------------------------

    @precondition(lambda self: len(self.campaigns) < MAX_LIVE_CAMPAIGNS)
    @rule(types=st.lists(st.sampled_from(TYPES), min_size=1, max_size=3))
    def create(self, types: list[str]) -> None:
        campaign_id = f"s{next(CAMPAIGN_NUMBERS)}"
        channels = [ModelChannel(f"ch{i}", t, f"text {next(TEXT_NUMBERS)}") for i, t in enumerate(types)]
        request = svc.CreateCampaignRequest(
            campaign_id=campaign_id,
            campaign=pb.Campaign(
                display_name=f"Campaign {campaign_id}",
                audience=pb.Audience(target_lists=["lists/x"]),
                channels=[
                    pb.Channel(channel_id=c.channel_id, type=c.type, content=content(c.text))
                    for c in channels
                ],
            ),
        )
        campaign = expect_success(call(self.api.CreateCampaign, request), "create")
        model = ModelCampaign(f"Campaign {campaign_id}", channels, campaign.etag)
        model.events.append(("", "create", None, None))
        self._add_model(campaign, model)

    @precondition(lambda self: self.campaigns)
    @rule(op=st.sampled_from(WEIGHTED_TRANSITIONS), data=st.data())
    def campaign_wide(self, op: Operation, data: st.DataObject) -> None:
        self._transition(op, self._live(data), "")

    @precondition(lambda self: self.campaigns)
    @rule(op=st.sampled_from(WEIGHTED_TRANSITIONS), data=st.data())
    def one_channel(self, op: Operation, data: st.DataObject) -> None:
        campaign_id = self._live(data)
        self._transition(op, campaign_id, self._channel(data, campaign_id))

    @precondition(lambda self: self.campaigns)
    @rule(data=st.data(), campaign_wide=st.booleans())
    def legal_transition(self, data: st.DataObject, campaign_wide: bool) -> None:
        """An operation the lifecycle allows for a random channel, so that sequences reach deep states."""
        campaign_id = self._live(data)
        model = self.campaigns[campaign_id]
        if model.archived:
            self._archive(campaign_id, archive=False)
            return
        channel = model.channel(self._channel(data, campaign_id))
        assert channel is not None
        semantics = SEMANTICS[channel.type]
        legal = [
            op for op in TRANSITIONS if isinstance(lifecycle.decide(channel.state, op, semantics), Allowed)
        ]
        if legal:
            op = data.draw(st.sampled_from(legal), label="legal op")
            self._transition(op, campaign_id, "" if campaign_wide else channel.channel_id)

    @precondition(lambda self: self.campaigns)
    @rule(kind=st.sampled_from(CAMPAIGN_OPERATIONS), data=st.data())
    def campaign_operation(self, kind: str, data: st.DataObject) -> None:
        campaign_id = self._live(data)
        channel_id = self._channel(data, campaign_id) if kind == "edit_one" else ""
        self._campaign_operation(kind, campaign_id, channel_id, data)

    @precondition(lambda self: self.campaigns or self.deleted)
    @rule(kind=st.sampled_from([op.value for op in TRANSITIONS] + CAMPAIGN_OPERATIONS), data=st.data())
    def missing_target(self, kind: str, data: st.DataObject) -> None:
        """A deleted campaign (any operation), or a channel the campaign does not have (transitions)."""
        if self.deleted and (not self.campaigns or data.draw(st.booleans(), label="deleted")):
            campaign_id = data.draw(st.sampled_from(self.deleted), label="deleted campaign")
            if kind in CAMPAIGN_OPERATIONS:
                self._campaign_operation(kind, campaign_id, "ch0" if kind == "edit_one" else "", data)
            else:
                self._transition(Operation(kind), campaign_id, data.draw(st.sampled_from(["", "ch0"])))
        else:
            op = Operation.PAUSE if kind in CAMPAIGN_OPERATIONS else Operation(kind)
            self._transition(op, self._live(data), "ghost")

    # -- operations ---------------------------------------------------------------------------------

    def _transition(self, op: Operation, campaign_id: str, channel_id: str) -> None:
        model = self.campaigns.get(campaign_id)
        plan = plan_transition(model, op, channel_id)
        method, request = lifecycle_request(op, f"campaigns/{campaign_id}", channel_id)
        outcome = call(getattr(self.api, method), request)
        what = f"{op.value} campaigns/{campaign_id} channel {channel_id!r}"
        if isinstance(plan, Refusal):
            expect_refusal(outcome, plan, what)
            return
        assert model is not None
        response = expect_success(outcome, what)
        for channel, decision in plan:
            before = channel.state
            if decision.target is not None:
                channel.state = decision.target
            model.events.append((channel.channel_id, op.value, before, channel.state))
        if op in (Operation.LAUNCH, Operation.SCHEDULE):
            model.attested = True
        self._accept(model, response, what)

    def _campaign_operation(self, kind: str, campaign_id: str, channel_id: str, data: st.DataObject) -> None:
        match kind:
            case "archive" | "unarchive":
                self._archive(campaign_id, kind == "archive")
            case "duplicate" if len(self.campaigns) < MAX_LIVE_CAMPAIGNS:
                self._duplicate(campaign_id, data.draw(st.sampled_from(["", "Copy"]), label="display_name"))
            case "delete" | "delete_force":
                self._delete(campaign_id, kind == "delete_force")
            case "edit_all" | "edit_one":
                self._edit_content(campaign_id, channel_id)
            case _:
                self._rename(campaign_id)

    def _archive(self, campaign_id: str, archive: bool) -> None:
        model = self.campaigns.get(campaign_id)
        name = f"campaigns/{campaign_id}"
        if archive:
            outcome = call(self.api.ArchiveCampaign, svc.ArchiveCampaignRequest(name=name))
        else:
            outcome = call(self.api.UnarchiveCampaign, svc.UnarchiveCampaignRequest(name=name))
        what = f"{'archive' if archive else 'unarchive'} {name}"
        if model is None:
            expect_refusal(outcome, Refusal(NOT_FOUND), what)
            return
        decision = (
            lifecycle.decide_archive((c.state for c in model.channels), model.archived)
            if archive
            else lifecycle.decide_unarchive(model.archived)
        )
        if isinstance(decision, Refused):
            expect_refusal(outcome, Refusal.of(decision), what)
            return
        response = expect_success(outcome, what)
        model.archived = archive
        model.events.append(("", "archive" if archive else "unarchive", None, None))
        self._accept(model, response, what)

    def _duplicate(self, source_id: str, display_name: str) -> None:
        source = self.campaigns.get(source_id)
        new_id = f"s{next(CAMPAIGN_NUMBERS)}"
        request = svc.DuplicateCampaignRequest(
            name=f"campaigns/{source_id}", campaign_id=new_id, display_name=display_name
        )
        outcome = call(self.api.DuplicateCampaign, request)
        what = f"duplicate campaigns/{source_id}"
        if source is None:
            expect_refusal(outcome, Refusal(NOT_FOUND), what)
            return
        campaign = expect_success(outcome, what)
        # A new DRAFT copy of any campaign, archived or not, whatever its channels' states.
        channels = [ModelChannel(c.channel_id, c.type, c.text) for c in source.channels]
        model = ModelCampaign(display_name or f"{source.display_name} (copy)"[:200], channels, campaign.etag)
        model.events.append(("", "duplicate", None, None))
        got = [(c.channel_id, c.type, channel_state(c.state)) for c in campaign.channels]
        assert got == [(c.channel_id, c.type, ChannelState.DRAFT) for c in channels], f"{what}: {got}"
        self._add_model(campaign, model)

    def _delete(self, campaign_id: str, force: bool) -> None:
        model = self.campaigns.get(campaign_id)
        name = f"campaigns/{campaign_id}"
        outcome = call(self.api.DeleteCampaign, svc.DeleteCampaignRequest(name=name, force=force))
        what = f"delete {name} force={force}"
        if model is None:
            expect_refusal(outcome, Refusal(NOT_FOUND), what)
            return
        decision = lifecycle.decide_delete((c.state for c in model.channels), force)
        if isinstance(decision, Refused):
            expect_refusal(outcome, Refusal.of(decision), what)
            return
        assert expect_success(outcome, what).name == name
        del self.campaigns[campaign_id]
        self.deleted.append(campaign_id)
        for method, request in (
            (self.api.GetCampaign, svc.GetCampaignRequest(name=name)),
            (self.api.ListCampaignHistory, svc.ListCampaignHistoryRequest(parent=name)),
        ):
            expect_refusal(call(method, request), Refusal(NOT_FOUND), f"{what}, then read it")

    def _rename(self, campaign_id: str) -> None:
        model = self.campaigns.get(campaign_id)
        display_name = f"Renamed {next(TEXT_NUMBERS)}"
        request = svc.UpdateCampaignRequest(
            campaign=pb.Campaign(name=f"campaigns/{campaign_id}", display_name=display_name),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        )
        outcome = call(self.api.UpdateCampaign, request)
        what = f"rename campaigns/{campaign_id}"
        if model is None:
            expect_refusal(outcome, Refusal(NOT_FOUND), what)
            return
        # Descriptive fields change in any state, archived or not.
        response = expect_success(outcome, what)
        model.display_name = display_name
        model.events.append(("", "update", None, None))
        self._accept(model, response, what)

    def _edit_content(self, campaign_id: str, channel_id: str) -> None:
        """Change the content of one channel, or of every channel when `channel_id` is ''."""
        model = self.campaigns.get(campaign_id)
        edited = [c for c in model.channels if c.channel_id == channel_id or not channel_id] if model else []
        texts = {c.channel_id: f"text {next(TEXT_NUMBERS)}" for c in edited} or {channel_id or "ch0": "text"}
        request = svc.UpdateCampaignRequest(
            campaign=pb.Campaign(
                name=f"campaigns/{campaign_id}",
                channels=[pb.Channel(channel_id=i, content=content(t)) for i, t in texts.items()],
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["channels"]),
        )
        outcome = call(self.api.UpdateCampaign, request)
        what = f"edit content of campaigns/{campaign_id} channel {channel_id!r}"
        if model is None:
            expect_refusal(outcome, Refusal(NOT_FOUND), what)
            return
        if model.archived:
            expect_refusal(outcome, Refusal(FAILED_PRECONDITION, Reason.ARCHIVED.value), what)
            return
        # An edit is all or nothing: the first channel that may not change refuses it.
        decisions = [
            (c, lifecycle.decide(c.state, Operation.EDIT, SEMANTICS[c.type], edit_fields=CONTENT_FIELDS))
            for c in edited
        ]
        refused = [d for _, d in decisions if isinstance(d, Refused)]
        if refused:
            expect_refusal(outcome, Refusal.of(refused[0]), what)
            return
        response = expect_success(outcome, what)
        for channel, decision in decisions:
            assert isinstance(decision, Allowed)
            channel.text = texts[channel.channel_id]
            if decision.target is not None and decision.target is not channel.state:
                model.events.append((channel.channel_id, "edit", channel.state, decision.target))
                channel.state = decision.target
        model.events.append(("", "update", None, None))
        self._accept(model, response, what)

    # -- invariants ---------------------------------------------------------------------------------

    @invariant()
    def daemon_agrees_with_the_model(self) -> None:
        for campaign_id, model in self.campaigns.items():
            name = f"campaigns/{campaign_id}"
            campaign = self.api.GetCampaign(svc.GetCampaignRequest(name=name), timeout=RPC_TIMEOUT)
            events = history(self.api, name)
            states = check_campaign(campaign, events)
            want = {c.channel_id: c.state for c in model.channels}
            assert states == want, f"{name}: channels {states}, the lifecycle says {want}"
            assert campaign.etag == model.etag, f"{name}: etag {campaign.etag}, last seen {model.etag}"
            assert campaign.archived == model.archived, f"{name}: archived={campaign.archived}"
            assert campaign.display_name == model.display_name
            assert campaign.HasField("attestation") == model.attested, (
                f"{name}: attestation {campaign.attestation}"
            )
            texts = {c.channel_id: dict(c.content) for c in campaign.channels}
            assert texts == {c.channel_id: {"text": c.text} for c in model.channels}, f"{name}: {texts}"
            got: list[EventKey] = [
                (e.channel_id, e.operation, channel_state(e.from_state), channel_state(e.to_state))
                for e in events
            ]
            assert got == model.events, f"{name}: history {got}, expected {model.events}"


@pytest.fixture
def machine_daemon(daemon_factory: DaemonFactory) -> Iterator[DaemonProcess]:
    """One daemon with the test channel types for the whole state machine run."""
    daemon = daemon_factory(API_ONLY).start().ensure_lists("x")
    with daemon.channel() as channel:
        LifecycleMachine.stub = Stub(channel)
        try:
            yield daemon
        finally:
            LifecycleMachine.stub = None


@pytest.mark.slow
@pytest.mark.usefixtures("machine_daemon")
class TestLifecycleStateMachine(LifecycleMachine.TestCase):  # type: ignore[valid-type,misc]
    """Random operation sequences through the real daemon."""

    settings = settings(
        max_examples=25,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )

    def runTest(self) -> None:  # noqa: N802 - unittest's name
        """Random operations agree with the lifecycle table, state derivation and replayable history."""
        super().runTest()


# -- many clients at once ------------------------------------------------------------------------------


CONCURRENT_THREADS = 8
CONCURRENT_CALLS = 400
CONCURRENT_CAMPAIGNS = {
    "race-a": ["test-sms", "test-email"],
    "race-b": ["test-sms", "test-voice", "test-sms"],
    "race-c": ["test-sms"],
}
# Restart (test-sms only) brings stopped channels back, so the race goes on for all the calls.
CONCURRENT_OPS = [Operation.PAUSE] * 6 + [Operation.RESUME] * 6 + [Operation.LAUNCH] * 2
CONCURRENT_OPS += [Operation.STOP] * 2 + [Operation.RESTART] * 2


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One call made by a concurrent client."""

    request_id: str
    campaign_id: str
    channel_id: str
    op: Operation
    outcome: Outcome


def _client(
    daemon: DaemonProcess, number: int, calls: int, start: threading.Barrier, out: list[Attempt]
) -> None:
    chooser = random.Random(number)
    with daemon.channel() as channel:
        stub = Stub(channel)
        start.wait(timeout=60)
        for index in range(calls):
            campaign_id = chooser.choice(sorted(CONCURRENT_CAMPAIGNS))
            channel_ids = [f"ch{i}" for i in range(len(CONCURRENT_CAMPAIGNS[campaign_id]))]
            channel_id = chooser.choice(["", "", *channel_ids])
            op = chooser.choice(CONCURRENT_OPS)
            request_id = f"t{number}-{index}"
            method, request = lifecycle_request(
                op, f"campaigns/{campaign_id}", channel_id, request_id=request_id
            )
            try:
                outcome = call(getattr(stub, method), request)
            except AssertionError as exc:  # an unexpected status code: recorded, reported at the end
                outcome = Outcome(grpc.StatusCode.UNKNOWN, reason=str(exc))
            out.append(Attempt(request_id, campaign_id, channel_id, op, outcome))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_concurrent_clients_never_make_a_forbidden_history(
    backend: str, daemon_factory: DaemonFactory, request: pytest.FixtureRequest
) -> None:
    """400 racing pause/resume/stop/launch calls from 8 clients leave only legal, unbroken histories."""
    config = API_ONLY
    if backend == "postgresql":
        config = f'[database]\nurl = "{request.getfixturevalue("pg_url")}"\n' + API_ONLY
    daemon = daemon_factory(config).start().ensure_lists("x")
    with daemon.channel() as channel:
        stub = Stub(channel)
        for campaign_id, types in CONCURRENT_CAMPAIGNS.items():
            stub.CreateCampaign(
                svc.CreateCampaignRequest(
                    campaign_id=campaign_id,
                    campaign=pb.Campaign(
                        display_name=campaign_id,
                        audience=pb.Audience(target_lists=["lists/x"]),
                        channels=[
                            pb.Channel(channel_id=f"ch{i}", type=t, content=content("hi"))
                            for i, t in enumerate(types)
                        ],
                    ),
                ),
                timeout=RPC_TIMEOUT,
            )

        attempts: list[Attempt] = []
        start = threading.Barrier(CONCURRENT_THREADS)
        per_thread = CONCURRENT_CALLS // CONCURRENT_THREADS
        threads = [
            threading.Thread(target=_client, args=(daemon, n, per_thread, start, attempts))
            for n in range(CONCURRENT_THREADS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "a client hung"
        assert len(attempts) == CONCURRENT_CALLS

        unexpected = [a for a in attempts if a.outcome.code not in (OK, FAILED_PRECONDITION)]
        assert not unexpected, f"calls answered neither OK nor FAILED_PRECONDITION: {unexpected[:5]}"
        reasons = collections.Counter(a.outcome.reason for a in attempts if a.outcome.code != OK)
        refusals = {Reason.ILLEGAL_TRANSITION, Reason.NOTHING_TO_DO, Reason.RESTART_NOT_SUPPORTED}
        assert set(reasons) <= {r.value for r in refusals}, reasons
        assert any(a.outcome.code == OK for a in attempts), "no call succeeded: nothing raced"

        for campaign_id, types in CONCURRENT_CAMPAIGNS.items():
            name = f"campaigns/{campaign_id}"
            campaign = stub.GetCampaign(svc.GetCampaignRequest(name=name), timeout=RPC_TIMEOUT)
            events = history(stub, name)
            _check_race(campaign, events, types, [a for a in attempts if a.campaign_id == campaign_id])
    log = daemon.log_text()
    assert "unexpected error" not in log, log[-5000:]


def _check_race(
    campaign: pb.Campaign, events: list[pb.CampaignEvent], types: list[str], attempts: list[Attempt]
) -> None:
    check_campaign(campaign, events)  # legal states, derived state, replay from DRAFT, increasing sequences
    type_of = {f"ch{i}": t for i, t in enumerate(types)}
    name = campaign.name

    # Every entry is a move the lifecycle table allows for that channel's type.
    for event in events:
        if not event.channel_id:
            assert event.operation == "create", f"{name}: unexpected campaign-wide entry {event}"
            continue
        frm, to = channel_state(event.from_state), channel_state(event.to_state)
        assert frm is not None
        decision = lifecycle.decide(frm, Operation(event.operation), SEMANTICS[type_of[event.channel_id]])
        assert isinstance(decision, Allowed), f"{name}: history has a forbidden entry {event}: {decision}"
        assert (decision.target or frm) is to, f"{name}: entry {event} does not go where the table says"

    # No lost update: along each channel's history, each position is taken by one entry only,
    # which starts where the one before it ended (check_campaign has replayed this from DRAFT).
    for channel_id in type_of:
        chain = [e for e in events if e.channel_id == channel_id]
        for before, after in itertools.pairwise(chain):
            assert after.from_state == before.to_state, f"{name}/{channel_id}: {before} then {after}"

    # Each accepted call wrote exactly one version and its entries; each refused call wrote nothing.
    accepted = [a for a in attempts if a.outcome.code == OK]
    etags = [a.outcome.response.etag for a in accepted]
    assert len(set(etags)) == len(etags), f"{name}: two accepted calls produced the same version: {etags}"
    assert campaign.etag == f'"{1 + len(accepted)}"', (
        f"{name}: etag {campaign.etag}, {len(accepted)} accepted"
    )
    by_request = collections.defaultdict(list)
    for event in events:
        if event.channel_id:
            by_request[event.request_id].append(event)
    assert set(by_request) == {a.request_id for a in accepted}, f"{name}: history and accepted calls differ"
    for attempt in accepted:
        written = by_request[attempt.request_id]
        assert all(e.operation == attempt.op.value for e in written), f"{name}: {attempt} wrote {written}"
        if attempt.channel_id:
            assert [e.channel_id for e in written] == [attempt.channel_id], (
                f"{name}: {attempt} wrote {written}"
            )
            [response_channel] = [
                c for c in attempt.outcome.response.channels if c.channel_id == attempt.channel_id
            ]
            assert response_channel.state == written[0].to_state, f"{name}: {attempt} answered another state"
