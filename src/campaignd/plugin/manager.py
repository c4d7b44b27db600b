"""Loads channel plugins and answers questions about channel types."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import Any

import pluggy

from campaignd import logs
from campaignd.errors import FieldViolation
from campaignd.lifecycle import DEFAULT_SEMANTICS, ChannelSemantics
from campaignd.plugin import (
    ENTRY_POINT_GROUP,
    PROJECT,
    ChannelInfo,
    ChannelType,
    Content,
    Gate,
    Recipient,
    SendResult,
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


class Plugins:
    """The loaded plugins and the channel types they declare."""

    def __init__(self, extra_modules: Iterable[str] = (), *, entry_points: bool = True) -> None:
        self.manager = pluggy.PluginManager(PROJECT)
        self.manager.add_hookspecs(hookspecs)
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
        for declared in self.manager.hook.campaignd_channel_types():
            for channel_type in declared:
                if channel_type.name in self.types:
                    raise PluginError(f"channel type {channel_type.name!r} is declared by two plugins")
                self.types[channel_type.name] = channel_type
        # A hook implementation whose name or arguments match no specification is a plugin bug.
        self.manager.check_pending()

    def semantics(self, channel_type: str) -> ChannelSemantics:
        """The type's §6.3 lifecycle choices; the defaults for a type no plugin answers for."""
        answer: ChannelSemantics | None = self.manager.hook.campaignd_channel_semantics(
            channel_type=channel_type
        )
        return answer or DEFAULT_SEMANTICS

    def default_window(self, channel_type: str) -> dict[str, Any] | None:
        """The send window of a channel type that sets none (e.g. quiet hours for SMS)."""
        declared = self.types.get(channel_type)
        return dict(declared.default_window) if declared and declared.default_window else None

    async def send(
        self,
        channel_type: str,
        channel: ChannelInfo,
        recipients: Sequence[Recipient],
        gate: Gate,
        seconds: float,
    ) -> list[SendResult]:
        """Hand a batch to the plugin of `channel_type`; any error of the plugin is a PluginCallError."""
        try:
            awaitable = self.manager.hook.campaignd_send(
                channel_type=channel_type, channel=channel, recipients=recipients, gate=gate
            )
            if awaitable is None:
                raise PluginCallError(f"no loaded plugin sends channel type {channel_type!r}")
            return await _await(awaitable, seconds)
        except PluginCallError:
            raise
        except TimeoutError:
            raise PluginCallError(f"the {channel_type} plugin gave no result within {seconds:g} s") from None
        except Exception as exc:
            raise PluginCallError(f"the {channel_type} plugin failed: {type(exc).__name__}: {exc}") from exc

    def validate(self, channel_type: str, content: Content, *, launching: bool) -> list[FieldViolation]:
        """Every problem with `content` for `channel_type`; paths are relative to the content."""
        declared = self.types.get(channel_type)
        if declared is None:
            return [
                FieldViolation("type", f"unknown channel type {channel_type!r}; known: {sorted(self.types)}")
            ]
        problems = _check_declared(declared, content, launching=launching)
        for found in self.manager.hook.campaignd_validate_channel(
            channel_type=channel_type, content=content, launching=launching
        ):
            problems.extend(found)
        return problems


def _check_declared(declared: ChannelType, content: Content, *, launching: bool) -> list[FieldViolation]:
    problems = []
    for key, value in content.items():
        spec = declared.field(key)
        if spec is None:
            problems.append(FieldViolation(key, f"not a field of channel type {declared.name!r}"))
            continue
        if not _is_kind(value, spec.kind):
            problems.append(FieldViolation(key, f"must be a {spec.kind}"))
        elif isinstance(value, str) and len(value) > spec.max_length:
            problems.append(FieldViolation(key, f"longer than {spec.max_length} characters"))
    if launching:
        for spec in declared.fields:
            if spec.required and content.get(spec.name) in (None, "", [], {}):
                problems.append(FieldViolation(spec.name, "required"))
    return problems


def _is_kind(value: Any, kind: str) -> bool:
    # JSON booleans are Python bools, which are also ints; keep them out of "number".
    if kind == "number" and isinstance(value, bool):
        return False
    return isinstance(value, _KIND_TYPES[kind])


async def _await(awaitable: Awaitable[Sequence[SendResult]], seconds: float) -> list[SendResult]:
    return list(await asyncio.wait_for(awaitable, seconds))
