"""A channel type whose default send window is open now in Tokyo and closed in São Paulo — a double.

Loaded by the daemon under test (`[plugins] load`), it declares `test-quiet`, which sends like
`test-email` of `campaignd.testing.channels` but carries a default window, as SMS and voice carry
quiet hours. The window is computed when the module is imported: two hours around the current
local time in Asia/Tokyo, which is then closed in America/Sao_Paulo (twelve hours behind).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Sequence
from zoneinfo import ZoneInfo

from campaignd.plugin import ChannelInfo, ChannelType, Gate, Recipient, SendResult, hookimpl
from campaignd.testing import channels

_local = dt.datetime.now(ZoneInfo("Asia/Tokyo"))
WINDOW = {
    "start_time": (_local - dt.timedelta(hours=1)).strftime("%H:%M"),
    "end_time": (_local + dt.timedelta(hours=1)).strftime("%H:%M"),
}


@hookimpl
def campaignd_channel_types() -> list[ChannelType]:
    """The one type, with its default window."""
    [email] = [t for t in channels.campaignd_channel_types() if t.name == "test-email"]
    return [ChannelType("test-quiet", address="email", fields=email.fields, default_window=WINDOW)]


@hookimpl
def campaignd_send(
    channel_type: str, channel: ChannelInfo, recipients: Sequence[Recipient], gate: Gate
) -> Awaitable[list[SendResult]] | None:
    """Send as the test double does."""
    if channel_type != "test-quiet":
        return None
    return channels._send(channel.content, recipients, gate)
