"""The campaign lifecycle: states, legal transitions and derived campaign state (SPEC §3).

Pure and synchronous: no I/O and no imports from the rest of campaignd. The store and the API
ask this module whether an operation is legal; none of them keeps its own copy of the rules.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, TypeVar

_K = TypeVar("_K", bound=Hashable)


class ChannelState(enum.StrEnum):
    """Lifecycle state of one channel, the unit that runs (§3.1)."""

    DRAFT = "draft"
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    STOPPED = "stopped"
    FAILED = "failed"


class CampaignState(enum.StrEnum):
    """State of a campaign, always derived from its channels (§3.2)."""

    DRAFT = "draft"
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    STOPPED = "stopped"
    FAILED = "failed"


class MessageState(enum.StrEnum):
    """State of one recipient's message on one channel (§3.3)."""

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"
    RETRYING = "retrying"
    OPTED_OUT = "opted_out"
    CANCELLED = "cancelled"
    ASSUMED_DELIVERED = "assumed_delivered"


class Operation(enum.StrEnum):
    """A channel-level operation, asked for by an operator or made by the daemon itself."""

    EDIT = "edit"
    DELETE = "delete"
    TEST_SEND = "test_send"
    ESTIMATE = "estimate"
    SCHEDULE = "schedule"
    UNSCHEDULE = "unschedule"
    LAUNCH = "launch"
    PAUSE = "pause"
    RESUME = "resume"
    STOP = "stop"
    RESTART = "restart"
    RETRY_FAILED = "retry_failed"
    START = "start"
    ACTIVATE = "activate"
    COMPLETE = "complete"
    FAIL = "fail"
    GUARD_PAUSE = "guard_pause"


OPERATOR_OPERATIONS: Final = frozenset(Operation) - {
    Operation.START,
    Operation.ACTIVATE,
    Operation.COMPLETE,
    Operation.FAIL,
    Operation.GUARD_PAUSE,
}
"""Operations a client may ask for; the rest are made by the daemon (schedule, slots, guards, errors)."""


class EditPolicy(enum.StrEnum):
    """What editing a SCHEDULED channel does; chosen by the channel type (§6.3)."""

    RETURN_TO_DRAFT = "return_to_draft"
    SCHEDULE_ONLY = "schedule_only"
    SETTINGS_AND_SCHEDULE = "settings_and_schedule"


@dataclass(frozen=True)
class ChannelSemantics:
    """The lifecycle choices a channel type makes through its plugin's hooks (§6.3)."""

    restartable: bool = False
    edit_while_scheduled: EditPolicy = EditPolicy.RETURN_TO_DRAFT


DEFAULT_SEMANTICS: Final = ChannelSemantics()

SCHEDULE_FIELDS: Final = frozenset({"schedule_time"})
"""The edit fields a SCHEDULE_ONLY channel type accepts while SCHEDULED."""


class Reason(enum.StrEnum):
    """Machine-readable reason for a refusal, sent as the gRPC ErrorInfo reason."""

    ILLEGAL_TRANSITION = "ILLEGAL_TRANSITION"
    RESTART_NOT_SUPPORTED = "RESTART_NOT_SUPPORTED"
    EDIT_NOT_ALLOWED = "EDIT_NOT_ALLOWED"
    NOTHING_TO_DO = "NOTHING_TO_DO"
    CAMPAIGN_ACTIVE = "CAMPAIGN_ACTIVE"
    FORCE_REQUIRED = "FORCE_REQUIRED"
    ARCHIVED = "ARCHIVED"
    NOT_ARCHIVED = "NOT_ARCHIVED"
    ALREADY_ARCHIVED = "ALREADY_ARCHIVED"


@dataclass(frozen=True)
class Allowed:
    """The operation may go ahead; `target` is the new state, or None when the state stays."""

    target: ChannelState | None


@dataclass(frozen=True)
class Refused:
    """The operation is refused and nothing changes."""

    reason: Reason
    message: str


Decision = Allowed | Refused

ACTIVE_STATES: Final = frozenset(
    {ChannelState.SCHEDULED, ChannelState.QUEUED, ChannelState.RUNNING, ChannelState.PAUSED}
)
"""Started and not finished: a campaign with such a channel cannot be archived."""

SENDING_STATES: Final = frozenset({ChannelState.QUEUED, ChannelState.RUNNING, ChannelState.PAUSED})
"""Launched and not finished: message leases may exist."""

FINAL_STATES: Final = frozenset({ChannelState.COMPLETED, ChannelState.STOPPED, ChannelState.FAILED})
"""No further sends happen by themselves."""

_S = ChannelState
_O = Operation

# The legal transitions: operation -> {from state: new state, or None when the state stays}.
# Two entries are further narrowed by the channel's semantics in `decide`: EDIT from SCHEDULED
# (the edit policy; DRAFT here is the default policy's target) and RESTART (only if restartable).
_TRANSITIONS: Final[Mapping[Operation, Mapping[ChannelState, ChannelState | None]]] = {
    _O.EDIT: {_S.DRAFT: None, _S.SCHEDULED: _S.DRAFT},
    _O.DELETE: {_S.DRAFT: None},
    _O.TEST_SEND: {_S.DRAFT: None},
    _O.ESTIMATE: {_S.DRAFT: None},
    _O.SCHEDULE: {_S.DRAFT: _S.SCHEDULED, _S.SCHEDULED: None},
    _O.UNSCHEDULE: {_S.SCHEDULED: _S.DRAFT},
    # The engine moves a launched channel on to RUNNING with ACTIVATE once it has a slot.
    _O.LAUNCH: {_S.DRAFT: _S.QUEUED, _S.SCHEDULED: _S.QUEUED},
    _O.PAUSE: {_S.QUEUED: _S.PAUSED, _S.RUNNING: _S.PAUSED},
    _O.RESUME: {_S.PAUSED: _S.RUNNING},
    _O.STOP: {_S.QUEUED: _S.STOPPED, _S.RUNNING: _S.STOPPED, _S.PAUSED: _S.STOPPED},
    _O.RESTART: {_S.STOPPED: _S.RUNNING},
    _O.RETRY_FAILED: {_S.COMPLETED: _S.RUNNING},
    _O.START: {_S.SCHEDULED: _S.QUEUED},
    _O.ACTIVATE: {_S.QUEUED: _S.RUNNING},
    _O.COMPLETE: {_S.RUNNING: _S.COMPLETED},
    _O.FAIL: {_S.SCHEDULED: _S.FAILED, _S.QUEUED: _S.FAILED, _S.RUNNING: _S.FAILED, _S.PAUSED: _S.FAILED},
    _O.GUARD_PAUSE: {_S.QUEUED: _S.PAUSED, _S.RUNNING: _S.PAUSED},
}


def _refuse(state: ChannelState, op: Operation) -> Refused:
    reason = Reason.EDIT_NOT_ALLOWED if op is Operation.EDIT else Reason.ILLEGAL_TRANSITION
    return Refused(reason, f"cannot {op.value.replace('_', ' ')} a channel in {state.name}")


def _edit_scheduled(semantics: ChannelSemantics, edit_fields: frozenset[str]) -> Decision:
    match semantics.edit_while_scheduled:
        case EditPolicy.RETURN_TO_DRAFT:
            return Allowed(ChannelState.DRAFT)
        case EditPolicy.SCHEDULE_ONLY if not edit_fields <= SCHEDULE_FIELDS:
            return Refused(
                Reason.EDIT_NOT_ALLOWED,
                "only the schedule of a SCHEDULED channel of this type may change; unschedule it first",
            )
        case _:
            return Allowed(None)


def decide(
    state: ChannelState,
    op: Operation,
    semantics: ChannelSemantics = DEFAULT_SEMANTICS,
    *,
    edit_fields: frozenset[str] = frozenset(),
    archived: bool = False,
) -> Decision:
    """Decide whether `op` may act on a channel in `state`, and the state it leads to.

    `edit_fields` names the fields an EDIT changes; it matters only for SCHEDULE_ONLY channel types.
    Every operation on a channel of an archived campaign is refused until it is unarchived.
    """
    if archived:
        return Refused(Reason.ARCHIVED, "the campaign is archived; unarchive it first")
    targets = _TRANSITIONS[op]
    if state not in targets:
        return _refuse(state, op)
    if op is Operation.EDIT and state is ChannelState.SCHEDULED:
        return _edit_scheduled(semantics, edit_fields)
    if op is Operation.RESTART and not semantics.restartable:
        return Refused(Reason.RESTART_NOT_SUPPORTED, "this channel type cannot be restarted once STOPPED")
    return Allowed(targets[state])


def allowed_operations(
    state: ChannelState, semantics: ChannelSemantics = DEFAULT_SEMANTICS
) -> frozenset[Operation]:
    """The operator operations a channel in `state` accepts now (an EDIT may still be narrowed by fields)."""
    return frozenset(op for op in OPERATOR_OPERATIONS if isinstance(decide(state, op, semantics), Allowed))


def decide_for_campaign(
    op: Operation,
    channels: Mapping[_K, tuple[ChannelState, ChannelSemantics]],
    *,
    edit_fields: frozenset[str] = frozenset(),
    archived: bool = False,
) -> Mapping[_K, Allowed] | Refused:
    """Apply a campaign-level `op` to every channel it is legal for; channels it is not legal for are skipped.

    Refused with NOTHING_TO_DO when it is legal for none of them (or there are none).
    """
    if archived:
        return Refused(Reason.ARCHIVED, "the campaign is archived; unarchive it first")
    allowed = {
        key: decision
        for key, (state, semantics) in channels.items()
        if isinstance(decision := decide(state, op, semantics, edit_fields=edit_fields), Allowed)
    }
    if not allowed:
        return Refused(Reason.NOTHING_TO_DO, f"no channel of the campaign can {op.value.replace('_', ' ')}")
    return allowed


# The first of these present decides a campaign's state while any channel is not final.
_UNFINISHED_PRECEDENCE: Final = (
    ChannelState.RUNNING,
    ChannelState.QUEUED,
    ChannelState.PAUSED,
    ChannelState.SCHEDULED,
    ChannelState.DRAFT,
)


def derive_campaign_state(channel_states: Iterable[ChannelState]) -> CampaignState:
    """Derive a campaign's state from its channels' states; defined for every input, order-free.

    - no channels: DRAFT;
    - otherwise the first present of RUNNING > QUEUED > PAUSED > SCHEDULED > DRAFT, so a campaign
      with anything still sending or waiting is not reported finished;
    - otherwise (every channel final): FAILED if any failed, else STOPPED if any stopped, else COMPLETED.

    A campaign with one channel therefore has that channel's state.
    """
    present = frozenset(channel_states)
    for state in (*_UNFINISHED_PRECEDENCE, ChannelState.FAILED, ChannelState.STOPPED):
        if state in present:
            return CampaignState(state.value)
    return CampaignState.COMPLETED if present else CampaignState.DRAFT


def decide_archive(channel_states: Iterable[ChannelState], archived: bool) -> Decision:
    """Archive is allowed for a campaign not yet archived with no channel in ACTIVE_STATES."""
    if archived:
        return Refused(Reason.ALREADY_ARCHIVED, "the campaign is already archived")
    if not ACTIVE_STATES.isdisjoint(channel_states):
        return Refused(Reason.CAMPAIGN_ACTIVE, "cannot archive a campaign that is scheduled or sending")
    return Allowed(None)


def decide_unarchive(archived: bool) -> Decision:
    """Unarchive is allowed only for an archived campaign."""
    if not archived:
        return Refused(Reason.NOT_ARCHIVED, "the campaign is not archived")
    return Allowed(None)


def decide_delete(channel_states: Iterable[ChannelState], force: bool) -> Decision:
    """Delete a DRAFT campaign freely, any campaign not sending with `force`, never one that is sending."""
    states = frozenset(channel_states)
    if states <= {ChannelState.DRAFT}:
        return Allowed(None)
    # Leases may exist on a sending channel; deleting under them would lose messages in flight.
    if not SENDING_STATES.isdisjoint(states):
        return Refused(Reason.CAMPAIGN_ACTIVE, "cannot delete a campaign that is sending; stop it first")
    if not force:
        return Refused(Reason.FORCE_REQUIRED, "deleting a campaign that has left DRAFT needs force")
    return Allowed(None)


_M = MessageState

MESSAGE_TRANSITIONS: Final[Mapping[MessageState, frozenset[MessageState]]] = MappingProxyType(
    {
        _M.QUEUED: frozenset({_M.SENDING, _M.OPTED_OUT, _M.CANCELLED}),
        # Some providers answer "delivered" at once, skipping SENT. A leased message the gate kept
        # from starting goes back to QUEUED, or to CANCELLED when its channel was stopped meanwhile.
        # One found suppressed (or its contact deleted) as it is leased is OPTED_OUT instead.
        _M.SENDING: frozenset(
            {_M.SENT, _M.DELIVERED, _M.FAILED, _M.RETRYING, _M.QUEUED, _M.CANCELLED, _M.OPTED_OUT}
        ),
        _M.RETRYING: frozenset({_M.SENDING, _M.FAILED, _M.CANCELLED}),
        # A bounce or undeliverable receipt can still arrive after the provider accepted the message;
        # an opt-out reply (an SMS "STOP") answers the message that was sent or delivered.
        _M.SENT: frozenset({_M.DELIVERED, _M.FAILED, _M.ASSUMED_DELIVERED, _M.OPTED_OUT}),
        # An assumption is only a default: a late receipt still counts.
        _M.ASSUMED_DELIVERED: frozenset({_M.DELIVERED, _M.FAILED, _M.OPTED_OUT}),
        # Retry-failed takes a message back. An `ambiguous` failure (its sender's lease expired)
        # also takes the result that sender kept through a storage fault and wrote later, or is
        # CANCELLED when that result was a retry and the channel was stopped or failed meanwhile.
        _M.FAILED: frozenset({_M.QUEUED, _M.SENT, _M.DELIVERED, _M.RETRYING, _M.CANCELLED}),
        _M.DELIVERED: frozenset({_M.OPTED_OUT}),
        _M.OPTED_OUT: frozenset(),
        # Only a restart of a restartable channel type takes a cancelled message back, or leaves it
        # out as OPTED_OUT when its address was suppressed since the launch.
        _M.CANCELLED: frozenset({_M.QUEUED, _M.OPTED_OUT}),
    }
)
"""The legal moves of a message: state -> the states it may move to (§3.3)."""

MESSAGE_FINAL_STATES: Final = frozenset(
    {_M.DELIVERED, _M.FAILED, _M.OPTED_OUT, _M.CANCELLED, _M.ASSUMED_DELIVERED}
)
"""A message here needs nothing more from the engine (late receipts may still refine it)."""

MESSAGE_DONE_STATES: Final = MESSAGE_FINAL_STATES | {_M.SENT}
"""Final or post-send: a channel whose messages are all here is COMPLETED (§3.1)."""


_MESSAGE_SOURCES: Final[Mapping[MessageState, frozenset[MessageState]]] = MappingProxyType(
    {
        to: frozenset(frm for frm, targets in MESSAGE_TRANSITIONS.items() if to in targets)
        for to in MessageState
    }
)


def message_can_move(frm: MessageState, to: MessageState) -> bool:
    """Whether a message may move from `frm` to `to`."""
    return to in MESSAGE_TRANSITIONS[frm]


def message_sources(to: MessageState) -> frozenset[MessageState]:
    """The states from which a message may move to `to`."""
    return _MESSAGE_SOURCES[to]
