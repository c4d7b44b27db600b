"""The example webhook channel of docs/plugins.md, run as the page shows it: it passes the
conformance kit, ruff and mypy --strict; and copies of it broken on purpose fail the kit's
transport tests."""

from __future__ import annotations

import dataclasses
import pathlib
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Sequence
from typing import Any

import pytest

from campaignd.plugin import (
    ChannelInfo,
    EventKind,
    EventSink,
    Gate,
    InboundEvent,
    Options,
    Recipient,
    SendResult,
    Transport,
    hookimpl,
)
from campaignd.testing.conformance import TransportChannelContract
from tests.integration.test_conformance_double import DEFECTS, FITS, KIT, SENDING, Delegate, run_kit

pytest_plugins = ["pytester"]

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "plugins.md"
OPEN_CLOSE = "test_transport_opens_and_closes"
CONCURRENCY = "test_concurrency_stays_within_the_transport"
UNREACHABLE = "test_unreachable_transport_is_reported_down"
TRANSPORT_KIT = KIT | {OPEN_CLOSE, CONCURRENCY, UNREACHABLE}


def example(path: str) -> str:
    """The code block that docs/plugins.md shows as the example's file `path`."""
    text = DOC.read_text(encoding="utf-8")
    found = re.search(rf"<!-- example: {re.escape(path)} -->\n```python\n(.*?)```", text, re.DOTALL)
    assert found is not None, f"{DOC.name} shows no {path}"
    return found.group(1)


def write_plugin(directory: pathlib.Path) -> None:
    """The example's plugin package in `directory`."""
    package = directory / "campaignd_webhook"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "plugin.py").write_text(example("campaignd_webhook/plugin.py"), encoding="utf-8")


# -- broken copies of the example -------------------------------------------------------------


class IgnoresConcurrency(Delegate):
    """Opens its transports with room for a hundred requests at once."""

    @hookimpl
    def campaignd_open_transport(
        self, channel_type: str, transport: Transport, events: EventSink
    ) -> Awaitable[Any] | None:
        """Open as if the transport allowed 100 sends in flight."""
        wide = dataclasses.replace(transport, concurrency=100)
        return super().campaignd_open_transport(channel_type, wide, events)


class BlocksWhileOpening(Delegate):
    """Opens its transports with a blocking call."""

    @hookimpl
    def campaignd_open_transport(
        self, channel_type: str, transport: Transport, events: EventSink
    ) -> Awaitable[Any] | None:
        """Hold the event loop, then open."""
        opening = super().campaignd_open_transport(channel_type, transport, events)
        return None if opening is None else self.slowly(opening)

    async def slowly(self, opening: Awaitable[Any]) -> Any:
        """Block first."""
        time.sleep(0.5)  # noqa: ASYNC251 - the defect under test
        return await opening


class ReportsForeignEvents(Delegate):
    """Reports an event for a channel type that is not its own."""

    @hookimpl
    def campaignd_open_transport(
        self, channel_type: str, transport: Transport, events: EventSink
    ) -> Awaitable[Any] | None:
        """Report, then open."""
        opening = super().campaignd_open_transport(channel_type, transport, events)
        return None if opening is None else self.reporting(opening, events)

    async def reporting(self, opening: Awaitable[Any], events: EventSink) -> Any:
        """An `sms` event from a webhook transport."""
        await events.record("sms", [InboundEvent(EventKind.OPENED, provider_id="req-1")])
        return await opening


class ClosesNothing(Delegate):
    """Answers None when asked to close its own transport."""

    @hookimpl
    def campaignd_close_transport(
        self, channel_type: str, transport: Transport, client: Any
    ) -> Awaitable[None] | None:
        """None for every type."""
        return None


class RaisesWhenUnreachable(Delegate):
    """Raises when the endpoint cannot be reached, instead of reporting it."""

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
        """Send, then raise if any send found the transport down."""
        sending = super().campaignd_send(channel_type, channel, recipients, gate, transport, client, options)
        return None if sending is None else self.raising(sending)

    async def raising(self, sending: Awaitable[Sequence[SendResult]]) -> Sequence[SendResult]:
        """Turn transport_down into an exception."""
        results = await sending
        if any(r.transport_down for r in results):
            raise ConnectionRefusedError("the endpoint is down")
        return results


BROKEN: dict[str, tuple[type[Delegate], set[str]]] = {
    "ignores the transport's concurrency": (IgnoresConcurrency, {CONCURRENCY}),
    "blocks while opening": (BlocksWhileOpening, {OPEN_CLOSE}),
    "reports another type's events": (ReportsForeignEvents, SENDING | {OPEN_CLOSE, CONCURRENCY, UNREACHABLE}),
    "closes nothing": (ClosesNothing, SENDING | {OPEN_CLOSE, CONCURRENCY, UNREACHABLE}),
    "raises when unreachable": (RaisesWhenUnreachable, {UNREACHABLE}),
}


def broken(defect: str, plugin: object) -> Delegate:
    """The example's plugin with `defect`."""
    return BROKEN[defect][0](plugin)


BROKEN_HEADER = """

import sys as _sys

from campaignd.testing.conformance import ChannelPluginContract as _ChannelPluginContract
from tests.integration.test_conformance_webhook import broken as _broken


class TestBaseContract(_ChannelPluginContract):
    settle = 0.05
    target = TestWebhook.target
"""
BROKEN_CLASS = """

class TestKit{index}(TestWebhook):
    settle = 0.05

    @pytest.fixture(autouse=True)
    def _broken_plugin(self, monkeypatch):
        monkeypatch.setattr(_sys.modules[__name__], "plugin", _broken({defect!r}, plugin))
"""


@pytest.mark.slow
def test_example_passes_the_kit_and_its_broken_copies_do_not(pytester: pytest.Pytester) -> None:
    """The example passes every test of TransportChannelContract; a transport type checked with
    the base contract fails only the test of the contract class; each broken copy fails exactly
    the tests whose clause it breaks."""
    classes = "".join(BROKEN_CLASS.format(index=i, defect=d) for i, d in enumerate(BROKEN))
    write_plugin(pytester.path)
    outcomes = run_kit(pytester, example("tests/test_conformance.py") + BROKEN_HEADER + classes)
    assert outcomes["TestWebhook"] == (set(), TRANSPORT_KIT)
    assert outcomes["TestBaseContract"] == ({FITS}, KIT - {FITS})
    found = {defect: outcomes[f"TestKit{i}"] for i, defect in enumerate(BROKEN)}
    wrong = {
        defect: {"expected to fail": sorted(expected), "failed": sorted(found[defect][0])}
        for defect, (_, expected) in BROKEN.items()
        if found[defect] != (expected, TRANSPORT_KIT - expected)
    }
    assert not wrong


def test_every_transport_test_catches_a_defect() -> None:
    """With the broken test doubles, every test of TransportChannelContract fails for some plugin."""
    caught = {FITS}.union(*(expected for _, expected in BROKEN.values()))
    caught |= set().union(*(expected for *_, expected in DEFECTS.values() if expected != KIT))
    assert caught == TRANSPORT_KIT
    assert {name for name in dir(TransportChannelContract) if name.startswith("test_")} == TRANSPORT_KIT


@pytest.mark.slow
def test_example_lints_and_type_checks(tmp_path: pathlib.Path) -> None:
    """The example's files pass ruff (check and format, with this repository's settings) and
    mypy --strict."""
    write_plugin(tmp_path)
    (tmp_path / "test_conformance.py").write_text(example("tests/test_conformance.py"), encoding="utf-8")
    files = ["campaignd_webhook", "test_conformance.py"]
    config = str(ROOT / "pyproject.toml")
    commands = [
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--config", config, *files],
        [sys.executable, "-m", "ruff", "format", "--check", "--no-cache", "--config", config, *files],
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / ".mypy_cache"), *files],
    ]
    for command in commands:
        done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"{' '.join(command[2:4])}:\n{done.stdout}{done.stderr}"
