"""Channel types for testing the daemon without a provider — a double, not a production channel.

Load with `[plugins] load = ["campaignd.testing.channels"]`. The three types mirror the lifecycle
choices of the built-in channels (SPEC §6.3), so lifecycle behaviour can be checked per type:
`test-email` (stop final, edit returns to DRAFT), `test-sms` (restartable, only the schedule may
change while SCHEDULED) and `test-voice` (stop final, settings may change while SCHEDULED).
"""

from __future__ import annotations

from campaignd.plugin import (
    ChannelSemantics,
    ChannelType,
    Content,
    ContentField,
    EditPolicy,
    FieldViolation,
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
