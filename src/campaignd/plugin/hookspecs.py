"""Hook specifications: the contract between campaignd and channel plugins.

Each hook says when it is called and what its result means. Hooks are called with keyword
arguments, so a plugin may accept only the arguments it needs and new arguments can be added
without breaking older plugins.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any

from campaignd.plugin import (
    ChannelInfo,
    ChannelSemantics,
    ChannelType,
    Content,
    EventSink,
    FieldViolation,
    Gate,
    HttpRoute,
    MessageEventSink,
    Options,
    Recipient,
    Rendered,
    Renderer,
    SendResult,
    Transport,
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
def campaignd_validate_options(
    channel_type: str, options: Options, transport: str | None, http_listener: bool
) -> list[FieldViolation]:
    """Return every problem with options from the config, or an empty list.

    Called at start, by `campaignd check-config` and on reload, once for the type's own options
    (`transport` None: the `[channel_types.<type>]` table) and once per transport of the type
    (`transport` its name: the `[transports.<name>.options]` table). `http_listener` says
    whether the config turns the daemon's HTTP listener on (`[http] address`), for options that
    need it. The daemon has already checked the declared fields and read the secrets. Paths are
    relative to the table, e.g. `port`. A problem stops the start, or makes a reload keep the
    old config.
    """
    raise NotImplementedError


@hookspec
def campaignd_validate_channel(
    channel_type: str, content: Content, launching: bool, options: Options
) -> list[FieldViolation]:
    """Return every problem with a channel's content, or an empty list.

    Called when a channel is created or changed (`launching` False: content may still be
    incomplete) and before it is scheduled or launched (`launching` True: it must be complete).
    The daemon has already checked the fields declared by the channel type (required, kind,
    length); this hook adds the type's own rules, such as a template that does not compile.
    `options` are the type's options from the config. Field paths are relative to the content,
    e.g. `subject`. Plugins return an empty list for channel types that are not theirs.
    """
    raise NotImplementedError


@hookspec(firstresult=True)
def campaignd_render(
    channel_type: str, channel: ChannelInfo, recipient: Recipient, options: Options, renderer: Renderer
) -> Rendered | Awaitable[Rendered] | None:
    """Render the message `recipient` would get from `channel`; None when the type is not yours.

    Used for previews, and before a test send; it must send nothing. Return the Rendered, or an
    awaitable giving it: templates are rendered with `await renderer.render(...)`, never in the
    hook itself, so that a runaway template cannot hold up the daemon. A template error (one
    that fails, or goes over the time or memory limit) is raised as ValueError (TemplateError
    is one) with a message fit for the client, who gets it as INVALID_ARGUMENT.
    """
    raise NotImplementedError


@hookspec(firstresult=True)
def campaignd_open_transport(
    channel_type: str, transport: Transport, events: EventSink
) -> Awaitable[Any] | None:
    """Open a transport of your type; None at once when the type is not yours.

    Otherwise return an awaitable giving the open transport: whatever object the plugin wants
    back, e.g. a pool of connections, which `campaignd_send` receives as `client`. The daemon
    opens a transport when a channel first sends through it, keeps it open while the daemon
    runs, and closes it at shutdown or when a reload changes it. Connect lazily if you like;
    failing here makes the batch's messages RETRY with the transport rested. Inbound events the
    transport receives (receipts, replies) go to `events`.
    """
    raise NotImplementedError


@hookspec(firstresult=True)
def campaignd_close_transport(channel_type: str, transport: Transport, client: Any) -> Awaitable[None] | None:
    """Close what `campaignd_open_transport` opened; None at once when the type is not yours.

    Called once no batch uses `client` any more. Errors are logged and otherwise ignored.
    """
    raise NotImplementedError


@hookspec(firstresult=True)
def campaignd_send(
    channel_type: str,
    channel: ChannelInfo,
    recipients: Sequence[Recipient],
    gate: Gate,
    transport: Transport | None,
    client: Any,
    options: Options,
    renderer: Renderer,
) -> Awaitable[Sequence[SendResult]] | None:
    """Send a batch of messages of `channel_type`; return None at once when the type is not yours.

    For a type that uses transports, every recipient of the batch goes through `transport`, whose
    open form (`campaignd_open_transport`) is `client`; keep at most `transport.concurrency` sends
    in flight. Types without transports get None for both. `options` are the type's options.
    Render the batch's templates with `renderer` (one call for many recipients, not one per
    message); a recipient whose templates fail is reported FAILED with reason `template_error`.

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


@hookspec
def campaignd_http_routes(
    channel_type: str, options: Options, base_url: str, events: MessageEventSink
) -> list[HttpRoute]:
    """Return the routes to mount for `channel_type` on the daemon's HTTP listener, or [] when
    the type is not yours or you serve nothing over HTTP.

    Called once per loaded channel type when the daemon starts with `[http] address` set (never
    when the listener is off). The routes are mounted under `/{channel_type}/`; `base_url` is
    the public URL of that prefix (from `[http] public_url`, without a trailing slash), to put
    in the links you send (an unsubscribe link, a delivery-report callback). `options` are the
    type's options as at start. Handlers record events about messages through `events`; they
    must check what they receive (a bad or forged request gets a 4xx and changes nothing) and
    answer quickly. The listener bounds request bodies to `[http] max_body_bytes`.
    """
    raise NotImplementedError
