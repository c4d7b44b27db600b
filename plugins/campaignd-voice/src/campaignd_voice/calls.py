"""Placing calls: one per recipient, paced by the gate, at most the transport's concurrency at once,
each followed from dialling to hang-up and read as an outcome (SPEC §3.3)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from campaignd.plugin import Gate, Recipient, SendResult, SendStatus, TemplateError
from campaignd_voice.baresip import Baresip, BaresipError, CommandError, Control, Event
from campaignd_voice.prompts import PromptError, Prompts
from campaignd_voice.settings import VoiceContent

HANGUP_WAIT = 10.0  # seconds baresip has to report a call closed after we hang it up
BUSY_CODES = frozenset({486, 600})
SILENT_LIMIT = 2  # calls in a row without any answer from the trunk before it counts as unreachable
_STATUS = re.compile(r"(?P<code>[3-6][0-9]{2})\b ?(?P<text>.*)")

ANSWERED = "answered"
BUSY = "busy"
NO_ANSWER = "no_answer"
UNREACHABLE = "unreachable"
REJECTED = "rejected"
TIMED_OUT = "timed_out"


@dataclass
class _Call:
    """What was seen of one call."""

    dialled_at: float
    ringing: bool = False
    answered_at: float | None = None
    closed_at: float | None = None
    reason: str = ""  # baresip's reason when it closed, e.g. "486 Busy Here"
    hung_up_for: str = ""  # why we hung up, when we did
    lost: bool = False  # baresip went away while the call was up


async def send_batch(
    client: Baresip, content: VoiceContent, prompts: Prompts, recipients: Sequence[Recipient], gate: Gate
) -> list[SendResult]:
    """Call each recipient; one result each, in order.

    Each call's user agent is made before the call is admitted; once admitted, its dial goes to
    baresip at once and is acknowledged before the next call is admitted, so the transport's
    rate holds at the trunk and not only at the gate. Each call is then followed in a task."""
    results: dict[int, SendResult] = {}
    calls: dict[int, asyncio.Task[SendResult]] = {}
    closed = False
    # A later batch (after a reload, or once a rest is over) tries the trunk again with one call.
    client.silent_calls = min(client.silent_calls, SILENT_LIMIT - 1)
    texts = await prompts.texts_for(recipients)
    try:
        for recipient, text in zip(recipients, texts, strict=True):
            if closed:
                results[recipient.message_id] = SendResult(recipient.message_id, SendStatus.NOT_STARTED)
                continue
            if isinstance(text, TemplateError):
                results[recipient.message_id] = SendResult(
                    recipient.message_id, SendStatus.FAILED, error=str(text), reason="template_error"
                )
                continue
            try:
                await client.control()
            except BaresipError as exc:
                results[recipient.message_id] = _unusable(recipient, exc)
                continue
            try:
                if isinstance(text, PromptError):
                    raise text
                prompt = await prompts.file_for(text)
            except (PromptError, OSError) as exc:
                results[recipient.message_id] = SendResult(
                    recipient.message_id, SendStatus.FAILED, error=str(exc), reason="prompt_failed"
                )
                continue
            await client.slots.acquire()
            try:
                outcome, task = await _start_call(client, content, recipient, prompt, gate)
            except BaseException:
                client.slots.release()
                raise
            if task is None:
                client.slots.release()
                if outcome is None:
                    closed = True
                    outcome = SendResult(recipient.message_id, SendStatus.NOT_STARTED)
                results[recipient.message_id] = outcome
                continue
            calls[recipient.message_id] = task
        for message_id, task in calls.items():
            results[message_id] = await task
    finally:
        for task in calls.values():
            task.cancel()
    return [results[r.message_id] for r in recipients]


def _unusable(recipient: Recipient, exc: BaresipError) -> SendResult:
    """The result of a call not placed because baresip could not be had."""
    return SendResult(
        recipient.message_id,
        SendStatus.RETRY,
        error=str(exc),
        reason="transport_failed" if exc.fatal else UNREACHABLE,
        fatal=exc.fatal,
        transport_down=not exc.fatal,
    )


async def _start_call(
    client: Baresip, content: VoiceContent, recipient: Recipient, prompt: str, gate: Gate
) -> tuple[SendResult | None, asyncio.Task[SendResult] | None]:
    """Make the call's user agent, wait for its turn and the gate, dial: the task that follows
    the dialled call (holding one of the client's slots, released when it ends), or the result
    of a call that was not dialled (None when the gate closed)."""
    try:
        control = await client.control()
    except BaresipError as exc:
        return _unusable(recipient, exc), None
    settings = client.settings
    aor = client.next_aor()
    events = control.watch(aor)
    dialled = False
    try:
        try:
            await control.command("uanew", settings.account(aor, caller_id=content.caller_id, prompt=prompt))
        except CommandError as exc:
            return SendResult(
                recipient.message_id, SendStatus.FAILED, error=str(exc), reason="dial_failed"
            ), None
        except BaresipError as exc:
            return _unusable(recipient, exc), None
        async with client.turn():
            if client.silent_calls >= SILENT_LIMIT:
                # The trunk answered none of the last calls: dial no more into the void.
                error = f"the trunk {settings.trunk} did not answer the last {client.silent_calls} calls"
                return _unusable(recipient, BaresipError(error, fatal=True)), None
            if not await gate.admit(message_id=recipient.message_id):
                return None, None
            dialling = False
            try:
                async with control.sequence:
                    # A dial goes through the user agent chosen last: nothing may come in between.
                    await control.command("uafind", aor)
                    dialling = True
                    client.dialling()
                    await control.command("dial", settings.target(recipient.address))
            except CommandError as exc:
                return _dial_failed(recipient, exc), None
            except BaresipError as exc:
                if not dialling:
                    return _unusable(recipient, exc), None
                return _timed_out(recipient, str(exc)), None
        dialled = True
        return None, asyncio.create_task(
            _follow_and_release(client, control, events, aor, content, recipient)
        )
    finally:
        if not dialled:
            await _drop(control, aor)


def _dial_failed(recipient: Recipient, exc: CommandError) -> SendResult:
    return SendResult(recipient.message_id, SendStatus.FAILED, error=str(exc), reason="dial_failed")


async def _drop(control: Control, aor: str) -> None:
    """Forget a call's user agent."""
    control.unwatch(aor)
    if not control.closed.is_set():
        with contextlib.suppress(BaresipError, CommandError):
            await control.command("uadel", aor)


async def _follow_and_release(
    client: Baresip,
    control: Control,
    events: asyncio.Queue[Event | None],
    aor: str,
    content: VoiceContent,
    recipient: Recipient,
) -> SendResult:
    try:
        try:
            call = await _follow(control, events, aor, content)
        finally:
            await _drop(control, aor)
        result = outcome(recipient, content, call)
    finally:
        client.slots.release()
    if result.outcome == UNREACHABLE:
        client.silent_calls += 1
    elif result.outcome in (ANSWERED, BUSY, NO_ANSWER, REJECTED):
        client.silent_calls = 0
    return result


def _timed_out(recipient: Recipient, why: str) -> SendResult:
    # Whether the call went out is unknown: it ends here and is never dialled again by itself.
    return SendResult(
        recipient.message_id,
        SendStatus.FAILED,
        error=f"the call's end is unknown: {why}",
        reason=TIMED_OUT,
        outcome=TIMED_OUT,
    )


async def _hang_up(control: Control, aor: str) -> None:
    with contextlib.suppress(BaresipError, CommandError):
        async with control.sequence:
            await control.command("uafind", aor)
            await control.command("hangup")


async def _follow(
    control: Control, events: asyncio.Queue[Event | None], aor: str, content: VoiceContent
) -> _Call:
    """Watch one call until it closes: hang up at the ring timeout and at the longest duration."""
    call = _Call(dialled_at=time.monotonic())
    deadline = call.dialled_at + content.ring_timeout
    while True:
        try:
            event = await asyncio.wait_for(events.get(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            if call.hung_up_for:
                # baresip never said the call closed: it is over as far as we can tell.
                call.closed_at = time.monotonic()
                return call
            call.hung_up_for = "max_call_duration" if call.answered_at is not None else "ring_timeout"
            await _hang_up(control, aor)
            deadline = time.monotonic() + HANGUP_WAIT
            continue
        if event is None:
            call.lost = True
            call.closed_at = time.monotonic()
            return call
        if event.type in ("CALL_RINGING", "CALL_PROGRESS"):
            call.ringing = True
        elif event.type == "CALL_ESTABLISHED" and call.answered_at is None:
            call.answered_at = event.time
            if not call.hung_up_for:
                deadline = event.time + content.max_call_duration
        elif event.type == "CALL_CLOSED":
            call.closed_at = event.time
            call.reason = event.param
            return call


def outcome(recipient: Recipient, content: VoiceContent, call: _Call) -> SendResult:
    """What a followed call comes to (SPEC §3.3)."""
    message_id = recipient.message_id
    if call.lost:
        # baresip went away holding the call; the call may have reached the recipient or not.
        return _timed_out(recipient, "baresip was lost while it held the call")
    if call.answered_at is not None:
        talk = max(0.0, (call.closed_at or call.answered_at) - call.answered_at)
        return SendResult(message_id, SendStatus.DELIVERED, reason=ANSWERED, outcome=ANSWERED, talk_time=talk)
    if call.hung_up_for == "ring_timeout":
        if call.ringing:
            return _retry_or_fail(
                recipient, content, NO_ANSWER, f"no answer within {content.ring_timeout:g} s"
            )
        return SendResult(
            message_id,
            SendStatus.FAILED,
            error=f"the trunk gave no answer within {content.ring_timeout:g} s",
            reason=UNREACHABLE,
            outcome=UNREACHABLE,
            fatal=True,
        )
    status = _STATUS.match(call.reason)
    if status is None:
        # No SIP status: the request never got a final answer ("Connection timed out").
        return SendResult(
            message_id,
            SendStatus.FAILED,
            error=f"the trunk did not answer: {call.reason or 'no reason given'}",
            reason=UNREACHABLE,
            outcome=UNREACHABLE,
            fatal=True,
        )
    code = int(status["code"])
    if code in BUSY_CODES:
        return _retry_or_fail(recipient, content, BUSY, call.reason)
    return SendResult(
        message_id, SendStatus.FAILED, error=call.reason, reason=f"sip_{code}", outcome=REJECTED
    )


def _retry_or_fail(recipient: Recipient, content: VoiceContent, what: str, error: str) -> SendResult:
    if recipient.attempt < content.max_attempts:
        return SendResult(
            recipient.message_id,
            SendStatus.RETRY,
            error=error,
            reason=what,
            outcome=what,
            retry_delay=content.retry_delay,
        )
    return SendResult(recipient.message_id, SendStatus.FAILED, error=error, reason=what, outcome=what)
