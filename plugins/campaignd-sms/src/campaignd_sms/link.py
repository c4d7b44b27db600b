"""An open sms transport: the provider link of its kind (smpp or kannel), and what the provider
reports back, turned into events."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

from campaignd.plugin import (
    EventSink,
    Gate,
    InboundEvent,
    Recipient,
    SendResult,
    SendStatus,
    Transport,
)
from campaignd_sms import settings
from campaignd_sms.encoding import Concatenation, Encoded
from campaignd_sms.kannel import Kannel
from campaignd_sms.receipts import EventQueue, Receipt, Receipts, e164, parse_receipt, reply_kind
from campaignd_sms.settings import Sender, SmppSettings
from campaignd_sms.smpp import Builder, Deliver, Link


class SmsTransport:
    """An open transport of the sms type."""

    def __init__(self, transport: Transport, events: EventSink) -> None:
        self.transport = transport
        self.events = EventQueue(events, settings.TYPE)
        self.receipts = Receipts(self.events)
        self.events.ticks.append(self.receipts)
        self.kind = str(transport.options.get("kind", "smpp"))
        self.smpp: Link | None = None
        self.kannel: Kannel | None = None
        if self.kind == "smpp":
            self.smpp_settings = SmppSettings.from_options(transport.options)
            self.smpp = Link(self.smpp_settings, transport.concurrency, self.delivered, self.receipts.receipt)
        else:
            self.kannel = Kannel(transport, self)

    async def start(self) -> None:
        """Start what must run before the first send: kannel's callback listener, or binding."""
        if self.kannel is not None:
            await self.kannel.start()
        if self.smpp is not None:
            self.smpp.keep_bound()

    async def close(self) -> None:
        """Close the provider link, after handing over what came back."""
        if self.smpp is not None:
            await self.smpp.close()
        if self.kannel is not None:
            await self.kannel.close()
        await self.events.close()

    async def send(
        self,
        messages: Sequence[tuple[Recipient, Encoded]],
        sender: Sender,
        concatenation: Concatenation,
        gate: Gate,
    ) -> list[SendResult]:
        """Send messages, each SENT with the provider's id of its first part."""
        if self.kannel is not None:
            kannel = self.kannel
            return list(
                await asyncio.gather(*(kannel.send(r, encoded, sender, gate) for r, encoded in messages))
            )
        assert self.smpp is not None
        registered = 1 if self.smpp_settings.registered_delivery else 0
        builder = Builder(sender, concatenation, registered)
        references = self.smpp.references
        submissions = [
            builder.build(r.message_id, r.address, encoded, next(references)) for r, encoded in messages
        ]
        call = self.receipts.begin()
        results = []
        try:
            for result, part_ids in await self.smpp.send(submissions, gate):
                if result.status is SendStatus.SENT:
                    if self.receipts.delivered_already(part_ids):
                        # One write for the message instead of a result and then an event.
                        result = SendResult(
                            result.message_id,
                            SendStatus.DELIVERED,
                            provider_id=result.provider_id,
                            parts=result.parts,
                        )
                    else:
                        self.receipts.sent(part_ids)
                        if len(part_ids) > 1 and registered:
                            # Kept by the daemon: a part's receipt finds its message anywhere.
                            result = dataclasses.replace(result, part_ids=tuple(part_ids))
                results.append(result)
        finally:
            self.receipts.end(call)
        return results

    def delivered(self, deliver: Deliver) -> None:
        """A deliver_sm: a receipt for a part, or a reply from a recipient."""
        if deliver.is_receipt:
            receipt = parse_receipt(deliver.text, deliver.receipted_id)
            if receipt is not None:
                self.receipts.receipt(receipt)
            return
        self.reply(deliver.source, deliver.text)

    def receipt(self, receipt: Receipt) -> None:
        """A receipt that came another way (a Kannel DLR)."""
        self.receipts.receipt(receipt)

    def reply(self, source: str, text: str) -> None:
        """An inbound message: an opt-out or opt-in keyword becomes an event for its number."""
        kind = reply_kind(text)
        if kind is None:
            return
        detail = f"reply {text.strip()[:40]!r}"
        self.events.put(InboundEvent(kind, address=e164(source), detail=detail))


async def open_transport(transport: Transport, events: EventSink) -> SmsTransport:
    """Open an sms transport; the provider is reached at the first send."""
    opened = SmsTransport(transport, events)
    await opened.start()
    return opened
