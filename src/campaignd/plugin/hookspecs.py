"""Hook specifications: the contract between campaignd and channel plugins.

Each hook says when it is called and what its result means. Hooks are called with keyword
arguments, so a plugin may accept only the arguments it needs and new arguments can be added
without breaking older plugins.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence

from campaignd.plugin import (
    ChannelInfo,
    ChannelSemantics,
    ChannelType,
    Content,
    FieldViolation,
    Gate,
    Recipient,
    SendResult,
    hookspec,
)


@hookspec
def campaignd_channel_types() -> list[ChannelType]:
    """Declare the channel types this plugin provides.

    Called once when the daemon loads plugins. A channel type name must be unique across all
    loaded plugins; the daemon refuses to start when two plugins declare the same name.
    """
    raise NotImplementedError


@hookspec(firstresult=True)
def campaignd_channel_semantics(channel_type: str) -> ChannelSemantics | None:
    """Return the lifecycle choices of `channel_type` (SPEC §6.3), or None if it is not yours.

    `restartable`: whether a STOPPED channel may be restarted, re-sending to every recipient not
    yet sent (False: STOPPED is final). `edit_while_scheduled`: what editing a SCHEDULED channel
    does: return it to DRAFT first, allow only the schedule to change, or allow settings and
    schedule to change while it stays SCHEDULED. The first non-None answer wins; channel types
    whose plugin answers nothing get the defaults (not restartable, edit returns to DRAFT).
    """
    raise NotImplementedError


@hookspec
def campaignd_validate_channel(channel_type: str, content: Content, launching: bool) -> list[FieldViolation]:
    """Return every problem with a channel's content, or an empty list.

    Called when a channel is created or changed (`launching` False: content may still be
    incomplete) and before it is scheduled or launched (`launching` True: it must be complete).
    The daemon has already checked the fields declared by the channel type (required, kind,
    length); this hook adds the type's own rules. Field paths are relative to the content,
    e.g. `subject`. Plugins return an empty list for channel types that are not theirs.
    """
    raise NotImplementedError


@hookspec(firstresult=True)
def campaignd_send(
    channel_type: str, channel: ChannelInfo, recipients: Sequence[Recipient], gate: Gate
) -> Awaitable[Sequence[SendResult]] | None:
    """Send a batch of messages of `channel_type`; return None at once when the type is not yours.

    Otherwise return an awaitable (e.g. call an ``async def``) that gives one SendResult per
    recipient. Before starting each message, ``await gate.admit()``; when it returns True start
    that send at once, with no other await in between; when it returns False do not start it and
    report it NOT_STARTED. This is what makes Pause a barrier: once the Pause call has returned,
    the gate admits nothing. The daemon records every result in one transaction when the awaitable
    finishes. An exception, or an awaitable that does not finish within the daemon's
    `[engine] sending_timeout` (plus the time the batch spends waiting for its rate), fails the
    channel (not the daemon) with the error kept.
    """
    raise NotImplementedError
