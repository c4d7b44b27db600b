"""Loads channel plugins and answers questions about channel types."""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import inspect
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pluggy
from pydantic import ValidationError

from campaignd import logs
from campaignd.config import ConfigError, Problem, SecretSource, Settings, validation_problems
from campaignd.errors import FieldViolation, new_error_id
from campaignd.lifecycle import DEFAULT_SEMANTICS, ChannelSemantics
from campaignd.model import SendWindow, TransportShare
from campaignd.plugin import (
    ENTRY_POINT_GROUP,
    HOOK_API_VERSION,
    PROJECT,
    ChannelInfo,
    ChannelType,
    Content,
    ContentField,
    EventSink,
    Gate,
    Options,
    Recipient,
    Rendered,
    Renderer,
    SendResult,
    Transport,
    hookspecs,
)

log = logs.get("campaignd.plugin")

_KIND_TYPES: Mapping[str, tuple[type, ...]] = {
    "string": (str,),
    "number": (int, float),
    "bool": (bool,),
    "object": (dict,),
    "list": (list,),
}


class PluginError(Exception):
    """A plugin could not be loaded or declared something invalid."""


class PluginCallError(Exception):
    """A plugin failed while working for a channel; the channel fails, never the daemon."""


def _plugin_failed(channel_type: str, exc: Exception) -> PluginCallError:
    # The exception's text stays in the log: clients and Channel.error get the id of its entry.
    error_id = new_error_id()
    log.error("plugin failed", channel_type=channel_type, error_id=error_id, exc_info=exc)
    return PluginCallError(
        f"the {channel_type} plugin failed; the daemon's log has the details under error_id {error_id}"
    )


class TransportOpenError(PluginCallError):
    """A transport could not be opened: the transport rests, the channel does not fail."""


@dataclass(frozen=True)
class PluginConfig:
    """What the config says to the plugins: the transports, and each channel type's options."""

    transports: Mapping[str, Transport] = field(default_factory=dict)
    options: Mapping[str, Options] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadedPlugin:
    """A loaded plugin: its name, the distribution and version it came from, the types it declares."""

    name: str
    distribution: str
    version: str
    channel_types: tuple[str, ...]


class Plugins:
    """The loaded plugins, the channel types they declare, and the config they were given."""

    def __init__(self, extra_modules: Iterable[str] = (), *, entry_points: bool = True) -> None:
        self.manager = pluggy.PluginManager(PROJECT)
        self.manager.add_hookspecs(hookspecs)
        self.config = PluginConfig()
        # The daemon's render pool, given to the hooks that render; set by whoever runs the daemon.
        self.renderer: Renderer | None = None
        try:
            self._load(extra_modules, entry_points=entry_points)
        except PluginError:
            raise
        except Exception as exc:
            # A broken plugin stops the start with its name and error, not with a traceback.
            raise PluginError(f"a plugin failed to load: {type(exc).__name__}: {exc}") from exc
        log.info("plugins loaded", channel_types=sorted(self.types))

    def _load(self, extra_modules: Iterable[str], *, entry_points: bool) -> None:
        if entry_points:
            self.manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        for name in extra_modules:
            try:
                module = importlib.import_module(name)
            except ImportError as exc:
                raise PluginError(f"cannot import plugin module {name}: {exc}") from exc
            if not self.manager.is_registered(module):
                self.manager.register(module, name=name)
        self.types: dict[str, ChannelType] = {}
        self._windows: dict[str, SendWindow] = {}
        self.loaded: list[LoadedPlugin] = []
        distributions = {id(p): d for p, d in self.manager.list_plugin_distinfo()}
        for plugin in self.manager.get_plugins():
            needed = getattr(plugin, "CAMPAIGND_HOOK_API", 1)
            if not isinstance(needed, int) or needed > HOOK_API_VERSION:
                raise PluginError(
                    f"plugin {self.manager.get_name(plugin)} needs hook API {needed!r}; "
                    f"this campaignd has {HOOK_API_VERSION}"
                )
            impl = getattr(plugin, "campaignd_channel_types", None)
            declared: list[ChannelType] = list(impl()) if impl is not None else []
            for channel_type in declared:
                if not isinstance(channel_type, ChannelType):
                    raise PluginError(f"plugin {self.manager.get_name(plugin)} declared {channel_type!r}")
                if channel_type.name in self.types:
                    raise PluginError(f"channel type {channel_type.name!r} is declared by two plugins")
                self.types[channel_type.name] = channel_type
                if channel_type.default_window:
                    self._windows[channel_type.name] = _window(channel_type)
            dist = distributions.get(id(plugin))
            self.loaded.append(
                LoadedPlugin(
                    name=self.manager.get_name(plugin) or repr(plugin),
                    distribution=dist.project_name if dist is not None else "",
                    version=dist.version if dist is not None else _module_version(plugin),
                    channel_types=tuple(t.name for t in declared),
                )
            )
        # A hook implementation whose name or arguments match no specification is a plugin bug.
        self.manager.check_pending()

    def configure(self, settings: Settings) -> None:
        """Take the transports and channel-type options of `settings`; ConfigError if any is bad."""
        self.config = self.check_config(settings)

    def check_config(self, settings: Settings) -> PluginConfig:
        """Check the plugin parts of `settings` against the loaded plugins; every problem at once."""
        problems: list[Problem] = []
        options: dict[str, Options] = {}
        listener = bool(settings.http.address)
        for name in sorted(set(settings.channel_types) - set(self.types)):
            problems.append(
                Problem(f"channel_types.{name}", f"no loaded plugin declares channel type {name!r}")
            )
        for name, declared in self.types.items():
            raw = settings.channel_types.get(name, {})
            options[name] = self._options(
                declared, declared.options, raw, f"channel_types.{name}", None, problems, listener
            )
        transports: dict[str, Transport] = {}
        for name, transport in settings.transports.items():
            path = f"transports.{name}"
            declared_type = self.types.get(transport.type)
            if declared_type is None:
                problems.append(
                    Problem(f"{path}.type", f"no loaded plugin declares channel type {transport.type!r}")
                )
                continue
            if not declared_type.uses_transports:
                problems.append(
                    Problem(f"{path}.type", f"channel type {transport.type!r} uses no transports")
                )
                continue
            resolved = self._options(
                declared_type,
                declared_type.transport_options,
                transport.options,
                f"{path}.options",
                name,
                problems,
                listener,
            )
            transports[name] = Transport(
                name, transport.type, transport.rate, transport.concurrency, resolved
            )
        if problems:
            raise ConfigError(problems)
        return PluginConfig(transports, options)

    def _options(
        self,
        declared: ChannelType,
        fields: Sequence[ContentField],
        raw: Mapping[str, Any],
        path: str,
        transport: str | None,
        problems: list[Problem],
        listener: bool,
    ) -> Options:
        found = len(problems)
        values: dict[str, Any] = {}
        by_name = {f.name: f for f in fields}
        for key, value in raw.items():
            spec = by_name.get(key)
            if spec is None:
                problems.append(Problem(f"{path}.{key}", "unknown key"))
            elif spec.secret:
                values[key] = _read_secret(value, f"{path}.{key}", problems)
            elif wrong := _value_problem(spec, value):
                problems.append(Problem(f"{path}.{key}", wrong))
            else:
                values[key] = value
        problems.extend(Problem(f"{path}.{name}", "required") for name in _missing(fields, raw))
        if len(problems) > found:
            return values
        try:
            answers = self.manager.hook.campaignd_validate_options(
                channel_type=declared.name, options=values, transport=transport, http_listener=listener
            )
        except Exception as exc:
            problems.append(Problem(path, f"the {declared.name} plugin failed checking it: {exc}"))
            return values
        for answer in answers:
            problems.extend(Problem(f"{path}.{v.field}", v.description) for v in answer)
        return values

    def transports_for(
        self, channel_type: str, shares: Sequence[TransportShare]
    ) -> list[tuple[Transport, int]]:
        """The transports a channel sends through with their percentages: the ones it names, or
        else every configured transport of its type in equal shares."""
        transports = self.config.transports
        if shares:
            return [(transports[s.transport], s.percent) for s in shares if s.transport in transports]
        mine = [t for t in transports.values() if t.channel_type == channel_type]
        return [(t, 100 // len(mine) + (1 if i < 100 % len(mine) else 0)) for i, t in enumerate(mine)]

    def check_transports(
        self, channel_type: str, shares: Sequence[TransportShare], *, launching: bool
    ) -> list[FieldViolation]:
        """Problems with a channel's transport shares against the configured transports; at
        launch also that a channel naming none has a configured transport of its type."""
        declared = self.types.get(channel_type)
        if declared is None or not declared.uses_transports:
            return (
                [FieldViolation("transports", f"channel type {channel_type!r} uses no transports")]
                if shares
                else []
            )
        problems = []
        for index, share in enumerate(shares):
            transport = self.config.transports.get(share.transport)
            if transport is None:
                problems.append(
                    FieldViolation(
                        f"transports[{index}].transport",
                        f"no transport {share.transport!r} in the daemon's configuration",
                    )
                )
            elif transport.channel_type != channel_type:
                problems.append(
                    FieldViolation(
                        f"transports[{index}].transport",
                        f"transport {transport.name!r} serves type {transport.channel_type!r}",
                    )
                )
        if launching and not shares and not self.transports_for(channel_type, ()):
            problems.append(
                FieldViolation(
                    "transports", f"no transport of type {channel_type!r} is configured in the daemon"
                )
            )
        return problems

    def semantics(self, channel_type: str) -> ChannelSemantics:
        """The type's §6.3 lifecycle choices; the defaults for a type no plugin answers for."""
        answer: ChannelSemantics | None = self.manager.hook.campaignd_channel_semantics(
            channel_type=channel_type
        )
        return answer or DEFAULT_SEMANTICS

    def default_window(self, channel_type: str) -> SendWindow | None:
        """The send window of a channel type that sets none (e.g. quiet hours for SMS)."""
        return self._windows.get(channel_type)

    async def send(
        self,
        channel_type: str,
        channel: ChannelInfo,
        recipients: Sequence[Recipient],
        gate: Gate,
        seconds: float,
        transport: Transport | None = None,
        client: Any = None,
    ) -> list[SendResult]:
        """Hand a batch to the plugin of `channel_type`; any error of the plugin is a PluginCallError."""
        try:
            awaitable = self.manager.hook.campaignd_send(
                channel_type=channel_type,
                channel=channel,
                recipients=recipients,
                gate=gate,
                transport=transport,
                client=client,
                options=self.config.options.get(channel_type, {}),
                renderer=self._renderer(),
            )
            if awaitable is None:
                raise PluginCallError(f"no loaded plugin sends channel type {channel_type!r}")
            results = await _await(awaitable, seconds)
        except PluginCallError:
            raise
        except TimeoutError:
            raise PluginCallError(f"the {channel_type} plugin gave no result within {seconds:g} s") from None
        except Exception as exc:
            raise _plugin_failed(channel_type, exc) from exc
        if not all(isinstance(r, SendResult) for r in results):
            raise PluginCallError(
                f"the {channel_type} plugin returned something other than SendResult objects"
            )
        return results

    def validate(self, channel_type: str, content: Content, *, launching: bool) -> list[FieldViolation]:
        """Every problem with `content` for `channel_type`; paths are relative to the content."""
        declared = self.types.get(channel_type)
        if declared is None:
            return [
                FieldViolation("type", f"unknown channel type {channel_type!r}; known: {sorted(self.types)}")
            ]
        problems = _check_declared(declared, content, launching=launching)
        for found in self.manager.hook.campaignd_validate_channel(
            channel_type=channel_type,
            content=content,
            launching=launching,
            options=self.config.options.get(channel_type, {}),
        ):
            problems.extend(found)
        return problems

    async def render(self, channel: ChannelInfo, recipient: Recipient) -> Rendered | None:
        """The message `recipient` would get, or None when its type renders no previews;
        ValueError for a content problem (a template that fails or goes over a limit),
        PluginCallError when the plugin fails otherwise."""
        try:
            answer = self.manager.hook.campaignd_render(
                channel_type=channel.type,
                channel=channel,
                recipient=recipient,
                options=self.config.options.get(channel.type, {}),
                renderer=self._renderer(),
            )
            rendered = await answer if inspect.isawaitable(answer) else answer
        except (ValueError, PluginCallError):
            raise
        except Exception as exc:
            raise _plugin_failed(channel.type, exc) from exc
        if rendered is not None and not isinstance(rendered, Rendered):
            raise PluginCallError(
                f"the {channel.type} plugin rendered {type(rendered).__name__}, not Rendered"
            )
        return rendered

    def _renderer(self) -> Renderer:
        if self.renderer is None:
            raise PluginCallError("templates cannot be rendered: the daemon has no render pool")
        return self.renderer

    async def open_transport(self, transport: Transport, events: EventSink, seconds: float) -> Any:
        """Open `transport` through its plugin; TransportOpenError when that fails or takes too long,
        PluginCallError when no plugin opens transports of its type."""
        try:
            awaitable = self.manager.hook.campaignd_open_transport(
                channel_type=transport.channel_type, transport=transport, events=events
            )
            if awaitable is None:
                raise PluginCallError(f"no loaded plugin opens transports of type {transport.channel_type!r}")
            return await asyncio.wait_for(awaitable, seconds)
        except PluginCallError:
            raise
        except TimeoutError:
            raise TransportOpenError(f"opening transport {transport.name} took over {seconds:g} s") from None
        except Exception as exc:
            raise TransportOpenError(
                f"opening transport {transport.name} failed: {type(exc).__name__}: {exc}"
            ) from exc

    async def close_transport(self, transport: Transport, client: Any, seconds: float) -> None:
        """Close an open transport; errors are logged, never raised."""
        try:
            awaitable = self.manager.hook.campaignd_close_transport(
                channel_type=transport.channel_type, transport=transport, client=client
            )
            if awaitable is not None:
                await asyncio.wait_for(awaitable, seconds)
        except Exception as exc:
            log.warning(
                "closing a transport failed", transport=transport.name, error=f"{type(exc).__name__}: {exc}"
            )


def _check_declared(declared: ChannelType, content: Content, *, launching: bool) -> list[FieldViolation]:
    problems = []
    for key, value in content.items():
        spec = declared.field(key)
        if spec is None:
            problems.append(FieldViolation(key, f"not a field of channel type {declared.name!r}"))
            continue
        if wrong := _value_problem(spec, value):
            problems.append(FieldViolation(key, wrong))
    if launching:
        problems.extend(FieldViolation(name, "required") for name in _missing(declared.fields, content))
    return problems


def _value_problem(spec: ContentField, value: Any) -> str:
    """What is wrong with a value of a declared field (content or config option), or ""."""
    if not _is_kind(value, spec.kind):
        return f"must be a {spec.kind}"
    if isinstance(value, str) and len(value) > spec.max_length:
        return f"longer than {spec.max_length} characters"
    return ""


def _missing(fields: Sequence[ContentField], values: Mapping[str, Any]) -> list[str]:
    """The required fields that are missing or empty."""
    return [spec.name for spec in fields if spec.required and values.get(spec.name) in (None, "", [], {})]


def _read_secret(value: Any, path: str, problems: list[Problem]) -> str:
    try:
        return SecretSource.model_validate(value).read().get_secret_value()
    except ValidationError as exc:
        problems.extend(validation_problems(exc, within=path))
    except ConfigError as exc:
        problems.extend(Problem(f"{path}.{p.path}", p.message) for p in exc.problems)
    return ""


def _module_version(plugin: object) -> str:
    module = getattr(plugin, "__name__", "")
    try:
        return importlib.metadata.version(module.split(".")[0]) if module else ""
    except importlib.metadata.PackageNotFoundError:
        return str(getattr(plugin, "__version__", ""))


def _is_kind(value: Any, kind: str) -> bool:
    # JSON booleans are Python bools, which are also ints; keep them out of "number".
    if kind == "number" and isinstance(value, bool):
        return False
    return isinstance(value, _KIND_TYPES[kind])


async def _await(awaitable: Awaitable[Sequence[SendResult]], seconds: float) -> list[SendResult]:
    return list(await asyncio.wait_for(awaitable, seconds))


def _window(declared: ChannelType) -> SendWindow:
    """A type's default window, checked once as it is loaded; PluginError naming what is wrong."""
    assert declared.default_window
    window, problems = SendWindow.check(declared.default_window, f"{declared.name}.default_window")
    if window is None:
        raise PluginError(
            "channel type declares a bad default window: "
            + "; ".join(f"{p.field}: {p.description}" for p in problems)
        )
    return window
