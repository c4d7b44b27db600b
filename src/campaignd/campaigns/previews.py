"""A channel's messages outside any campaign run: the preview of one recipient's message, and
test sends to a few addresses."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterable, Sequence

from campaignd import errors, loops
from campaignd.audience.contacts import ContactFieldError, normalise_email, normalise_phone
from campaignd.campaigns.operations import CampaignManager
from campaignd.config import Settings
from campaignd.engine.transports import Transports, send_once
from campaignd.errors import ApiError, Code, FieldViolation
from campaignd.lifecycle import Operation
from campaignd.plugin import ChannelInfo, ContentError, Recipient, Rendered, SendStatus, TemplateError
from campaignd.plugin.manager import PluginCallError
from campaignd.store import contacts as contact_store


@dataclasses.dataclass(frozen=True)
class AddressResult:
    """What became of a test send to one address."""

    address: str
    accepted: bool
    detail: str  # the provider's id when accepted, else its error


class Previews:
    """Previews and test sends of a campaign's channels."""

    def __init__(
        self,
        manager: CampaignManager,
        transports: Transports,
        settings: Callable[[], Settings],
        home: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.manager = manager
        self.transports = transports
        self.settings = settings
        # The event loop the plugins, their renderer and the transports belong to; the API calls
        # from its own, so what uses them runs on this one (None: the caller's).
        self.home = home

    async def preview(self, campaign_id: str, channel_id: str, address: str) -> Rendered:
        """The message the channel would send to `address` (with its contact's fields, if any)."""
        record = await self.manager.get(campaign_id)
        channel = record.channel(channel_id)
        if channel is None:
            raise ApiError(Code.NOT_FOUND, "NOT_FOUND", f"{record.name} has no channel {channel_id!r}")
        declared = self.manager.plugins.types[channel.type]
        [recipient] = await self._recipients(declared.address, [address], "address")
        info = ChannelInfo(record.name, channel.channel_id, channel.type, channel.content)
        rendered = await self._render(info, recipient)
        if rendered is None:
            raise ApiError(
                Code.FAILED_PRECONDITION,
                "PLUGIN_ERROR",
                f"channel type {channel.type!r} cannot render messages",
            )
        return rendered

    async def test_send(
        self, campaign_id: str, channel_id: str, addresses: Sequence[str]
    ) -> list[AddressResult]:
        """Send a DRAFT channel's message to `addresses`, through its transports, once each."""
        record = await self.manager.get(campaign_id)
        [(channel, _)] = self.manager.decide(record, Operation.TEST_SEND, channel_id)
        declared = self.manager.plugins.types[channel.type]
        problems = self.manager.launcher.channel_problems(channel)
        if problems:
            raise ApiError(
                Code.FAILED_PRECONDITION,
                "CHANNEL_INCOMPLETE",
                "the channel cannot send until these are fixed",
                violations=problems,
            )
        recipients = await self._recipients(declared.address, addresses, "addresses")
        info = ChannelInfo(record.name, channel.channel_id, channel.type, channel.content)
        # Rendered first, so that a template that fails or overruns a limit for one of the
        # addresses is refused before anything is sent. Other problems of one address (one the
        # provider cannot take) stay that address's answer, as the plugin reports them.
        await asyncio.gather(
            *(self._render(info, recipient, templates_only=True) for recipient in recipients)
        )
        try:
            results = await loops.run_on(
                self.home,
                send_once(
                    self.manager.plugins,
                    self.transports,
                    info,
                    channel.transports,
                    recipients,
                    self.settings().engine.sending_timeout,
                ),
            )
        except PluginCallError as exc:
            raise ApiError(Code.UNAVAILABLE, "PLUGIN_ERROR", str(exc)) from None
        by_id = {r.message_id: r for r in results}
        answers = []
        for recipient in recipients:
            result = by_id.get(recipient.message_id)
            accepted = result is not None and result.status in (SendStatus.SENT, SendStatus.DELIVERED)
            detail = "" if result is None else (result.provider_id if accepted else result.error)
            answers.append(AddressResult(recipient.address, accepted, detail))
        return answers

    async def _render(
        self, info: ChannelInfo, recipient: Recipient, *, templates_only: bool = False
    ) -> Rendered | None:
        """A channel's message for one recipient, or None when its type renders no previews;
        INVALID_ARGUMENT naming the content (and the field, when known) when a template fails or
        goes over a limit, or (unless `templates_only`, then None) on another content problem."""
        try:
            return await loops.run_on(self.home, self.manager.plugins.render(info, recipient))
        except ValueError as exc:
            if templates_only and not isinstance(exc, TemplateError):
                return None
            path = f"campaign.channels[{info.channel_id}].content"
            name = exc.field if isinstance(exc, ContentError) else ""
            raise errors.invalid_argument(
                [FieldViolation(f"{path}.{name}" if name else path, str(exc))]
            ) from None
        except PluginCallError as exc:
            raise ApiError(Code.FAILED_PRECONDITION, "PLUGIN_ERROR", str(exc)) from None

    async def _recipients(self, kind: str, addresses: Sequence[str], field: str) -> list[Recipient]:
        """Recipients outside any campaign: each address normalised for its `kind`, with the fields
        of the contact that has it, if any; negative message ids."""
        normalised = _normalised(addresses, kind, self.settings().audience.default_region, field)
        contacts = await self.manager.db.read(
            lambda conn: contact_store.contacts_by_address(conn, kind, normalised)
        )
        return [
            Recipient(-(index + 1), address, contacts.get(address, {}), 1)
            for index, address in enumerate(normalised)
        ]


def _normalised(addresses: Iterable[str], kind: str, default_region: str, field: str) -> list[str]:
    """The addresses normalised for `kind`; INVALID_ARGUMENT naming each that is not one."""
    problems = []
    found = []
    for index, address in enumerate(addresses):
        try:
            found.append(
                normalise_email(address) if kind == "email" else normalise_phone(address, default_region)
            )
        except ContactFieldError as exc:
            problems.append(
                FieldViolation(f"{field}[{index}]" if field == "addresses" else field, exc.reason)
            )
    if problems:
        raise errors.invalid_argument(problems)
    return found
