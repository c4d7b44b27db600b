"""The conformance kit against the test double; and the kit against plugins broken on purpose,
each of which some of its tests must catch."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import pathlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest

from campaignd.plugin import (
    ChannelInfo,
    ChannelSemantics,
    ChannelType,
    Content,
    EventSink,
    FieldViolation,
    Gate,
    Options,
    Recipient,
    Rendered,
    SendResult,
    SendStatus,
    Transport,
    hookimpl,
)
from campaignd.testing import channels
from campaignd.testing.conformance import ChannelPluginContract, Target

pytest_plugins = ["pytester"]

ADDRESSES = {"email": ["ada@example.org", "grace@example.org"], "phone": ["+14155550100", "+14155550101"]}


def sink_lines(sink: pathlib.Path) -> int:
    """How many sends the double recorded in `sink` as started."""
    return len(sink.read_text(encoding="utf-8").splitlines()) if sink.exists() else 0


def double_target(plugin: object, channel_type: str, tmp_path: pathlib.Path, **changes: Any) -> Target:
    """A target on a test-double type, its `sink` file standing in for the provider."""
    sink = tmp_path / f"{channel_type}.sink"
    target = Target(
        plugin=plugin,
        channel_type=channel_type,
        content={"text": "Your order has shipped.", "sink": str(sink)},
        addresses=ADDRESSES["email" if channel_type == "test-email" else "phone"],
        delivered=lambda: sink_lines(sink),
        renders=False,
    )
    return dataclasses.replace(target, **changes)


class TestDouble(ChannelPluginContract):
    """Each type of campaignd.testing.channels keeps the contract."""

    @pytest.fixture(params=sorted(channels.SEMANTICS))
    def target(self, request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Target:
        """A test-double type, counted at its sink."""
        return double_target(channels, request.param, tmp_path)


# -- broken plugins ---------------------------------------------------------------------------


class Delegate:
    """Hooks that hand every call to a plugin module, so that a subclass can break one of them."""

    def __init__(self, module: object = channels) -> None:
        self.module = module

    def call(self, name: str, default: Any, **arguments: Any) -> Any:
        """The module's answer, given the arguments it names, as pluggy would call it."""
        function = getattr(self.module, name, None)
        if function is None:
            return default
        wanted = inspect.signature(function).parameters
        return function(**{k: v for k, v in arguments.items() if k in wanted})

    @hookimpl
    def campaignd_channel_types(self) -> list[ChannelType]:
        """As the module."""
        answer: list[ChannelType] = self.call("campaignd_channel_types", [])
        return answer

    @hookimpl
    def campaignd_channel_semantics(self, channel_type: str) -> ChannelSemantics | None:
        """As the module."""
        answer: ChannelSemantics | None = self.call(
            "campaignd_channel_semantics", None, channel_type=channel_type
        )
        return answer

    @hookimpl
    def campaignd_validate_options(
        self, channel_type: str, options: Options, transport: str | None
    ) -> list[FieldViolation]:
        """As the module."""
        answer: list[FieldViolation] = self.call(
            "campaignd_validate_options", [], channel_type=channel_type, options=options, transport=transport
        )
        return answer

    @hookimpl
    def campaignd_validate_channel(
        self, channel_type: str, content: Content, launching: bool, options: Options
    ) -> list[FieldViolation]:
        """As the module."""
        answer: list[FieldViolation] = self.call(
            "campaignd_validate_channel",
            [],
            channel_type=channel_type,
            content=content,
            launching=launching,
            options=options,
        )
        return answer

    @hookimpl
    def campaignd_render(
        self, channel_type: str, channel: ChannelInfo, recipient: Recipient, options: Options
    ) -> Rendered | None:
        """As the module."""
        answer: Rendered | None = self.call(
            "campaignd_render",
            None,
            channel_type=channel_type,
            channel=channel,
            recipient=recipient,
            options=options,
        )
        return answer

    @hookimpl
    def campaignd_open_transport(
        self, channel_type: str, transport: Transport, events: EventSink
    ) -> Awaitable[Any] | None:
        """As the module."""
        answer: Awaitable[Any] | None = self.call(
            "campaignd_open_transport", None, channel_type=channel_type, transport=transport, events=events
        )
        return answer

    @hookimpl
    def campaignd_close_transport(
        self, channel_type: str, transport: Transport, client: Any
    ) -> Awaitable[None] | None:
        """As the module."""
        answer: Awaitable[None] | None = self.call(
            "campaignd_close_transport", None, channel_type=channel_type, transport=transport, client=client
        )
        return answer

    @hookimpl
    def campaignd_send(
        self,
        channel_type: str,
        channel: ChannelInfo,
        recipients: Sequence[Recipient],
        gate: Gate,
        transport: Transport | None,
        client: Any,
        options: Options,
    ) -> Awaitable[Sequence[SendResult]] | None:
        """As the module."""
        answer: Awaitable[Sequence[SendResult]] | None = self.call(
            "campaignd_send",
            None,
            channel_type=channel_type,
            channel=channel,
            recipients=recipients,
            gate=gate,
            transport=transport,
            client=client,
            options=options,
        )
        return answer


class Sender(Delegate):
    """A delegate whose send is the coroutine `sending`, for the double's types only."""

    @hookimpl
    def campaignd_send(
        self,
        channel_type: str,
        channel: ChannelInfo,
        recipients: Sequence[Recipient],
        gate: Gate,
        transport: Transport | None,
        client: Any,
        options: Options,
    ) -> Awaitable[Sequence[SendResult]] | None:
        """The double's types: `sending`."""
        if channel_type not in channels.SEMANTICS:
            return None
        return self.sending(channel, recipients, gate)

    async def sending(
        self, channel: ChannelInfo, recipients: Sequence[Recipient], gate: Gate
    ) -> list[SendResult]:
        """Send as the double does."""
        return list(await channels._send(channel.content, recipients, gate))


def _start(channel: ChannelInfo, recipient: Recipient) -> SendResult:
    channels._record(channel.content["sink"], recipient.address)
    return SendResult(recipient.message_id, SendStatus.SENT, provider_id=f"broken-{recipient.message_id}")


class StartsWhenClosed(Sender):
    """Asks the gate, then sends whatever it said."""

    async def sending(
        self, channel: ChannelInfo, recipients: Sequence[Recipient], gate: Gate
    ) -> list[SendResult]:
        """Ignore the answer."""
        results = []
        for recipient in recipients:
            await gate.admit()
            results.append(_start(channel, recipient))
        return results


class SendsBeforeAdmit(Sender):
    """Starts each send, then asks the gate."""

    async def sending(
        self, channel: ChannelInfo, recipients: Sequence[Recipient], gate: Gate
    ) -> list[SendResult]:
        """Ask too late."""
        results = []
        for recipient in recipients:
            result = _start(channel, recipient)
            admitted = await gate.admit()
            results.append(result if admitted else SendResult(recipient.message_id, SendStatus.NOT_STARTED))
        return results


class AdmitsTwice(Sender):
    """Asks the gate twice for each send."""

    async def sending(
        self, channel: ChannelInfo, recipients: Sequence[Recipient], gate: Gate
    ) -> list[SendResult]:
        """Ask twice; send if either said yes."""
        results = []
        for recipient in recipients:
            first, second = await gate.admit(), await gate.admit()
            admitted = first or second
            results.append(
                _start(channel, recipient)
                if admitted
                else SendResult(recipient.message_id, SendStatus.NOT_STARTED)
            )
        return results


class DropsAResult(Sender):
    """Gives no result for the last recipient."""

    async def sending(
        self, channel: ChannelInfo, recipients: Sequence[Recipient], gate: Gate
    ) -> list[SendResult]:
        """One result short."""
        return (await super().sending(channel, recipients, gate))[:-1]


class BlocksTheLoop(Sender):
    """Waits with a blocking call inside its coroutine."""

    async def sending(
        self, channel: ChannelInfo, recipients: Sequence[Recipient], gate: Gate
    ) -> list[SendResult]:
        """Hold the event loop."""
        time.sleep(0.5)  # noqa: ASYNC251 - the defect under test
        return await super().sending(channel, recipients, gate)


class Hangs(Sender):
    """Never finishes a batch."""

    async def sending(
        self, channel: ChannelInfo, recipients: Sequence[Recipient], gate: Gate
    ) -> list[SendResult]:
        """Wait forever."""
        await asyncio.Event().wait()
        return []


class WorksInTheCall(Delegate):
    """Does its slow work in the hook call, before returning the awaitable."""

    @hookimpl
    def campaignd_send(
        self,
        channel_type: str,
        channel: ChannelInfo,
        recipients: Sequence[Recipient],
        gate: Gate,
        transport: Transport | None,
        client: Any,
        options: Options,
    ) -> Awaitable[Sequence[SendResult]] | None:
        """Block, then delegate."""
        if channel_type in channels.SEMANTICS:
            time.sleep(0.5)
        return super().campaignd_send(channel_type, channel, recipients, gate, transport, client, options)


class GivesAList(Delegate):
    """Sends synchronously and returns the results instead of an awaitable."""

    @hookimpl
    def campaignd_send(
        self,
        channel_type: str,
        channel: ChannelInfo,
        recipients: Sequence[Recipient],
        gate: Gate,
        transport: Transport | None,
        client: Any,
        options: Options,
    ) -> Awaitable[Sequence[SendResult]] | None:
        """A list, not an awaitable."""
        if channel_type not in channels.SEMANTICS:
            return None
        return [_start(channel, r) for r in recipients]  # type: ignore[return-value]


class RaisesForForeignTypes(Delegate):
    """Reads the content before checking whose type it is."""

    @hookimpl
    def campaignd_send(
        self,
        channel_type: str,
        channel: ChannelInfo,
        recipients: Sequence[Recipient],
        gate: Gate,
        transport: Transport | None,
        client: Any,
        options: Options,
    ) -> Awaitable[Sequence[SendResult]] | None:
        """Raise KeyError for content without a text."""
        channel.content["text"]
        return super().campaignd_send(channel_type, channel, recipients, gate, transport, client, options)


class AsyncDefSend(Delegate):
    """An `async def` hook: it answers every type with a coroutine."""

    @hookimpl
    async def campaignd_send(  # type: ignore[override]
        self,
        channel_type: str,
        channel: ChannelInfo,
        recipients: Sequence[Recipient],
        gate: Gate,
        transport: Transport | None,
        client: Any,
        options: Options,
    ) -> Sequence[SendResult] | None:
        """Send the double's types; None, too late, for others."""
        if channel_type not in channels.SEMANTICS:
            return None
        return list(await channels._send(channel.content, recipients, gate))


class RepeatsAField(Delegate):
    """Declares a content field twice."""

    @hookimpl
    def campaignd_channel_types(self) -> list[ChannelType]:
        """The double's types, one with `text` twice."""
        return [
            dataclasses.replace(t, fields=(*t.fields, t.fields[0])) if t.name == "test-sms" else t
            for t in channels.campaignd_channel_types()
        ]


class Misspelled(Delegate):
    """Has a function named like a hook that is none."""

    def campaignd_sned(self) -> None:
        """A typo pluggy would never call."""


class NamesAnUnknownArgument(Delegate):
    """A hook implementation that asks for an argument the hook does not have."""

    @hookimpl
    def campaignd_channel_semantics(self, channel_type: str, priority: int) -> ChannelSemantics | None:  # type: ignore[override]
        """Never callable by the daemon."""
        return channels.campaignd_channel_semantics(channel_type)


class NoSemantics(Delegate):
    """Answers nothing about its own types' lifecycle."""

    @hookimpl
    def campaignd_channel_semantics(self, channel_type: str) -> ChannelSemantics | None:
        """None for every type."""
        return None


class RefusesValidContent(Delegate):
    """Finds a problem in any content."""

    @hookimpl
    def campaignd_validate_channel(
        self, channel_type: str, content: Content, launching: bool, options: Options
    ) -> list[FieldViolation]:
        """Always a problem with the text."""
        return [FieldViolation("text", "never good enough")] if channel_type in channels.SEMANTICS else []


class NamesAnUndeclaredField(Delegate):
    """Reports a problem with a field its type does not declare."""

    @hookimpl
    def campaignd_validate_channel(
        self, channel_type: str, content: Content, launching: bool, options: Options
    ) -> list[FieldViolation]:
        """Empty content: a problem with `body`, which no double type has."""
        return (
            [FieldViolation("body", "missing")] if channel_type in channels.SEMANTICS and not content else []
        )


class CrashesOnMalformedContent(Delegate):
    """Assumes the declared checks passed before it is called."""

    @hookimpl
    def campaignd_validate_channel(
        self, channel_type: str, content: Content, launching: bool, options: Options
    ) -> list[FieldViolation]:
        """Strip the text, whatever it is."""
        if channel_type in channels.SEMANTICS and not str.strip(content.get("text", "")):
            return [FieldViolation("text", "blank")]
        return []


class RefusesItsOptions(Delegate):
    """Refuses any options table of its types."""

    @hookimpl
    def campaignd_validate_options(
        self, channel_type: str, options: Options, transport: str | None
    ) -> list[FieldViolation]:
        """Always a problem."""
        return [FieldViolation("region", "unknown")] if channel_type in channels.SEMANTICS else []


class RenderReachesPeer(Delegate):
    """Renders by sending the message."""

    @hookimpl
    def campaignd_render(
        self, channel_type: str, channel: ChannelInfo, recipient: Recipient, options: Options
    ) -> Rendered | None:
        """Send, then describe."""
        if channel_type not in channels.SEMANTICS:
            return None
        _start(channel, recipient)
        return Rendered(summary=channel.content["text"], text=channel.content["text"])


R = "test_registers_with_the_daemon"
W = "test_channel_types_are_well_formed"
S = "test_semantics_answered_for_own_types"
F = "test_foreign_type_gets_no_answer"
O = "test_options_are_accepted"  # noqa: E741 - one of the kit's tests, by initial like the others
V = "test_valid_content_is_accepted"
E = "test_empty_content_is_refused_at_launch"
M = "test_malformed_content_does_not_raise"
P = "test_render_previews_a_message"
AT_ONCE = "test_send_returns_an_awaitable_at_once"
ONE_EACH = "test_every_recipient_gets_one_result"
CLOSED = "test_closed_gate_starts_nothing"
SOME = "test_gate_admitting_some_starts_exactly_those"
BEFORE = "test_admit_is_awaited_before_each_start"
LOOP = "test_sending_keeps_the_event_loop_free"
SENDING = {AT_ONCE, ONE_EACH, CLOSED, SOME, BEFORE, LOOP}
FITS = "test_contract_fits_the_type"
KIT = {R, W, FITS, S, F, O, V, E, M, P} | SENDING

# Each defect: the plugin, the Target's changes, and the kit tests that must fail, no more.
DEFECTS: dict[str, tuple[Callable[[], object], dict[str, Any], set[str]]] = {
    "faithful": (Delegate, {}, set()),
    "starts when the gate is closed": (StartsWhenClosed, {}, {CLOSED, SOME}),
    "sends before it asks the gate": (SendsBeforeAdmit, {}, {CLOSED, SOME, BEFORE}),
    "asks the gate twice per send": (AdmitsTwice, {}, {SOME, BEFORE}),
    "drops a result": (DropsAResult, {}, SENDING),
    "blocks the event loop": (BlocksTheLoop, {}, {LOOP}),
    "never finishes": (Hangs, {}, SENDING),
    "works in the hook call": (WorksInTheCall, {}, {AT_ONCE, LOOP}),
    "gives a list, not an awaitable": (GivesAList, {}, SENDING),
    "raises for foreign types": (RaisesForForeignTypes, {}, {F}),
    "async def send": (AsyncDefSend, {}, {F}),
    "declares a field twice": (RepeatsAField, {}, {W}),
    "misspells a hook": (Misspelled, {}, {R}),
    "names an unknown argument": (NamesAnUnknownArgument, {}, KIT),
    "answers no semantics": (NoSemantics, {}, {S}),
    "refuses valid content": (RefusesValidContent, {}, {V}),
    "names an undeclared field": (NamesAnUndeclaredField, {}, {E}),
    "crashes on malformed content": (CrashesOnMalformedContent, {}, {M}),
    "refuses its options": (RefusesItsOptions, {}, KIT - {R}),
    "renders nothing though it claims to": (Delegate, {"renders": True}, {P}),
    "renders by sending": (RenderReachesPeer, {"renders": True}, {P}),
}


def broken_target(defect: str, tmp_path: pathlib.Path) -> Target:
    """The target of the plugin with `defect`, on type test-sms."""
    plugin, changes, _ = DEFECTS[defect]
    return double_target(plugin(), "test-sms", tmp_path, **changes)


def run_kit(pytester: pytest.Pytester, source: str) -> dict[str, tuple[set[str], set[str]]]:
    """Run `source` as a pytest session of its own; for each test class, the names of its tests
    that failed and of those that passed."""
    pytester.makepyfile(test_kit=source)
    recorder = pytester.inline_run("-p", "no:cacheprovider")
    outcomes: dict[str, tuple[set[str], set[str]]] = {}
    for report in recorder.getreports("pytest_runtest_logreport"):
        assert not report.skipped, f"{report.nodeid} was skipped"
        _, cls, test = report.nodeid.split("::")
        failed, passed = outcomes.setdefault(cls, (set(), set()))
        if report.failed:
            failed.add(test)
        elif report.when == "call":
            passed.add(test)
    return outcomes


KIT_HEADER = """
import pytest
from campaignd.testing.conformance import ChannelPluginContract
from tests.integration.test_conformance_double import broken_target
"""
KIT_CLASS = """
class TestKit{index}(ChannelPluginContract):
    result_timeout = 0.5
    settle = 0.05

    @pytest.fixture
    def target(self, tmp_path):
        return broken_target({defect!r}, tmp_path)
"""


@pytest.mark.slow
def test_kit_catches_each_defect(pytester: pytest.Pytester) -> None:
    """For each broken plugin the kit fails exactly the tests whose clause it breaks, and passes
    the rest."""
    classes = "".join(KIT_CLASS.format(index=i, defect=d) for i, d in enumerate(DEFECTS))
    outcomes = run_kit(pytester, KIT_HEADER + classes)
    found = {defect: outcomes[f"TestKit{i}"] for i, defect in enumerate(DEFECTS)}
    wrong = {
        defect: {"expected to fail": sorted(expected), "failed": sorted(found[defect][0])}
        for defect, (*_, expected) in DEFECTS.items()
        if found[defect] != (expected, KIT - expected)
    }
    assert not wrong


def test_every_kit_test_catches_a_defect() -> None:
    """Each test of the base contract fails for at least one broken plugin (the one that checks
    the contract class is caught in test_conformance_webhook)."""
    caught = set().union(*(expected for *_, expected in DEFECTS.values() if expected != KIT))
    assert caught | {FITS} == KIT
    assert {name for name in dir(ChannelPluginContract) if name.startswith("test_")} == KIT
