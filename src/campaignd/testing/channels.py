"""Channel types for testing the daemon without a provider — a double, not a production channel.

Load with `[plugins] load = ["campaignd.testing.channels"]`. The three types mirror the lifecycle
choices of the built-in channels (SPEC §6.3), so lifecycle behaviour can be checked per type:
`test-email` (stop final, edit returns to DRAFT), `test-sms` (restartable, only the schedule may
change while SCHEDULED) and `test-voice` (stop final, settings may change while SCHEDULED).

Sending is simulated, steered by the channel's content: `delay_ms` per message, addresses
containing `fail_matching` fail for good and those containing `defer_matching` are deferred,
`fatal` makes every send a transport failure, `long_words` gives provider ids of 300 characters
and failure reasons of 100 (longer than the daemon keeps), `crash` makes the plugin misbehave ("raise": the
send raises; "hang": it never finishes), and `sink` names a file to which each message that
starts is appended (`<unix time> <address>`), so that tests count at the receiving end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence

from campaignd.plugin import (
    ChannelInfo,
    ChannelSemantics,
    ChannelType,
    Content,
    ContentField,
    EditPolicy,
    FieldViolation,
    Gate,
    Recipient,
    SendResult,
    SendStatus,
    hookimpl,
)

SEMANTICS = {
    "test-email": ChannelSemantics(),
    "test-sms": ChannelSemantics(restartable=True, edit_while_scheduled=EditPolicy.SCHEDULE_ONLY),
    "test-voice": ChannelSemantics(edit_while_scheduled=EditPolicy.SETTINGS_AND_SCHEDULE),
}
_FIELDS = (
    ContentField("text", required=True, max_length=1000, description="the message"),
    ContentField("note", description="free text, not sent"),
    ContentField("delay_ms", kind="number", description="simulated time per send"),
    ContentField("fail_matching", description="addresses containing this fail for good"),
    ContentField("defer_matching", description="addresses containing this are deferred"),
    ContentField("fatal", kind="bool", description="every send fails as a transport error"),
    ContentField("sink", description="file that records each send that starts"),
    ContentField("long_words", kind="bool", description="provider ids and reasons longer than kept"),
    ContentField("crash", description='"raise": sending raises; "hang": sending never finishes'),
)


@hookimpl
def campaignd_channel_types() -> list[ChannelType]:
    """Declare the three test channel types."""
    return [
        ChannelType(
            name,
            address="email" if name == "test-email" else "phone",
            fields=_FIELDS,
            description="test double",
            version="1",
            # Like SMS, the SMS-like double has delivery receipts, so SENT can turn ASSUMED_DELIVERED.
            capabilities=frozenset({"receipts"}) if name == "test-sms" else frozenset(),
        )
        for name in SEMANTICS
    ]


@hookimpl
def campaignd_channel_semantics(channel_type: str) -> ChannelSemantics | None:
    """The §6.3 choices of the test type, None for others."""
    return SEMANTICS.get(channel_type)


@hookimpl
def campaignd_validate_channel(channel_type: str, content: Content, launching: bool) -> list[FieldViolation]:
    """A text that says "invalid" is refused at launch, so tests can provoke a plugin-level violation."""
    if channel_type in SEMANTICS and launching and content.get("text") == "invalid":
        return [FieldViolation("text", "the test channel refuses the text 'invalid'")]
    return []


@hookimpl
def campaignd_send(
    channel_type: str, channel: ChannelInfo, recipients: Sequence[Recipient], gate: Gate
) -> Awaitable[list[SendResult]] | None:
    """Simulate sending for the test types."""
    if channel_type not in SEMANTICS:
        return None
    return _send(channel.content, recipients, gate)


async def _send(content: Content, recipients: Sequence[Recipient], gate: Gate) -> list[SendResult]:
    if content.get("crash") == "raise":
        raise RuntimeError("the test channel was told to crash")
    if content.get("crash") == "hang":
        await asyncio.Event().wait()
    delay = float(content.get("delay_ms") or 0) / 1000
    sink = content.get("sink")
    results = []
    for recipient in recipients:
        if not await gate.admit(message_id=recipient.message_id):
            results.append(SendResult(recipient.message_id, SendStatus.NOT_STARTED))
            continue
        # Started: from here on the message counts as handed to the provider.
        if sink:
            _record(sink, recipient.address)
        if delay:
            await asyncio.sleep(delay)
        results.append(_result(content, recipient))
    return results


def _result(content: Content, recipient: Recipient) -> SendResult:
    if content.get("fatal"):
        return SendResult(
            recipient.message_id, SendStatus.RETRY, error="535 authentication failed", fatal=True
        )
    fail, defer = content.get("fail_matching"), content.get("defer_matching")
    long = bool(content.get("long_words"))
    if fail and fail in recipient.address:
        reason = "rejected".ljust(100, "-") if long else "rejected"
        return SendResult(recipient.message_id, SendStatus.FAILED, error="550 no such user", reason=reason)
    if defer and defer in recipient.address:
        return SendResult(
            recipient.message_id, SendStatus.RETRY, error="451 try again later", reason="deferred"
        )
    provider_id = f"test-{recipient.message_id}"
    if long:
        provider_id = f"{provider_id}-".ljust(300, "x")
    return SendResult(recipient.message_id, SendStatus.SENT, provider_id=provider_id)


def _record(sink: str, address: str) -> None:
    # A short append is one write(2) with O_APPEND: lines from concurrent senders never mix, and
    # it is on disk before the send counts as started, which is what a crash test counts.
    with open(sink, "a", encoding="utf-8") as received:
        received.write(f"{time.time():.6f} {address}\n")
