"""The published plugin API: everything a channel plugin may import from campaignd.

A plugin is a module (usually an installed distribution registered under the entry-point group
`campaignd.channels`) whose functions are marked with `hookimpl` and named after the hook
specifications in `campaignd.plugin.hookspecs`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import pluggy

from campaignd.errors import FieldViolation
from campaignd.lifecycle import ChannelSemantics, EditPolicy

PROJECT = "campaignd"
ENTRY_POINT_GROUP = "campaignd.channels"
HOOK_API_VERSION = 1

hookimpl = pluggy.HookimplMarker(PROJECT)
hookspec = pluggy.HookspecMarker(PROJECT)

FieldKind = Literal["string", "number", "bool", "object", "list"]


@dataclass(frozen=True)
class ContentField:
    """One field of a channel type's content."""

    name: str
    kind: FieldKind = "string"
    required: bool = False
    max_length: int = 100_000
    description: str = ""


@dataclass(frozen=True)
class ChannelType:
    """A channel type a plugin provides: its name, which contact address it uses, its content."""

    name: str
    address: Literal["email", "phone"]
    fields: tuple[ContentField, ...] = ()
    description: str = ""
    version: str = ""
    capabilities: frozenset[str] = field(default_factory=frozenset)

    def field(self, name: str) -> ContentField | None:
        """The declared field called `name`, if any."""
        return next((f for f in self.fields if f.name == name), None)


Content = dict[str, Any]

__all__ = [
    "ENTRY_POINT_GROUP",
    "HOOK_API_VERSION",
    "ChannelSemantics",
    "ChannelType",
    "Content",
    "ContentField",
    "EditPolicy",
    "FieldViolation",
    "hookimpl",
    "hookspec",
]
