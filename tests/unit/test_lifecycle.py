"""The lifecycle state machine: channel transitions, campaign derivation and message moves (SPEC §3)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from campaignd.lifecycle import (
    ACTIVE_STATES,
    DEFAULT_SEMANTICS,
    FINAL_STATES,
    MESSAGE_DONE_STATES,
    MESSAGE_FINAL_STATES,
    MESSAGE_TRANSITIONS,
    OPERATOR_OPERATIONS,
    SENDING_STATES,
    Allowed,
    CampaignState,
    ChannelSemantics,
    ChannelState,
    Decision,
    EditPolicy,
    MessageState,
    Operation,
    Reason,
    Refused,
    allowed_operations,
    decide,
    decide_archive,
    decide_delete,
    decide_for_campaign,
    decide_unarchive,
    derive_campaign_state,
    message_can_move,
    message_sources,
)

D, SC, Q, R, P, C, ST, F = (
    ChannelState.DRAFT,
    ChannelState.SCHEDULED,
    ChannelState.QUEUED,
    ChannelState.RUNNING,
    ChannelState.PAUSED,
    ChannelState.COMPLETED,
    ChannelState.STOPPED,
    ChannelState.FAILED,
)
Op = Operation

EMAIL = ChannelSemantics()
SMS = ChannelSemantics(restartable=True, edit_while_scheduled=EditPolicy.SCHEDULE_ONLY)
VOICE = ChannelSemantics(restartable=False, edit_while_scheduled=EditPolicy.SETTINGS_AND_SCHEDULE)

# Written from SPEC §3.1 and §3.4, independently of the module's own table: every legal
# (state, operation) pair under default (email-like) semantics and the state it leads to.
EXPECTED: dict[tuple[ChannelState, Operation], ChannelState | None] = {
    (D, Op.EDIT): None,
    (D, Op.DELETE): None,
    (D, Op.TEST_SEND): None,
    (D, Op.ESTIMATE): None,
    (D, Op.SCHEDULE): SC,
    (D, Op.LAUNCH): Q,
    (SC, Op.EDIT): D,
    (SC, Op.SCHEDULE): None,
    (SC, Op.UNSCHEDULE): D,
    (SC, Op.LAUNCH): Q,
    (SC, Op.START): Q,
    (SC, Op.FAIL): F,
    (Q, Op.PAUSE): P,
    (Q, Op.STOP): ST,
    (Q, Op.ACTIVATE): R,
    (Q, Op.FAIL): F,
    (Q, Op.GUARD_PAUSE): P,
    (R, Op.PAUSE): P,
    (R, Op.STOP): ST,
    (R, Op.COMPLETE): C,
    (R, Op.FAIL): F,
    (R, Op.GUARD_PAUSE): P,
    (P, Op.RESUME): R,
    (P, Op.STOP): ST,
    (P, Op.FAIL): F,
    (C, Op.RETRY_FAILED): R,
}

ALL_PAIRS = list(itertools.product(ChannelState, Operation))


def _expected_refusal(state: ChannelState, op: Operation) -> Reason:
    if op is Op.EDIT:
        return Reason.EDIT_NOT_ALLOWED
    if op is Op.RESTART and state is ST:
        return Reason.RESTART_NOT_SUPPORTED
    return Reason.ILLEGAL_TRANSITION


@pytest.mark.parametrize(("state", "op"), ALL_PAIRS, ids=[f"{s.name}-{o.name}" for s, o in ALL_PAIRS])
def test_transition_table(state: ChannelState, op: Operation) -> None:
    """Each (state, operation) pair is allowed to the expected target or refused with the expected reason."""
    decision = decide(state, op)
    if (state, op) in EXPECTED:
        assert decision == Allowed(EXPECTED[state, op])
    else:
        assert isinstance(decision, Refused)
        assert decision.reason is _expected_refusal(state, op)
        assert decision.message


def test_illegal_transition_message_names_operation_and_state() -> None:
    """A refusal reads as one sentence naming the operation and the state."""
    assert decide(D, Op.PAUSE) == Refused(Reason.ILLEGAL_TRANSITION, "cannot pause a channel in DRAFT")
    assert decide(R, Op.RETRY_FAILED) == Refused(
        Reason.ILLEGAL_TRANSITION, "cannot retry failed a channel in RUNNING"
    )


def test_reason_values_equal_names() -> None:
    """Reason values are their UPPER_SNAKE names, as sent in gRPC ErrorInfo."""
    assert all(reason.value == reason.name for reason in Reason)


def test_state_and_operation_values_are_lowercase_names() -> None:
    """Enum values are the lowercase member names."""
    for enum_type in (ChannelState, CampaignState, MessageState, Operation):
        assert all(member.value == member.name.lower() for member in enum_type)


def test_campaign_and_channel_states_match() -> None:
    """CampaignState has exactly the channel states."""
    assert [s.value for s in CampaignState] == [s.value for s in ChannelState]


def test_email_edit_while_scheduled_returns_to_draft() -> None:
    """Email-like channels go back to DRAFT when edited while SCHEDULED, whatever the fields."""
    assert decide(SC, Op.EDIT, EMAIL, edit_fields=frozenset({"content"})) == Allowed(D)


def test_email_is_not_restartable() -> None:
    """Email-like channels refuse restart from STOPPED."""
    decision = decide(ST, Op.RESTART, EMAIL)
    assert isinstance(decision, Refused)
    assert decision.reason is Reason.RESTART_NOT_SUPPORTED


@pytest.mark.parametrize(
    "fields", [frozenset(), frozenset({"schedule_time"})], ids=["no-fields", "schedule-time"]
)
def test_sms_schedule_only_edit_allows_schedule(fields: frozenset[str]) -> None:
    """SMS-like channels accept an edit of the schedule alone while SCHEDULED and stay SCHEDULED."""
    assert decide(SC, Op.EDIT, SMS, edit_fields=fields) == Allowed(None)


@pytest.mark.parametrize(
    "fields",
    [frozenset({"content"}), frozenset({"schedule_time", "rate_limit"})],
    ids=["content", "schedule-and-rate"],
)
def test_sms_schedule_only_edit_refuses_other_fields(fields: frozenset[str]) -> None:
    """SMS-like channels refuse editing anything but the schedule while SCHEDULED."""
    decision = decide(SC, Op.EDIT, SMS, edit_fields=fields)
    assert isinstance(decision, Refused)
    assert decision.reason is Reason.EDIT_NOT_ALLOWED


def test_sms_restart_from_stopped_runs_again() -> None:
    """SMS-like channels restart from STOPPED to RUNNING."""
    assert decide(ST, Op.RESTART, SMS) == Allowed(R)


@pytest.mark.parametrize("state", [s for s in ChannelState if s is not ST], ids=lambda s: s.name)
def test_restartable_still_needs_stopped(state: ChannelState) -> None:
    """Restart is an illegal transition outside STOPPED even for restartable types."""
    decision = decide(state, Op.RESTART, SMS)
    assert isinstance(decision, Refused)
    assert decision.reason is Reason.ILLEGAL_TRANSITION


def test_voice_edit_while_scheduled_keeps_schedule() -> None:
    """Voice-like channels accept settings edits while SCHEDULED and stay SCHEDULED."""
    assert decide(SC, Op.EDIT, VOICE, edit_fields=frozenset({"content", "schedule_time"})) == Allowed(None)


def test_voice_is_not_restartable() -> None:
    """Voice-like channels refuse restart from STOPPED."""
    decision = decide(ST, Op.RESTART, VOICE)
    assert isinstance(decision, Refused)
    assert decision.reason is Reason.RESTART_NOT_SUPPORTED


@pytest.mark.parametrize("semantics", [EMAIL, SMS, VOICE], ids=["email", "sms", "voice"])
@pytest.mark.parametrize("state", [s for s in ChannelState if s not in (D, SC)], ids=lambda s: s.name)
def test_edit_refused_after_launch_for_every_type(state: ChannelState, semantics: ChannelSemantics) -> None:
    """No channel type allows editing once it has left DRAFT and SCHEDULED."""
    decision = decide(state, Op.EDIT, semantics, edit_fields=frozenset({"schedule_time"}))
    assert isinstance(decision, Refused)
    assert decision.reason is Reason.EDIT_NOT_ALLOWED


@pytest.mark.parametrize("semantics", [SMS, VOICE], ids=["sms", "voice"])
def test_semantics_change_only_edit_and_restart(semantics: ChannelSemantics) -> None:
    """Channel semantics alter only EDIT in SCHEDULED and RESTART in STOPPED."""
    for state, op in ALL_PAIRS:
        if (state, op) not in {(SC, Op.EDIT), (ST, Op.RESTART)}:
            assert decide(state, op, semantics) == decide(state, op, DEFAULT_SEMANTICS)


@pytest.mark.parametrize(("state", "op"), [(D, Op.LAUNCH), (C, Op.RETRY_FAILED), (D, Op.ESTIMATE)])
def test_archived_campaign_refuses_channel_operations(state: ChannelState, op: Operation) -> None:
    """Operations on a channel of an archived campaign are refused with ARCHIVED."""
    decision = decide(state, op, archived=True)
    assert isinstance(decision, Refused)
    assert decision.reason is Reason.ARCHIVED


def test_allowed_operations_per_state_for_defaults() -> None:
    """allowed_operations lists the operator operations of §3.1 for each state."""
    assert allowed_operations(D) == {
        Op.EDIT,
        Op.DELETE,
        Op.TEST_SEND,
        Op.ESTIMATE,
        Op.SCHEDULE,
        Op.LAUNCH,
    }
    assert allowed_operations(SC) == {Op.EDIT, Op.SCHEDULE, Op.UNSCHEDULE, Op.LAUNCH}
    assert allowed_operations(Q) == {Op.PAUSE, Op.STOP}
    assert allowed_operations(R) == {Op.PAUSE, Op.STOP}
    assert allowed_operations(P) == {Op.RESUME, Op.STOP}
    assert allowed_operations(C) == {Op.RETRY_FAILED}
    assert allowed_operations(ST) == frozenset()
    assert allowed_operations(F) == frozenset()


def test_allowed_operations_follow_semantics() -> None:
    """allowed_operations offers restart only to restartable types."""
    assert allowed_operations(ST, SMS) == {Op.RESTART}
    assert allowed_operations(ST, VOICE) == frozenset()
    assert Op.EDIT in allowed_operations(SC, SMS)


@pytest.mark.parametrize("state", list(ChannelState), ids=lambda s: s.name)
def test_allowed_operations_never_include_daemon_operations(state: ChannelState) -> None:
    """allowed_operations never offers an operation only the daemon makes."""
    assert allowed_operations(state, SMS) <= OPERATOR_OPERATIONS
    assert {Op.START, Op.ACTIVATE, Op.COMPLETE, Op.FAIL, Op.GUARD_PAUSE}.isdisjoint(OPERATOR_OPERATIONS)


def test_decide_for_campaign_skips_channels_it_does_not_apply_to() -> None:
    """A campaign-level operation acts on the channels it is legal for and skips the others."""
    plan = decide_for_campaign(Op.PAUSE, {"mail": (R, EMAIL), "text": (C, SMS), "call": (Q, VOICE)})
    assert plan == {"mail": Allowed(P), "call": Allowed(P)}


@pytest.mark.parametrize(
    "channels", [{}, {"mail": (C, EMAIL), "text": (ST, EMAIL)}], ids=["no-channels", "none-applies"]
)
def test_decide_for_campaign_with_nothing_to_do(
    channels: dict[str, tuple[ChannelState, ChannelSemantics]],
) -> None:
    """A campaign-level operation legal for none of its channels is refused with NOTHING_TO_DO."""
    decision = decide_for_campaign(Op.PAUSE, channels)
    assert isinstance(decision, Refused)
    assert decision.reason is Reason.NOTHING_TO_DO


def test_decide_for_campaign_when_archived() -> None:
    """A campaign-level operation on an archived campaign is refused with ARCHIVED."""
    decision = decide_for_campaign(Op.LAUNCH, {"mail": (D, EMAIL)}, archived=True)
    assert isinstance(decision, Refused)
    assert decision.reason is Reason.ARCHIVED


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ([], CampaignState.DRAFT),
        ([D, D], CampaignState.DRAFT),
        ([R, Q, P, SC, D, C, ST, F], CampaignState.RUNNING),
        ([Q, P, SC, D, F], CampaignState.QUEUED),
        ([P, SC, D, C], CampaignState.PAUSED),
        ([SC, D, ST], CampaignState.SCHEDULED),
        ([D, C, F], CampaignState.DRAFT),
        ([C, ST, F], CampaignState.FAILED),
        ([C, ST], CampaignState.STOPPED),
        ([C, C], CampaignState.COMPLETED),
    ],
    ids=[
        "empty",
        "all-draft",
        "running-wins",
        "queued-over-paused",
        "paused-over-scheduled",
        "scheduled-over-draft",
        "draft-over-final",
        "failed-over-stopped",
        "stopped-over-completed",
        "all-completed",
    ],
)
def test_derive_campaign_state_precedence(states: list[ChannelState], expected: CampaignState) -> None:
    """The campaign state follows the documented precedence over channel states."""
    assert derive_campaign_state(states) is expected


@given(st.lists(st.sampled_from(ChannelState), max_size=8))
def test_derive_campaign_state_is_total(states: list[ChannelState]) -> None:
    """Any list of channel states, including none, gives a campaign state."""
    assert isinstance(derive_campaign_state(states), CampaignState)


@given(st.lists(st.sampled_from(ChannelState), max_size=6), st.data())
def test_derive_campaign_state_ignores_order(states: list[ChannelState], data: st.DataObject) -> None:
    """Permuting the channels does not change the campaign state."""
    permuted = data.draw(st.permutations(states))
    assert derive_campaign_state(states) is derive_campaign_state(permuted)


@given(st.sampled_from(ChannelState))
def test_single_channel_campaign_has_channel_state(state: ChannelState) -> None:
    """A campaign with one channel has that channel's state."""
    assert derive_campaign_state([state]).value == state.value


def test_derive_campaign_state_accepts_a_generator() -> None:
    """The channel states may come from a one-shot iterable."""
    assert derive_campaign_state(s for s in (C, F)) is CampaignState.FAILED


def test_state_groups() -> None:
    """The state groups are the ones §3 names."""
    assert {SC, Q, R, P} == ACTIVE_STATES
    assert {Q, R, P} == SENDING_STATES
    assert {C, ST, F} == FINAL_STATES


@pytest.mark.parametrize(
    ("states", "archived", "expected"),
    [
        ([], False, Allowed(None)),
        ([D, C, ST, F], False, Allowed(None)),
        ([C], True, Reason.ALREADY_ARCHIVED),
        ([C, SC], False, Reason.CAMPAIGN_ACTIVE),
        ([Q], False, Reason.CAMPAIGN_ACTIVE),
        ([R, C], False, Reason.CAMPAIGN_ACTIVE),
        ([P], False, Reason.CAMPAIGN_ACTIVE),
    ],
    ids=["empty", "idle", "already", "scheduled", "queued", "running", "paused"],
)
def test_decide_archive(states: list[ChannelState], archived: bool, expected: Allowed | Reason) -> None:
    """Archive is refused for an archived campaign or one with a scheduled or sending channel."""
    _assert_decision(decide_archive(states, archived), expected)


def test_decide_unarchive() -> None:
    """Unarchive is allowed only for an archived campaign."""
    assert decide_unarchive(True) == Allowed(None)
    _assert_decision(decide_unarchive(False), Reason.NOT_ARCHIVED)


@pytest.mark.parametrize(
    ("states", "force", "expected"),
    [
        ([], False, Allowed(None)),
        ([D, D], False, Allowed(None)),
        ([D, C], False, Reason.FORCE_REQUIRED),
        ([SC], False, Reason.FORCE_REQUIRED),
        ([C, ST, F, SC, D], True, Allowed(None)),
        ([Q], True, Reason.CAMPAIGN_ACTIVE),
        ([R, D], True, Reason.CAMPAIGN_ACTIVE),
        ([P], False, Reason.CAMPAIGN_ACTIVE),
    ],
    ids=[
        "empty",
        "all-draft",
        "finished-no-force",
        "scheduled-no-force",
        "not-sending-force",
        "queued-force",
        "running-force",
        "paused",
    ],
)
def test_decide_delete(states: list[ChannelState], force: bool, expected: Allowed | Reason) -> None:
    """Delete is free in DRAFT, needs force after, and is refused while any channel is sending."""
    _assert_decision(decide_delete(iter(states), force), expected)


def _assert_decision(decision: Decision, expected: Allowed | Reason) -> None:
    if isinstance(expected, Allowed):
        assert decision == expected
    else:
        assert isinstance(decision, Refused)
        assert decision.reason is expected


M = MessageState
EXPECTED_MESSAGE_MOVES = {
    (M.QUEUED, M.SENDING),
    (M.QUEUED, M.OPTED_OUT),
    (M.QUEUED, M.CANCELLED),
    (M.SENDING, M.SENT),
    (M.SENDING, M.DELIVERED),
    (M.SENDING, M.FAILED),
    (M.SENDING, M.RETRYING),
    (M.SENDING, M.QUEUED),
    (M.SENDING, M.CANCELLED),
    (M.SENDING, M.OPTED_OUT),
    (M.RETRYING, M.SENDING),
    (M.RETRYING, M.FAILED),
    (M.RETRYING, M.CANCELLED),
    (M.SENT, M.DELIVERED),
    (M.SENT, M.FAILED),
    (M.SENT, M.ASSUMED_DELIVERED),
    (M.ASSUMED_DELIVERED, M.DELIVERED),
    (M.ASSUMED_DELIVERED, M.FAILED),
    # An opt-out reply answers a message that was sent or delivered.
    (M.SENT, M.OPTED_OUT),
    (M.ASSUMED_DELIVERED, M.OPTED_OUT),
    (M.DELIVERED, M.OPTED_OUT),
    (M.FAILED, M.QUEUED),
    (M.FAILED, M.SENT),
    (M.FAILED, M.DELIVERED),
    (M.FAILED, M.RETRYING),
    # A kept result that retries an ambiguous failure on a channel stopped meanwhile.
    (M.FAILED, M.CANCELLED),
    (M.CANCELLED, M.QUEUED),
    # A restart leaves out numbers suppressed since the launch.
    (M.CANCELLED, M.OPTED_OUT),
}
MESSAGE_PAIRS = list(itertools.product(MessageState, MessageState))


@pytest.mark.parametrize(("frm", "to"), MESSAGE_PAIRS, ids=[f"{a.name}-{b.name}" for a, b in MESSAGE_PAIRS])
def test_message_moves(frm: MessageState, to: MessageState) -> None:
    """A message may make exactly the moves of §3.3."""
    assert message_can_move(frm, to) is ((frm, to) in EXPECTED_MESSAGE_MOVES)


@pytest.mark.parametrize("to", list(MessageState), ids=[s.name for s in MessageState])
def test_message_sources_are_the_moves_into_a_state(to: MessageState) -> None:
    """The states a message may come to `to` from are exactly those whose moves include it."""
    assert message_sources(to) == {frm for frm in MessageState if (frm, to) in EXPECTED_MESSAGE_MOVES}


def test_message_transitions_cover_every_state() -> None:
    """Every message state has an entry in the transition map."""
    assert set(MESSAGE_TRANSITIONS) == set(MessageState)


def test_final_messages_have_no_exits_but_retry() -> None:
    """Final states leave only by retry-failed, restart (CANCELLED -> QUEUED, or OPTED_OUT when
    suppressed since), a late receipt, an opt-out reply, or a kept result written over an
    ambiguous failure."""
    exits = {state: MESSAGE_TRANSITIONS[state] for state in MESSAGE_FINAL_STATES}
    assert exits == {
        M.DELIVERED: {M.OPTED_OUT},
        M.OPTED_OUT: frozenset(),
        M.CANCELLED: {M.QUEUED, M.OPTED_OUT},
        M.FAILED: {M.QUEUED, M.SENT, M.DELIVERED, M.RETRYING, M.CANCELLED},
        M.ASSUMED_DELIVERED: {M.DELIVERED, M.FAILED, M.OPTED_OUT},
    }


def test_message_state_groups() -> None:
    """Done states are the final states plus SENT."""
    assert {M.DELIVERED, M.FAILED, M.OPTED_OUT, M.CANCELLED, M.ASSUMED_DELIVERED} == MESSAGE_FINAL_STATES
    assert MESSAGE_FINAL_STATES | {M.SENT} == MESSAGE_DONE_STATES
