"""The conformance kit: pytest tests that check a channel plugin against the hook contract.

Subclass a contract and give it a `target` fixture: the plugin, one of its channel types, valid
content, sample addresses, and a way to count what the receiving end got::

    import pytest
    from campaignd.testing.conformance import ChannelPluginContract, Target

    class TestMyChannel(ChannelPluginContract):
        @pytest.fixture
        def target(self, tmp_path):
            peer = ...  # a local stand-in for the provider, counting what it receives
            return Target(plugin=my_plugin, channel_type="mine", content={"text": "Hello"},
                          addresses=["+14155550100"], delivered=peer.count)

A type that sends through transports is checked with `TransportChannelContract`, which adds the
transport tests. Every test's docstring names the clause it checks; docs/plugins.md states the
contract. The tests run each scenario in its own event loop, so no asyncio plugin for pytest is
needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import inspect
import re
import socket
import sys
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

try:
    import pytest
except ImportError as exc:  # the kit ships in the package, pytest does not
    raise ImportError(
        "campaignd.testing.conformance is a pytest test kit: install pytest to use it (pip install pytest)"
    ) from exc

from campaignd.config import NAME_PATTERN, ConfigError, Settings, parse
from campaignd.model import SendWindow
from campaignd.plugin import (
    LABEL_LENGTH,
    PROVIDER_ID_LENGTH,
    ChannelInfo,
    ChannelSemantics,
    ContentField,
    EventKind,
    FieldViolation,
    InboundEvent,
    Options,
    Recipient,
    Rendered,
    SendResult,
    SendStatus,
    Transport,
    hookspecs,
)
from campaignd.plugin.manager import PluginError, Plugins
from campaignd.rendering.pool import RenderPool

__all__ = [
    "ChannelPluginContract",
    "RecordingEvents",
    "RecordingGate",
    "Target",
    "TransportChannelContract",
    "closed_port",
    "load",
]

HOOKS = frozenset(
    name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("campaignd_")
)
FOREIGN_TYPE = "conformance-foreign"  # a type no plugin under test declares
TRANSPORT = "conformance"
DOWN_TRANSPORT = "conformance-down"
_KINDS = frozenset({"string", "number", "bool", "object", "list"})
_T = TypeVar("_T")


@dataclasses.dataclass(frozen=True)
class Target:
    """What the kit checks: one channel type of a plugin, and the peer its messages reach.

    `delivered` counts the messages the peer has received so far; it counts a message once the
    peer has it (e.g. an SMTP server's DATA accepted), so the kit can see what a send started.
    `options` and `transport_options` are written as in the config file (`[channel_types.<type>]`,
    `[transports.<name>.options]`), secrets as `{"file": ...}` or `{"env": ...}`.
    """

    plugin: object
    channel_type: str
    content: Mapping[str, Any]
    addresses: Sequence[str]
    delivered: Callable[[], int]
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    transport_options: Mapping[str, Any] | None = None
    # Transport options naming a peer that refuses connections, e.g. on closed_port().
    unreachable_transport_options: Mapping[str, Any] | None = None
    # The most sends the peer saw in progress at once, when it can tell.
    peak_in_flight: Callable[[], int] | None = None
    # How many connections the peer has open now, when it can tell.
    connections: Callable[[], int] | None = None
    # False for a type without previews: its plugin answers campaignd_render with None.
    renders: bool = True


def load(plugin: object) -> Plugins:
    """`plugin` loaded alone by the daemon's loader, as `[plugins] load` would load it."""
    name = getattr(plugin, "__name__", "")
    if isinstance(plugin, types.ModuleType) and sys.modules.get(name) is plugin:
        return Plugins([name], entry_points=False)
    # The loader takes module names; hooks on another object are given one for the load.
    alias = f"_campaignd_conformance_{id(plugin):x}"
    sys.modules[alias] = plugin  # type: ignore[assignment]
    try:
        return Plugins([alias], entry_points=False)
    finally:
        del sys.modules[alias]


def closed_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on, for `Target.unreachable_transport_options`."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
    return port


class RecordingGate:
    """A gate that admits the first `allow` sends (every send when None) and records each call.

    For each admitted send, `received_at_admit` keeps how many messages the peer had received
    when it was admitted: a send that reached the peer before its admit shows there.
    """

    def __init__(self, delivered: Callable[[], int], allow: int | None = None) -> None:
        self._delivered = delivered
        self._base = delivered()
        self.allow = allow
        self.asked = 0
        self.weights: list[float] = []
        self.received_at_admit: list[int] = []

    @property
    def admitted(self) -> int:
        """How many sends were admitted."""
        return len(self.received_at_admit)

    async def admit(self, weight: float = 1.0, message_id: int | None = None) -> bool:
        """Admit while the allowance lasts."""
        self.asked += 1
        self.weights.append(weight)
        if self.allow is not None and self.admitted >= self.allow:
            return False
        self.received_at_admit.append(self._delivered() - self._base)
        return True


class RecordingEvents:
    """An EventSink that keeps the inbound events a transport reports."""

    def __init__(self) -> None:
        self.recorded: list[tuple[str, object]] = []

    async def record(self, channel_type: str, events: Sequence[InboundEvent]) -> None:
        """Keep `events`."""
        self.recorded.extend((channel_type, event) for event in events)

    def check(self, types_: Sequence[str]) -> None:
        """Fail unless every event is an InboundEvent of one of `types_` about a message or an address."""
        for channel_type, event in self.recorded:
            assert channel_type in types_, (
                f"an event was recorded for type {channel_type!r}, not the plugin's"
            )
            assert isinstance(event, InboundEvent), f"recorded {event!r}, not an InboundEvent"
            assert isinstance(event.kind, EventKind), f"{event!r}: kind is not an EventKind"
            assert event.provider_id or event.address, f"{event!r} names neither a message nor an address"


@dataclasses.dataclass(frozen=True)
class Batch:
    """What sending one batch gave, and how the plugin behaved while it ran."""

    results: list[SendResult]
    call_seconds: float  # how long the hook call itself took, before its awaitable was awaited
    received_before_await: int  # messages the peer got before the awaitable was awaited
    received: int  # messages the peer got in all, once stragglers had time to arrive
    worst_lag: float  # the longest the event loop was held up while the batch ran


class LagProbe:
    """Measures how long the event loop is held up while it runs (an async context manager), less
    the time the machine kept its thread waiting for a CPU."""

    TICK = 0.005

    def __init__(self) -> None:
        self.worst = 0.0
        self._since = 0.0
        self._waited = 0.0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LagProbe:
        # The daemon freezes what it made before serving, so that the collector's full passes do
        # not walk it; a test process has made far more by now (every test before this one), and
        # a pass over it could hold the loop up longer than any plugin. Frozen here as there.
        gc.collect()
        gc.freeze()
        self._since, self._waited = asyncio.get_running_loop().time(), _queued()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        # A hold-up at the very end shows as a tick that never came.
        waited = _queued() - self._waited
        self.worst = max(self.worst, asyncio.get_running_loop().time() - self._since - self.TICK - waited)
        gc.unfreeze()
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.TICK)
            now, waited = loop.time(), _queued()
            self.worst = max(self.worst, now - self._since - self.TICK - (waited - self._waited))
            self._since, self._waited = now, waited


def _queued() -> float:
    """Seconds this thread has waited for a CPU (Linux: /proc/thread-self/schedstat), so that a
    busy machine's delays are not taken for the loop being held up; 0 where it cannot be read."""
    try:
        with open("/proc/thread-self/schedstat", encoding="ascii") as stat:
            return int(stat.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


async def _within(awaitable: Awaitable[_T], seconds: float, what: str) -> _T:
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        pytest.fail(f"{what} gave no result within {seconds:g} s")


def _settings(target: Target, concurrency: int) -> Settings:
    data: dict[str, Any] = {}
    if target.options:
        data["channel_types"] = {target.channel_type: dict(target.options)}
    transports = {}
    for name, options in (
        (TRANSPORT, target.transport_options),
        (DOWN_TRANSPORT, target.unreachable_transport_options),
    ):
        if options is not None:
            transports[name] = {
                "type": target.channel_type,
                "concurrency": concurrency,
                "options": dict(options),
            }
    if transports:
        data["transports"] = transports
    return parse(data)


def _root(path: str) -> str:
    return re.split(r"[.\[]", path, maxsplit=1)[0]


def _discard(answer: object) -> None:
    # A coroutine answered by mistake would warn that it was never awaited; it is the finding already.
    if inspect.iscoroutine(answer):
        answer.close()


class Session:
    """The plugin loaded and configured as the daemon would, and the means to send through it."""

    def __init__(self, contract: ChannelPluginContract, target: Target, plugins: Plugins) -> None:
        self.contract = contract
        self.target = target
        self.plugins = plugins
        self.declared = plugins.types[target.channel_type]
        self.hook = plugins.manager.hook
        self.options: Options = plugins.config.options.get(target.channel_type, {})
        assert plugins.renderer is not None
        self.renderer = plugins.renderer
        self.channel = ChannelInfo("campaigns/conformance", "main", target.channel_type, dict(target.content))

    def recipients(self, count: int, first_id: int = 1001) -> list[Recipient]:
        """`count` recipients on the target's addresses, taken in turn."""
        assert self.target.addresses, "Target.addresses must name at least one address"
        found = []
        for index in range(count):
            address = self.target.addresses[index % len(self.target.addresses)]
            contact = {
                "contact_id": f"conformance-{index}",
                "email": address if self.declared.address == "email" else None,
                "phone": address if self.declared.address == "phone" else None,
                "time_zone": "UTC",
                "attributes": {"first_name": "Ada"},
            }
            found.append(Recipient(first_id + index, address, contact, 1))
        return found

    def transport(self, name: str = TRANSPORT) -> Transport | None:
        """The configured transport `name`, or None for a type without transports."""
        if not self.declared.uses_transports:
            return None
        transport = self.plugins.config.transports.get(name)
        assert transport is not None, (
            f"channel type {self.target.channel_type!r} uses transports: give Target.transport_options"
        )
        return transport

    async def open(self, transport: Transport | None, events: RecordingEvents) -> Any:
        """The open form of `transport` through campaignd_open_transport (None without transports)."""
        if transport is None:
            return None
        opening = self.hook.campaignd_open_transport(
            channel_type=transport.channel_type, transport=transport, events=events
        )
        assert opening is not None, "campaignd_open_transport answered None for the plugin's own type"
        assert inspect.isawaitable(opening), (
            f"campaignd_open_transport returned {opening!r}, not an awaitable"
        )
        return await _within(opening, self.contract.result_timeout, "opening the transport")

    async def close(self, transport: Transport | None, client: Any) -> None:
        """Close what `open` opened, through campaignd_close_transport."""
        if transport is None:
            return
        closing = self.hook.campaignd_close_transport(
            channel_type=transport.channel_type, transport=transport, client=client
        )
        assert closing is not None, "campaignd_close_transport answered None for the plugin's own type"
        assert inspect.isawaitable(closing), (
            f"campaignd_close_transport returned {closing!r}, not an awaitable"
        )
        await _within(closing, self.contract.result_timeout, "closing the transport")

    @contextlib.asynccontextmanager
    async def opened(self, name: str = TRANSPORT) -> AsyncIterator[tuple[Transport | None, Any]]:
        """The transport open for the length of the block, then closed; events checked."""
        transport = self.transport(name)
        events = RecordingEvents()
        client = await self.open(transport, events)
        try:
            yield transport, client
        except BaseException:
            with contextlib.suppress(Exception):
                await self.close(transport, client)
            raise
        await self.close(transport, client)
        events.check(list(self.plugins.types))

    async def send(
        self, gate: RecordingGate, recipients: Sequence[Recipient], transport: Transport | None, client: Any
    ) -> Batch:
        """Hand `recipients` to campaignd_send as the engine does, and await the results."""
        delivered = self.target.delivered
        before = delivered()
        async with LagProbe() as probe:
            started = time.perf_counter()
            awaitable = self.hook.campaignd_send(
                channel_type=self.target.channel_type,
                channel=self.channel,
                recipients=list(recipients),
                gate=gate,
                transport=transport,
                client=client,
                options=self.options,
                renderer=self.renderer,
            )
            call_seconds = time.perf_counter() - started
            received_before_await = delivered() - before
            assert awaitable is not None, "campaignd_send answered None for the plugin's own type"
            assert inspect.isawaitable(awaitable), f"campaignd_send returned {awaitable!r}, not an awaitable"
            results = await _within(awaitable, self.contract.result_timeout, "campaignd_send's awaitable")
        checked = _check_results(results, recipients)
        await asyncio.sleep(self.contract.settle)
        return Batch(checked, call_seconds, received_before_await, delivered() - before, probe.worst)


def _check_results(results: object, recipients: Sequence[Recipient]) -> list[SendResult]:
    not_a_sequence = f"campaignd_send's awaitable gave {type(results).__name__}, not a sequence of SendResult"
    assert isinstance(results, Sequence), not_a_sequence
    assert not isinstance(results, str | bytes), not_a_sequence
    found = list(results)
    strays = [r for r in found if not isinstance(r, SendResult)]
    assert not strays, f"campaignd_send gave {strays[0]!r}, not a SendResult"
    expected = sorted(r.message_id for r in recipients)
    got = sorted(r.message_id for r in found)
    assert got == expected, f"one result per recipient: message ids {expected}, results for {got}"
    for result in found:
        assert isinstance(result.status, SendStatus), f"{result!r}: status is not a SendStatus"
        for name in ("provider_id", "error", "reason", "outcome"):
            assert isinstance(getattr(result, name), str), f"{result!r}: {name} is not a str"
        # Longer ones are cut when they are kept (docs/plugins.md).
        limits = {"provider_id": PROVIDER_ID_LENGTH, "reason": LABEL_LENGTH, "outcome": LABEL_LENGTH}
        for name, limit in limits.items():
            too_long = f"{result!r}: {name} is longer than {limit} characters"
            assert len(getattr(result, name)) <= limit, too_long
        assert isinstance(result.fatal, bool), f"{result!r}: fatal is not a bool"
        assert isinstance(result.transport_down, bool), f"{result!r}: transport_down is not a bool"
        if result.part_ids:
            # The daemon keeps them to find a message by any part's receipt: a SENT message's parts.
            assert result.status is SendStatus.SENT, f"{result!r}: part_ids on a message that is not SENT"
            named = all(isinstance(p, str) and p for p in result.part_ids)
            assert named, f"{result!r}: a part id is not a non-empty str"
            short = all(len(p) <= PROVIDER_ID_LENGTH for p in result.part_ids)
            assert short, f"{result!r}: a part id is longer than {PROVIDER_ID_LENGTH} characters"
            counted = len(result.part_ids) == result.parts
            assert counted, f"{result!r}: part_ids do not name its {result.parts} parts"
    return found


def _count(results: Sequence[SendResult], *statuses: SendStatus) -> int:
    return sum(1 for r in results if r.status in statuses)


def _check_field(owner: str, spec: object, *, options: bool) -> None:
    assert isinstance(spec, ContentField), f"{owner}: {spec!r} is not a ContentField"
    assert isinstance(spec.name, str), f"{owner}: {spec!r} has no name"
    assert spec.name, f"{owner}: {spec!r} has no name"
    assert spec.kind in _KINDS, f"{owner}.{spec.name}: kind {spec.kind!r} is not one of {sorted(_KINDS)}"
    assert spec.max_length > 0, f"{owner}.{spec.name}: max_length must be positive"
    if spec.secret:
        assert options, f"{owner}.{spec.name}: only options are secrets, content fields are not"
        assert spec.kind == "string", f"{owner}.{spec.name}: a secret reaches the plugin as a string"


def _check_window(name: str, window: Mapping[str, Any]) -> None:
    _, problems = SendWindow.check(window, "default_window")
    assert not problems, f"{name}: " + "; ".join(f"{p.field} {p.description}" for p in problems)


class ChannelPluginContract:
    """The hook contract of a channel plugin. Subclass it and define a `target` fixture."""

    # Recipients per batch in the send tests.
    batch_size = 6
    # Seconds a batch may take to give its results.
    result_timeout = 10.0
    # Seconds the plugin may hold up the event loop at a time.
    loop_lag_limit = 0.2
    # Seconds to let stragglers reach the peer before counting there.
    settle = 0.2
    # The concurrency of the transports the kit configures.
    transport_concurrency = 2

    @pytest.fixture
    def target(self) -> Target:
        """The plugin and peer under test; every subclass defines its own."""
        pytest.fail(f"{type(self).__name__} must define a `target` fixture that returns a Target")

    @pytest.fixture(scope="class")
    @classmethod
    def renderer(cls) -> Iterator[RenderPool]:
        """The daemon's render pool, with one worker process, shared by the contract's tests."""
        pool = RenderPool(workers=1)
        yield pool
        pool.close()

    @pytest.fixture
    def plugins(self, target: Target, renderer: RenderPool) -> Plugins:
        """The plugin loaded alone and configured with the target's options, as the daemon would."""
        plugins = load(target.plugin)
        plugins.configure(_settings(target, self.transport_concurrency))
        plugins.renderer = renderer
        return plugins

    @pytest.fixture
    def session(self, target: Target, plugins: Plugins) -> Session:
        """The loaded plugin with the target's channel and recipients."""
        if target.channel_type not in plugins.types:
            pytest.fail(
                f"the plugin declares no channel type {target.channel_type!r}: {sorted(plugins.types)}"
            )
        return Session(self, target, plugins)

    # -- loading and declarations ---------------------------------------------------------------

    def test_registers_with_the_daemon(self, target: Target) -> None:
        """The daemon's loader takes the plugin: its implementations name only hooks and arguments
        of the specifications, and every campaignd_* function of it is a marked hook implementation."""
        try:
            plugins = load(target.plugin)
        except PluginError as exc:
            pytest.fail(f"the daemon refuses the plugin: {exc}")
        for name in dir(target.plugin):
            if not name.startswith("campaignd_") or not callable(getattr(target.plugin, name)):
                continue
            assert name in HOOKS, f"{name} is no hook: pluggy would never call it (hooks: {sorted(HOOKS)})"
            assert plugins.manager.parse_hookimpl_opts(target.plugin, name) is not None, (
                f"{name} is not marked @hookimpl: pluggy would never call it"
            )

    def test_channel_types_are_well_formed(self, target: Target, plugins: Plugins) -> None:
        """Each declared type has a valid name and address, uniquely named fields of known kinds,
        secrets only among options, a valid default window, and transport options only if it uses
        transports; the target's type is among them."""
        assert target.channel_type in plugins.types, f"no channel type {target.channel_type!r} declared"
        for name, declared in plugins.types.items():
            assert re.fullmatch(NAME_PATTERN, name), f"type name {name!r} does not match {NAME_PATTERN}"
            assert declared.address in ("email", "phone"), f"{name}: address must be 'email' or 'phone'"
            for group, fields, options in (
                ("fields", declared.fields, False),
                ("options", declared.options, True),
                ("transport_options", declared.transport_options, True),
            ):
                assert isinstance(fields, tuple), f"{name}.{group} must be a tuple of ContentField"
                for spec in fields:
                    _check_field(f"{name}.{group}", spec, options=options)
                names = [f.name for f in fields]
                assert len(set(names)) == len(names), f"{name}.{group}: field names repeat: {names}"
            if not declared.uses_transports:
                assert not declared.transport_options, (
                    f"{name}: transport_options but uses_transports is False"
                )
            assert all(isinstance(c, str) for c in declared.capabilities), f"{name}: capabilities are strings"
            if declared.default_window is not None:
                _check_window(name, declared.default_window)

    def test_contract_fits_the_type(self, session: Session) -> None:
        """A type that sends through transports is checked with TransportChannelContract, which
        adds the transport tests."""
        if session.declared.uses_transports:
            assert isinstance(self, TransportChannelContract), (
                f"{session.target.channel_type!r} uses transports: subclass TransportChannelContract"
            )

    def test_semantics_answered_for_own_types(self, plugins: Plugins) -> None:
        """campaignd_channel_semantics answers each of the plugin's types with ChannelSemantics,
        the same every time."""
        for name in plugins.types:
            answer = plugins.manager.hook.campaignd_channel_semantics(channel_type=name)
            assert isinstance(answer, ChannelSemantics), f"semantics of {name!r}: {answer!r}"
            assert plugins.manager.hook.campaignd_channel_semantics(channel_type=name) == answer

    def test_foreign_type_gets_no_answer(self, session: Session) -> None:
        """For a type that is not the plugin's, every hook answers None or [] at once, without raising."""
        assert FOREIGN_TYPE not in session.plugins.types
        hook = session.hook
        channel = ChannelInfo("campaigns/conformance", "main", FOREIGN_TYPE, {"unknown": 1})
        [recipient] = session.recipients(1)
        transport = Transport("elsewhere", FOREIGN_TYPE, 0, 1, {"unknown": 1})

        async def scenario() -> None:
            answers: dict[str, object] = {
                "campaignd_channel_semantics": hook.campaignd_channel_semantics(channel_type=FOREIGN_TYPE),
                "campaignd_render": hook.campaignd_render(
                    channel_type=FOREIGN_TYPE,
                    channel=channel,
                    recipient=recipient,
                    options={},
                    renderer=session.renderer,
                ),
                "campaignd_open_transport": hook.campaignd_open_transport(
                    channel_type=FOREIGN_TYPE, transport=transport, events=RecordingEvents()
                ),
                "campaignd_close_transport": hook.campaignd_close_transport(
                    channel_type=FOREIGN_TYPE, transport=transport, client=object()
                ),
                "campaignd_send": hook.campaignd_send(
                    channel_type=FOREIGN_TYPE,
                    channel=channel,
                    recipients=[recipient],
                    gate=RecordingGate(session.target.delivered),
                    transport=transport,
                    client=object(),
                    options={},
                    renderer=session.renderer,
                ),
            }
            for name, answer in answers.items():
                _discard(answer)
                assert answer is None, f"{name} answered {answer!r} for another plugin's type"
            lists = {
                "campaignd_validate_channel": hook.campaignd_validate_channel(
                    channel_type=FOREIGN_TYPE, content={"unknown": 1}, launching=True, options={}
                ),
                "campaignd_validate_options": hook.campaignd_validate_options(
                    channel_type=FOREIGN_TYPE, options={"unknown": 1}, transport=None, http_listener=False
                )
                + hook.campaignd_validate_options(
                    channel_type=FOREIGN_TYPE,
                    options={"unknown": 1},
                    transport="elsewhere",
                    http_listener=False,
                ),
            }
            for name, found in lists.items():
                assert all(a == [] for a in found), f"{name} answered {found!r} for another plugin's type"

        asyncio.run(scenario())

    # -- validation and rendering ---------------------------------------------------------------

    def test_options_are_accepted(self, target: Target) -> None:
        """The daemon's config check accepts the target's options: declared fields, secrets read, and
        campaignd_validate_options finds no problem, for the type and for each transport."""
        plugins = load(target.plugin)
        try:
            config = plugins.check_config(_settings(target, self.transport_concurrency))
        except ConfigError as exc:
            pytest.fail(f"the daemon refuses the target's options: {exc}")
        hook = plugins.manager.hook
        tables: list[tuple[str | None, Options]] = [(None, config.options.get(target.channel_type, {}))]
        tables += [(name, t.options) for name, t in config.transports.items()]
        for transport, options in tables:
            found = hook.campaignd_validate_options(
                channel_type=target.channel_type,
                options=options,
                transport=transport,
                http_listener=False,
            )
            assert all(isinstance(a, list) and a == [] for a in found), (transport, found)

    def test_valid_content_is_accepted(self, session: Session) -> None:
        """The target's content passes validation on create (launching False) and at launch (True):
        the daemon's checks of the declared fields and campaignd_validate_channel find nothing."""
        for launching in (False, True):
            problems = session.plugins.validate(
                session.target.channel_type, dict(session.target.content), launching=launching
            )
            assert problems == [], f"valid content refused (launching={launching}): {problems}"

    def test_empty_content_is_refused_at_launch(self, session: Session) -> None:
        """Empty content: at launch a problem for each required field; every problem, the daemon's or
        campaignd_validate_channel's, is a FieldViolation naming a declared field; no exception."""
        declared = session.declared
        names = {f.name for f in declared.fields}
        for launching in (False, True):
            answers = session.hook.campaignd_validate_channel(
                channel_type=declared.name, content={}, launching=launching, options=session.options
            )
            for answer in answers:
                assert isinstance(answer, list), f"campaignd_validate_channel answered {answer!r}, not a list"
        problems = session.plugins.validate(declared.name, {}, launching=True)
        for problem in problems:
            assert isinstance(problem, FieldViolation), f"{problem!r} is not a FieldViolation"
            assert _root(problem.field) in names, f"{problem!r} names no declared field of {sorted(names)}"
        required = {f.name for f in declared.fields if f.required}
        assert required <= {p.field for p in problems}, f"required fields not reported: {required}"

    def test_malformed_content_does_not_raise(self, session: Session) -> None:
        """campaignd_validate_channel is called even when the declared checks failed: values of the
        wrong kind get FieldViolations or nothing, never an exception."""
        declared = session.declared
        content: dict[str, Any] = {f.name: (7.0 if f.kind == "string" else "7") for f in declared.fields}
        names = {f.name for f in declared.fields}
        for launching in (False, True):
            for answer in session.hook.campaignd_validate_channel(
                channel_type=declared.name, content=content, launching=launching, options=session.options
            ):
                assert isinstance(answer, list), f"campaignd_validate_channel answered {answer!r}, not a list"
                for problem in answer:
                    assert isinstance(problem, FieldViolation), f"{problem!r} is not a FieldViolation"
                    assert _root(problem.field) in names, f"{problem!r} names no declared field"

    def test_render_previews_a_message(self, session: Session) -> None:
        """campaignd_render gives each recipient a Rendered (str summary and text, bytes data) from
        valid content, without reaching the peer; with `renders=False` it answers None."""
        target = session.target

        async def scenario() -> None:
            before = target.delivered()
            for recipient in session.recipients(len(target.addresses)):
                rendered = session.hook.campaignd_render(
                    channel_type=target.channel_type,
                    channel=session.channel,
                    recipient=recipient,
                    options=session.options,
                    renderer=session.renderer,
                )
                if inspect.isawaitable(rendered):
                    rendered = await _within(rendered, self.result_timeout, "campaignd_render's awaitable")
                if not target.renders:
                    assert rendered is None, f"renders=False, but campaignd_render answered {rendered!r}"
                    continue
                assert isinstance(rendered, Rendered), f"campaignd_render answered {rendered!r}"
                assert isinstance(rendered.summary, str), "Rendered.summary is not a str"
                assert rendered.summary, "Rendered.summary is empty"
                assert isinstance(rendered.text, str), "Rendered.text is not a str"
                assert isinstance(rendered.data, bytes), "Rendered.data is not bytes"
            await asyncio.sleep(self.settle)
            assert target.delivered() == before, "rendering reached the peer"

        asyncio.run(scenario())

    # -- sending --------------------------------------------------------------------------------

    def test_send_returns_an_awaitable_at_once(self, session: Session) -> None:
        """campaignd_send is a plain function: it returns an awaitable at once, and nothing reaches the
        peer before that awaitable is awaited."""

        async def scenario() -> None:
            async with session.opened() as (transport, client):
                gate = RecordingGate(session.target.delivered)
                batch = await session.send(gate, session.recipients(self.batch_size), transport, client)
            assert batch.received_before_await == 0, "campaignd_send sent before its awaitable was awaited"
            assert batch.call_seconds <= self.loop_lag_limit, (
                f"calling campaignd_send took {batch.call_seconds:.3f} s: it did the work itself"
            )

        asyncio.run(scenario())

    def test_every_recipient_gets_one_result(self, session: Session) -> None:
        """With the gate open and a willing peer: one SendResult per recipient, with its message id,
        SENT or DELIVERED, within `result_timeout`, and each message reaches the peer."""

        async def scenario() -> None:
            recipients = session.recipients(self.batch_size)
            async with session.opened() as (transport, client):
                batch = await session.send(
                    RecordingGate(session.target.delivered), recipients, transport, client
                )
            unsent = [r for r in batch.results if r.status not in (SendStatus.SENT, SendStatus.DELIVERED)]
            assert not unsent, f"a willing peer, yet: {unsent[:3]}"
            assert batch.received == len(recipients), (
                f"the peer received {batch.received} of {len(recipients)}"
            )

        asyncio.run(scenario())

    def test_closed_gate_starts_nothing(self, session: Session) -> None:
        """A gate that admits nothing: every result NOT_STARTED, and the peer receives nothing."""

        async def scenario() -> None:
            async with session.opened() as (transport, client):
                gate = RecordingGate(session.target.delivered, allow=0)
                batch = await session.send(gate, session.recipients(self.batch_size), transport, client)
            started = [r for r in batch.results if r.status != SendStatus.NOT_STARTED]
            assert not started, f"the gate admitted nothing, yet: {started[:3]}"
            assert batch.received == 0, f"the gate admitted nothing, yet the peer received {batch.received}"

        asyncio.run(scenario())

    def test_gate_admitting_some_starts_exactly_those(self, session: Session) -> None:
        """A gate that admits only the first k: exactly k messages reach the peer and are SENT or
        DELIVERED, the rest are NOT_STARTED."""
        admitted = 2

        async def scenario() -> None:
            async with session.opened() as (transport, client):
                gate = RecordingGate(session.target.delivered, allow=admitted)
                batch = await session.send(gate, session.recipients(self.batch_size), transport, client)
            assert batch.received == admitted, f"admitted {admitted}, the peer received {batch.received}"
            assert _count(batch.results, SendStatus.SENT, SendStatus.DELIVERED) == admitted, batch.results
            assert _count(batch.results, SendStatus.NOT_STARTED) == self.batch_size - admitted, batch.results

        asyncio.run(scenario())

    def test_admit_is_awaited_before_each_start(self, session: Session) -> None:
        """gate.admit() is awaited exactly once per message that starts, with a positive weight, and
        before it starts: no message reaches the peer ahead of its admission."""

        async def scenario() -> None:
            async with session.opened() as (transport, client):
                gate = RecordingGate(session.target.delivered)
                batch = await session.send(gate, session.recipients(self.batch_size), transport, client)
            started = len(batch.results) - _count(batch.results, SendStatus.NOT_STARTED)
            assert gate.asked == started == self.batch_size, (
                f"{started} sends started after {gate.asked} awaited admits; one each was due"
            )
            assert all(w > 0 for w in gate.weights), f"admit weights must be positive: {gate.weights}"
            early = [(i, seen) for i, seen in enumerate(gate.received_at_admit) if seen > i]
            assert not early, (
                f"the peer had received {early[0][1]} messages at admit number {early[0][0] + 1}"
            )

        asyncio.run(scenario())

    def test_sending_keeps_the_event_loop_free(self, session: Session) -> None:
        """Sending is asynchronous: while a batch runs, the event loop is never held up for more than
        `loop_lag_limit`."""

        async def scenario() -> None:
            async with session.opened() as (transport, client):
                gate = RecordingGate(session.target.delivered)
                batch = await session.send(gate, session.recipients(self.batch_size), transport, client)
            assert batch.worst_lag <= self.loop_lag_limit, (
                f"the event loop was held up for {batch.worst_lag:.3f} s"
            )

        asyncio.run(scenario())


class TransportChannelContract(ChannelPluginContract):
    """The contract of a channel type that sends through transports: the base contract, sent
    through a transport the kit configures from `Target.transport_options`, and the transport's own."""

    def test_transport_opens_and_closes(self, session: Session) -> None:
        """campaignd_open_transport returns an awaitable giving the open transport, and
        campaignd_close_transport one that closes it, neither holding up the event loop; once
        closed, the peer has no connection left open (when it can tell)."""

        async def scenario() -> None:
            transport = session.transport()
            events = RecordingEvents()
            async with LagProbe() as probe:
                client = await session.open(transport, events)
                gate = RecordingGate(session.target.delivered)
                await session.send(gate, session.recipients(self.batch_size), transport, client)
                await session.close(transport, client)
            assert probe.worst <= self.loop_lag_limit, f"the event loop was held up for {probe.worst:.3f} s"
            events.check(list(session.plugins.types))
            if session.target.connections is not None:
                await asyncio.sleep(self.settle)
                left = session.target.connections()
                assert left == 0, f"{left} connections to the peer stayed open after the transport closed"

        asyncio.run(scenario())

    def test_concurrency_stays_within_the_transport(self, session: Session) -> None:
        """Never more than `transport.concurrency` sends in flight, across batches sharing the
        transport: at each admit, the sends admitted but not yet received by the peer stay within it,
        and so does the peer's own count when it keeps one."""

        async def scenario() -> None:
            size = 2 * self.transport_concurrency + 1
            base = session.target.delivered()
            async with session.opened() as (transport, client):
                assert transport is not None
                gate = RecordingGate(session.target.delivered)
                batches = await asyncio.gather(
                    session.send(gate, session.recipients(size, first_id=2001), transport, client),
                    session.send(gate, session.recipients(size, first_id=3001), transport, client),
                )
            assert all(_count(b.results, SendStatus.SENT, SendStatus.DELIVERED) == size for b in batches)
            assert session.target.delivered() - base == 2 * size, "not every message reached the peer"
            outstanding = max(i + 1 - seen for i, seen in enumerate(gate.received_at_admit))
            limit = transport.concurrency
            assert outstanding <= limit, (
                f"{outstanding} sends in flight at once; the transport allows {limit}"
            )
            if session.target.peak_in_flight is not None:
                peak = session.target.peak_in_flight()
                assert peak <= limit, f"the peer saw {peak} sends at once; the transport allows {limit}"

        asyncio.run(scenario())

    def test_unreachable_transport_is_reported_down(self, session: Session) -> None:
        """A transport whose peer refuses connections: either opening it fails (the daemon then rests
        it), or every send comes back RETRY with transport_down (or NOT_STARTED) within
        `result_timeout`, never FAILED and never an exception."""
        if session.target.unreachable_transport_options is None:
            pytest.skip("Target.unreachable_transport_options is not given")

        async def scenario() -> None:
            transport = session.transport(DOWN_TRANSPORT)
            events = RecordingEvents()
            try:
                client = await session.open(transport, events)
            except AssertionError:
                raise
            except Exception:
                return  # refused at once: the daemon rests the transport and retries the batch later
            recipients = session.recipients(self.batch_size)
            try:
                batch = await session.send(
                    RecordingGate(session.target.delivered), recipients, transport, client
                )
            finally:
                await session.close(transport, client)
            events.check(list(session.plugins.types))
            wrong = [
                r
                for r in batch.results
                if r.status != SendStatus.NOT_STARTED
                and not (r.status == SendStatus.RETRY and r.transport_down)
            ]
            assert not wrong, f"an unreachable peer must give RETRY with transport_down: {wrong[:3]}"

        asyncio.run(scenario())
