"""The voice channel for campaignd: calls placed by baresip through a SIP trunk, a recorded or
spoken prompt played on answer, outcomes and retries. Configuration and behaviour: docs/voice.md."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Awaitable, Sequence
from typing import Any

from campaignd.plugin import (
    ChannelInfo,
    ChannelSemantics,
    ChannelType,
    Content,
    EditPolicy,
    EventSink,
    FieldViolation,
    Gate,
    Options,
    Recipient,
    Rendered,
    Renderer,
    SendResult,
    TemplateError,
    Transport,
    hookimpl,
)
from campaignd.plugin.templates import check_template
from campaignd_voice import settings
from campaignd_voice.baresip import Baresip
from campaignd_voice.calls import send_batch
from campaignd_voice.prompts import PromptError, Prompts, check_wav, wav_seconds
from campaignd_voice.settings import SipSettings, VoiceContent

try:
    __version__ = importlib.metadata.version("campaignd-voice")
except importlib.metadata.PackageNotFoundError:
    __version__ = "0"

# SendResult.outcome, talk_time and retry_delay; admit(message_id=...).
CAMPAIGND_HOOK_API = 3
TYPE = settings.TYPE


@hookimpl
def campaignd_channel_types() -> list[ChannelType]:
    """The voice channel type."""
    return [
        ChannelType(
            TYPE,
            address="phone",
            fields=settings.CONTENT_FIELDS,
            description="voice calls over SIP through baresip: a recorded or spoken prompt on answer",
            version=__version__,
            capabilities=frozenset(),
            default_window=settings.DEFAULT_WINDOW,
            options=settings.TYPE_OPTIONS,
            uses_transports=True,
            transport_options=settings.TRANSPORT_OPTIONS,
        )
    ]


@hookimpl
def campaignd_channel_semantics(channel_type: str) -> ChannelSemantics | None:
    """Stopping is final; a SCHEDULED voice channel may change its settings and start time and
    stay SCHEDULED (SPEC §6.3)."""
    if channel_type != TYPE:
        return None
    return ChannelSemantics(restartable=False, edit_while_scheduled=EditPolicy.SETTINGS_AND_SCHEDULE)


@hookimpl
def campaignd_validate_options(
    channel_type: str, options: Options, transport: str | None
) -> list[FieldViolation]:
    """Check [channel_types.voice] (`transport` None) or one voice transport's options."""
    if channel_type != TYPE:
        return []
    if transport is None:
        return settings.check_type_options(options)
    return settings.check_transport_options(options)


@hookimpl
def campaignd_validate_channel(
    channel_type: str, content: Content, launching: bool, options: Options
) -> list[FieldViolation]:
    """An E.164 caller id, one prompt (a playable WAV file or a text template that compiles,
    with espeak-ng installed), and timings within bounds."""
    if channel_type != TYPE:
        return []
    problems: list[FieldViolation] = []
    caller_id = content.get("caller_id")
    if caller_id not in (None, "") and not settings.is_e164(caller_id):
        problems.append(FieldViolation("caller_id", "must be an E.164 number like +14155550100"))
    audio, text = content.get("audio"), content.get("text")
    if audio and text:
        problems.append(FieldViolation("text", "give the prompt as audio or as text, not both"))
    if isinstance(audio, str) and audio:
        path_problems = settings.check_prompt_path("audio", audio)
        problems += path_problems
        if not path_problems:
            problem = check_wav(audio)
            if problem:
                problems.append(FieldViolation("audio", problem))
    if isinstance(text, str) and text:
        problem = check_template(text)
        if problem:
            problems.append(FieldViolation("text", problem))
        elif settings.espeak_program(options) is None:
            problems.append(
                FieldViolation(
                    "text",
                    "espeak-ng is not installed, so text cannot be spoken: install it"
                    " (Debian: apt install espeak-ng) or give the prompt as audio",
                )
            )
    voice = content.get("voice")
    if voice is not None and (
        not isinstance(voice, str) or not voice.replace("-", "").replace("+", "").isalnum()
    ):
        problems.append(FieldViolation("voice", "must be an espeak-ng voice name such as en or en-us"))
    problems += settings.check_numbers(content)
    if launching and not audio and not text:
        problems.append(FieldViolation("audio", "a prompt is required: set audio (a WAV file) or text"))
    return problems


@hookimpl
def campaignd_render(
    channel_type: str, channel: ChannelInfo, recipient: Recipient, options: Options, renderer: Renderer
) -> Awaitable[Rendered] | None:
    """What `recipient` would hear: the prompt's words, rendered by `renderer`, or its file;
    ValueError (a TemplateError) when the template fails."""
    if channel_type != TYPE:
        return None
    return _render(channel, recipient, options, renderer)


async def _render(
    channel: ChannelInfo, recipient: Recipient, options: Options, renderer: Renderer
) -> Rendered:
    content = VoiceContent.from_content(channel.content)
    summary = f"call {recipient.address} from {content.caller_id}"
    if content.audio:
        try:
            length = f", {wav_seconds(content.audio):.1f} s"
        except (OSError, EOFError, ValueError):
            length = ""
        return Rendered(summary=summary, text=f"plays {content.audio}{length}")
    [spoken] = await Prompts(content, options, renderer).texts_for([recipient])
    if isinstance(spoken, TemplateError | PromptError):
        raise spoken
    return Rendered(summary=summary, text=spoken, data=spoken.encode())


@hookimpl
def campaignd_open_transport(
    channel_type: str, transport: Transport, events: EventSink
) -> Awaitable[Baresip] | None:
    """A baresip for a sip transport; it starts (or attaches) when the first call needs it.
    Calls report everything as they end, so no inbound events come from it."""
    if channel_type != TYPE:
        return None
    return _open(transport)


async def _open(transport: Transport) -> Baresip:
    settings = SipSettings.from_options(transport.options, transport.concurrency)
    client = Baresip(transport.name, settings, rate=transport.rate)
    if client.settings.attach:
        # An attached baresip that cannot be reached is known at once: the daemon rests the transport.
        await client.control()
    return client


@hookimpl
def campaignd_close_transport(channel_type: str, transport: Transport, client: Any) -> Awaitable[None] | None:
    """Stop the transport's baresip (or leave an attached one)."""
    if channel_type != TYPE or not isinstance(client, Baresip):
        return None
    return client.close()


@hookimpl
def campaignd_send(
    channel_type: str,
    channel: ChannelInfo,
    recipients: Sequence[Recipient],
    gate: Gate,
    transport: Transport | None,
    client: Any,
    options: Options,
    renderer: Renderer,
) -> Awaitable[list[SendResult]] | None:
    """Call a batch of recipients through the transport's baresip, text prompts rendered by
    `renderer`."""
    if channel_type != TYPE:
        return None
    return _send(channel, recipients, gate, client, options, renderer)


async def _send(
    channel: ChannelInfo,
    recipients: Sequence[Recipient],
    gate: Gate,
    client: Any,
    options: Options,
    renderer: Renderer,
) -> list[SendResult]:
    if not isinstance(client, Baresip):
        raise TypeError(f"voice channels call through a sip transport, not {type(client).__name__}")
    content = VoiceContent.from_content(channel.content)
    return await send_batch(client, content, Prompts(content, options, renderer), recipients, gate)
