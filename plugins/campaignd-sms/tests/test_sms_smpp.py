"""Sending through a scripted SMSC: receipts, parts, throttling, errors, lost connections,
refused binds, replies."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Sequence
from typing import Any

import campaignd_sms
from campaignd_sms import smpp
from sms_pool import renderer
from smsc import ESME_RINVDSTADR, ESME_RTHROTTLED, Answer, Smsc, Submitted

from campaignd.plugin import (
    ChannelInfo,
    EventKind,
    InboundEvent,
    Recipient,
    SendResult,
    SendStatus,
    Transport,
)


class Events:
    """An EventSink that keeps what it is given."""

    def __init__(self) -> None:
        self.events: list[InboundEvent] = []

    async def record(self, channel_type: str, events: Sequence[InboundEvent]) -> None:
        """Keep the events."""
        assert channel_type == "sms"
        self.events.extend(events)

    def of(self, kind: EventKind) -> list[InboundEvent]:
        """The events of one kind."""
        return [e for e in self.events if e.kind is kind]


class Gate:
    """A gate that admits everything and remembers the weights it was asked for."""

    def __init__(self) -> None:
        self.weights: list[float] = []

    async def admit(self, weight: float = 1.0, message_id: int | None = None) -> bool:
        """Admit."""
        self.weights.append(weight)
        return True


def transport(smsc: Smsc, **options: Any) -> Transport:
    """An smpp transport to the SMSC."""
    base = {
        "kind": "smpp",
        "host": "127.0.0.1",
        "port": smsc.port,
        "system_id": "campaignd",
        "password": smsc.password,
        "timeout": 3,
    }
    return Transport("smsc", "sms", rate=0, concurrency=10, options={**base, **options})


def channel(text: str = "Hello {{ contact.first_name }}", sender: str = "Shop") -> ChannelInfo:
    """An sms channel."""
    return ChannelInfo("campaigns/c1", "sms", "sms", {"text": text, "sender": sender})


def recipients(n: int, first: int = 1) -> list[Recipient]:
    """`n` recipients with numbers +1415555xxxx."""
    return [
        Recipient(i, f"+1415555{i:04d}", {"attributes": {"first_name": f"Ada{i}"}}, 1)
        for i in range(first, first + n)
    ]


async def run(
    smsc: Smsc,
    batches: Sequence[Sequence[Recipient]],
    *,
    info: ChannelInfo | None = None,
    options: dict[str, Any] | None = None,
    type_options: dict[str, Any] | None = None,
    settle: Callable[[Events], bool] | None = None,
    between: Callable[[], None] | None = None,
    receipts: bool = False,
) -> tuple[list[SendResult], Events]:
    """Open a transport, send the batches one after the other, wait for `settle` (and with
    `receipts`, for the DELIVERED event of every message the sends left SENT), close."""
    events = Events()
    client = await smpp_client(smsc, events, **(options or {}))
    results: list[SendResult] = []
    try:
        for batch in batches:
            results += await send(client, batch, info, type_options)
            if between:
                between()
        if settle is not None or receipts:
            async with asyncio.timeout(10):
                # The sink is filled by the transport's own task: poll what it has.
                while not (settle is None or settle(events)) or (  # noqa: ASYNC110
                    receipts and not all_delivered(results, events)
                ):
                    await asyncio.sleep(0.02)
    finally:
        await close(client)
    return results, events


def by_id(results: Sequence[SendResult]) -> dict[int, SendResult]:
    """Results by message id."""
    return {r.message_id: r for r in results}


# Accepted by the SMSC: DELIVERED at once when every part's receipt came before the send returned.
ACCEPTED = {SendStatus.SENT, SendStatus.DELIVERED}


def delivered(results: Sequence[SendResult], events: Events) -> list[str]:
    """The provider ids of the messages delivered, at once or by a later DELIVERED event."""
    at_once = [r.provider_id for r in results if r.status is SendStatus.DELIVERED]
    return sorted(at_once + [e.provider_id for e in events.of(EventKind.DELIVERED)])


def all_delivered(results: Sequence[SendResult], events: Events) -> bool:
    """Whether every message the sends left SENT has had its DELIVERED event."""
    sent = {r.provider_id for r in results if r.status is SendStatus.SENT}
    return sent <= {e.provider_id for e in events.of(EventKind.DELIVERED)}


def test_delivered_receipts_move_every_message(smsc: Smsc) -> None:
    """Every message is accepted with the SMSC's id and delivered once: at once when its
    receipt came before the send returned, else by a DELIVERED event for that id."""
    results, events = asyncio.run(run(smsc, [recipients(20)], receipts=True))
    assert {r.status for r in results} <= ACCEPTED
    assert delivered(results, events) == sorted(r.provider_id for r in results)
    assert [s.message_id for s in smsc.submits] == sorted(r.provider_id for r in results)
    first = smsc.submits[0]
    assert (first.source, first.source_ton, first.data_coding) == ("Shop", 5, 0)
    assert first.destination.startswith("1415555")
    assert first.short_message == b"Hello Ada1"


def test_failed_receipts_fail_with_their_stat(smsc: Smsc) -> None:
    """UNDELIV and EXPIRED receipts become FAILED events with the stat as reason and the error."""

    def script(submit: Submitted, count: int) -> Answer:
        return (
            Answer(stat="UNDELIV", err="001") if submit.destination.endswith("1") else Answer(stat="EXPIRED")
        )

    results, events = asyncio.run(run(smsc, [recipients(4)], receipts=True))
    assert {r.status for r in results} <= ACCEPTED
    smsc.script = script
    results, events = asyncio.run(run(smsc, [recipients(4, first=11)], settle=lambda e: len(e.events) == 4))
    failed = {e.provider_id: e for e in events.of(EventKind.FAILED)}
    ids = by_id(results)
    assert failed[ids[11].provider_id].reason == "UNDELIV"
    assert failed[ids[11].provider_id].detail == "receipt stat:UNDELIV err:001"
    assert {failed[ids[i].provider_id].reason for i in (12, 13, 14)} == {"EXPIRED"}


def test_a_receipt_before_the_response_is_not_lost(smsc: Smsc) -> None:
    """Receipts the SMSC sends before its submit_sm_resp deliver their messages at once: the
    send reports them DELIVERED with the SMSC's ids, and no event is needed."""
    smsc.script = lambda submit, count: Answer(receipt_first=True)
    results, events = asyncio.run(run(smsc, [recipients(10)], settle=lambda e: True))
    assert {r.status for r in results} == {SendStatus.DELIVERED}
    assert sorted(r.provider_id for r in results) == sorted(s.message_id for s in smsc.accepted())
    assert events.of(EventKind.DELIVERED) == []


def test_a_multipart_message_is_delivered_at_once_only_with_every_part(smsc: Smsc) -> None:
    """Receipts before the responses for two of a message's three parts, none for the third:
    the send leaves it SENT with its three parts' ids for the daemon to keep, and the two
    receipts are reported as parts, not as the message's."""
    smsc.script = lambda submit, count: Answer(receipt_first=True) if count < 2 else Answer(stat=None)
    results, events = asyncio.run(run(smsc, [recipients(1)], info=channel("x" * 400), settle=lambda e: True))
    assert (results[0].status, results[0].parts) == (SendStatus.SENT, 3)
    ids = [s.message_id for s in smsc.accepted()]
    assert results[0].part_ids == tuple(ids)
    assert [(e.provider_id, e.part) for e in events.of(EventKind.DELIVERED)] == [(i, True) for i in ids[:2]]


def test_a_long_message_goes_in_parts_and_is_delivered_when_every_part_is(smsc: Smsc) -> None:
    """A 3-part GSM-7 text: 3 submits with a concatenation header; DELIVERED only after the
    third part's receipt; the gate is asked for a weight of 3."""
    text = "x" * 400
    smsc.script = lambda submit, count: Answer(stat=None if count == 2 else "DELIVRD")
    results, events = asyncio.run(run(smsc, [recipients(1)], info=channel(text), settle=lambda e: True))
    assert results[0].status is SendStatus.SENT
    assert results[0].parts == 3
    headers = [s.short_message[:6] for s in smsc.submits]
    assert [h[4:] for h in headers] == [b"\x03\x01", b"\x03\x02", b"\x03\x03"]
    assert {s.esm_class & 0x40 for s in smsc.submits} == {0x40}
    assert b"".join(s.short_message[6:] for s in smsc.submits) == b"x" * 400
    ids = [s.message_id for s in smsc.accepted()]
    assert results[0].part_ids == tuple(ids)
    # The daemon delivers the message once every part it keeps is: here two of three.
    assert [(e.provider_id, e.part) for e in events.of(EventKind.DELIVERED)] == [(i, True) for i in ids[:2]]


def test_without_receipts_asked_for_no_parts_are_handed_to_the_daemon_to_keep(smsc: Smsc) -> None:
    """With `registered_delivery = false` no receipt will come: a message in parts is SENT with
    no part ids, so the daemon keeps nothing for it."""
    smsc.script = lambda submit, count: Answer(stat=None)
    results, _ = asyncio.run(
        run(smsc, [recipients(1)], info=channel("x" * 400), options={"registered_delivery": False})
    )
    assert (results[0].status, results[0].parts, results[0].part_ids) == (SendStatus.SENT, 3, ())


def test_sar_concatenation_uses_optional_parameters(smsc: Smsc) -> None:
    """With concatenation "sar", the parts carry sar_* parameters and no header."""
    results, events = asyncio.run(
        run(
            smsc,
            [recipients(1)],
            info=channel("€" * 100),
            type_options={"concatenation": "sar"},
            receipts=True,
        )
    )
    assert results[0].parts == 2
    assert [s.tlvs[0x020F] for s in smsc.submits] == [b"\x01", b"\x02"]
    assert {s.tlvs[0x020E] for s in smsc.submits} == {b"\x02"}
    assert {s.esm_class for s in smsc.submits} == {0}
    assert delivered(results, events) == [smsc.submits[0].message_id]


def test_ucs2_text(smsc: Smsc) -> None:
    """A text with a character outside GSM-7 goes as UCS-2 (data_coding 8)."""
    results, _ = asyncio.run(run(smsc, [recipients(1)], info=channel("Привет 😀")))
    assert results[0].status in ACCEPTED
    assert smsc.submits[0].data_coding == 8
    assert smsc.submits[0].short_message.decode("utf-16-be") == "Привет 😀"


def test_throttling_retries_and_slows_down(smsc: Smsc) -> None:
    """ESME_RTHROTTLED: those messages RETRY with reason throttled, the others go, and none is
    submitted twice."""
    smsc.script = lambda submit, count: Answer(status=ESME_RTHROTTLED) if count < 3 else Answer()
    results, _ = asyncio.run(run(smsc, [recipients(8)]))
    retried = [r for r in results if r.status is SendStatus.RETRY]
    assert len(retried) == 3
    assert {r.reason for r in retried} == {"throttled"}
    assert all("ESME_RTHROTTLED" in r.error for r in retried)
    assert len([r for r in results if r.status in ACCEPTED]) == 5
    assert len(smsc.submits) == 8
    assert len({s.destination for s in smsc.submits}) == 8


def test_permanent_errors_fail_with_the_status_name(smsc: Smsc) -> None:
    """ESME_RINVDSTADR fails that message for good, with the status name as its reason."""
    smsc.script = lambda submit, count: (
        Answer(status=ESME_RINVDSTADR) if submit.destination.endswith("2") else Answer()
    )
    results, _ = asyncio.run(run(smsc, [recipients(3)]))
    ids = by_id(results)
    assert ids[2].status is SendStatus.FAILED
    assert ids[2].reason == "ESME_RINVDSTADR"
    assert {ids[1].status, ids[3].status} <= ACCEPTED


def test_a_dropped_connection_mid_window(smsc: Smsc) -> None:
    """The SMSC drops the connection with submits outstanding: what it accepted is SENT, the
    rest RETRY, and the next batch goes through a new session."""
    smsc.answer_delay = 0.05
    smsc.script = lambda submit, count: Answer(drop=True) if count == 5 else Answer(stat=None)
    results, _ = asyncio.run(run(smsc, [recipients(10)]))
    sent = {r.provider_id for r in results if r.status is SendStatus.SENT}
    assert all(r.status in (SendStatus.SENT, SendStatus.RETRY) for r in results)
    assert len([r for r in results if r.status is SendStatus.RETRY]) >= 1
    assert sent <= {s.message_id for s in smsc.accepted()}
    smsc.script = lambda submit, count: Answer(stat=None)
    before = len(smsc.submits)
    results, _ = asyncio.run(run(smsc, [recipients(3, first=50)]))
    assert {r.status for r in results} == {SendStatus.SENT}
    assert len(smsc.submits) == before + 3


def test_bind_refused_is_fatal(smsc: Smsc) -> None:
    """A wrong password: every message RETRY with fatal and the status name; one bind tried."""
    results, _ = asyncio.run(run(smsc, [recipients(4)], options={"password": "wrong"}))
    assert {r.status for r in results} == {SendStatus.RETRY}
    assert all(r.fatal for r in results)
    assert "ESME_RINVPASWD" in results[0].error
    assert smsc.refused_binds == 1
    assert smsc.submits == []


def test_already_bound_is_tried_again_not_fatal(smsc: Smsc) -> None:
    """An SMSC that allows one session per system_id refuses a second bind with ESME_RALYBND
    while the first is bound: the transport is down for now (RETRY, not fatal), and binds once
    the other session is gone."""
    smsc.single_session = True

    async def scenario() -> tuple[list[SendResult], list[SendResult]]:
        events = Events()
        first = await smpp_client(smsc, events)
        await wait_for(lambda: smsc.binds == 1)
        second = await smpp_client(smsc, events)
        await wait_for(lambda: smsc.refused_binds >= 1)
        refused = await send(second, recipients(2))
        await close(first)
        # reconnect_min is 1 s: the second transport binds again by itself
        await wait_for(lambda: smsc.binds == 2, seconds=5)
        sent = await send(second, recipients(2, first=3))
        await close(second)
        return refused, sent

    refused, sent = asyncio.run(scenario())
    assert {r.status for r in refused} == {SendStatus.RETRY}
    assert not any(r.fatal for r in refused)
    assert all(r.transport_down for r in refused)
    assert "ESME_RALYBND" in refused[0].error
    assert {r.status for r in sent} <= ACCEPTED
    assert len(smsc.accepted()) == 2


async def smpp_client(smsc: Smsc, events: Events, **options: Any) -> Any:
    """An open smpp transport to the SMSC (it binds as it opens)."""
    opened = transport(smsc, **options)
    opening = campaignd_sms.campaignd_open_transport(channel_type="sms", transport=opened, events=events)
    assert opening is not None
    return await opening


async def send(
    client: Any,
    batch: Sequence[Recipient],
    info: ChannelInfo | None = None,
    type_options: dict[str, Any] | None = None,
) -> list[SendResult]:
    """Send one batch through an open transport."""
    sending = campaignd_sms.campaignd_send(
        channel_type="sms",
        channel=info or channel(),
        recipients=batch,
        gate=Gate(),
        transport=None,
        client=client,
        options=type_options or {},
        renderer=renderer(),
    )
    assert sending is not None
    return await sending


async def close(client: Any) -> None:
    """Close an open transport."""
    closing = campaignd_sms.campaignd_close_transport(
        channel_type="sms", transport=client.transport, client=client
    )
    assert closing is not None
    await closing


async def wait_for(condition: Callable[[], bool], seconds: float = 3.0) -> None:
    """Poll `condition` until it holds."""
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


def test_opt_out_and_opt_in_replies(smsc: Smsc) -> None:
    """Replies "Stop", " opt-out! " and "START" become OPTED_OUT, OPTED_OUT and OPTED_IN for
    their numbers; other replies change nothing."""

    def replies() -> None:
        smsc.reply("14155550001", "Stop")
        smsc.reply("14155550002", " opt-out! ")
        smsc.reply("14155550003", "hello there")
        smsc.reply("14155550004", "START", ucs2=True)

    _, events = asyncio.run(
        run(
            smsc,
            [recipients(1)],
            between=replies,
            settle=lambda e: len([x for x in e.events if x.address]) >= 3,
        )
    )
    replies_seen = [(e.kind, e.address) for e in events.events if e.address]
    assert replies_seen == [
        (EventKind.OPTED_OUT, "+14155550001"),
        (EventKind.OPTED_OUT, "+14155550002"),
        (EventKind.OPTED_IN, "+14155550004"),
    ]


def test_enquire_link_when_idle(smsc: Smsc) -> None:
    """A session with nothing to send keeps itself alive with enquire_link."""

    async def scenario() -> None:
        opening = campaignd_sms.campaignd_open_transport(
            channel_type="sms", transport=transport(smsc, enquire_link=0.2), events=Events()
        )
        assert opening is not None
        client = await opening
        sending = campaignd_sms.campaignd_send(
            channel_type="sms",
            channel=channel(),
            recipients=recipients(1),
            gate=Gate(),
            transport=None,
            client=client,
            options={},
            renderer=renderer(),
        )
        assert sending is not None
        assert [r.status in ACCEPTED for r in await sending] == [True]
        await asyncio.sleep(0.7)
        await client.close()

    asyncio.run(scenario())
    assert smsc.enquire_links >= 2


# 93 characters that would render for hours (99,999² iterations), and a gigabyte string.
NESTED_LOOPS = "{% for a in range(99999) %}{% for b in range(99999) %}{% set c = b %}{% endfor %}{% endfor %}"
GIGABYTE = "{{ 'x'.ljust(10**9) }}"


def test_a_template_over_a_limit_fails_only_its_messages(smsc: Smsc) -> None:
    """Rendered by the daemon's render pool, a text that runs past the time limit or needs more
    than the memory limit fails those recipients' messages with reason template_error and submits
    nothing for them; the other recipients' texts are rendered and submitted."""
    text = (
        "{% if contact.slow %}" + NESTED_LOOPS + "{% elif contact.big %}" + GIGABYTE + "{% endif %}"
        "Hello {{ contact.first_name }}"
    )
    batch = recipients(6)
    batch[1].contact["attributes"]["slow"] = True
    batch[4].contact["attributes"]["big"] = True
    results, _ = asyncio.run(run(smsc, [batch], info=channel(text)))
    by = by_id(results)
    assert (by[2].status, by[2].reason) == (SendStatus.FAILED, "template_error")
    assert "the text template took longer than the limit of 0.3 s" in by[2].error
    assert (by[5].status, by[5].reason) == (SendStatus.FAILED, "template_error")
    assert "the text template needed more memory than the limit of 256 MiB" in by[5].error
    assert {by[i].status for i in (1, 3, 4, 6)} <= ACCEPTED
    assert sorted(s.short_message for s in smsc.submits) == [f"Hello Ada{i}".encode() for i in (1, 3, 4, 6)]


def test_a_receipt_reads_the_same_as_through_the_codec() -> None:
    """A delivery receipt with receipted_message_id, message_state and the text in
    message_payload is read by the fast path exactly as aiosmpplib's codec reads it; an inbound
    message is left to the codec."""
    text = b"id:9f sub:001 dlvrd:001 submit date:2512061200 done date:2512061200 stat:UNDELIV err:001"
    tlvs = struct.pack("!HH", 0x001E, 3) + b"9f\x00" + struct.pack("!HHB", 0x0427, 1, 5)
    tlvs += struct.pack("!HH", 0x0424, len(text)) + text

    def deliver(esm_class: int, short: bytes, extra: bytes) -> bytes:
        body = b"\x00\x01\x01+14155550100\x00\x00\x00Shop\x00" + bytes((esm_class, 0, 0))
        body += b"\x00\x00" + bytes((0, 0, 0, 0, len(short))) + short + extra
        return struct.pack("!IIII", 16 + len(body), 5, 0, 9) + body

    receipt = deliver(0x04, b"", tlvs)
    fast = smpp._read_receipt(receipt)
    assert fast is not None
    assert fast == smpp._read_with_codec(receipt, 9)
    assert (fast.receipted_id, fast.message_state, fast.is_receipt) == ("9f", 5, True)
    assert smpp._read_receipt(deliver(0x00, b"STOP", b"")) is None
