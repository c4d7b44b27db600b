"""The `smpp` transport: one SMPP 3.4 transceiver session per transport, with a window of
outstanding submit_sm, enquire_link, reconnection with backoff, receipts and inbound messages.

The PDUs of every message and receipt (submit_sm, submit_sm_resp, deliver_sm receipts and
deliver_sm_resp) are written and read here with `struct`, and a test checks them byte for byte
against aiosmpplib's codec; the codec builds the bind, enquire_link and unbind and reads inbound
messages, whose text needs its decoding. Its ESME runner is not used: it takes messages from a
queue one at a time with no window of outstanding requests, splits long texts itself, and
retries a refused bind for ever, where a campaign needs the gate before each submit, its own
part count, and a refused bind reported as fatal.

A batch is sent by one task: it takes a message's places in the window, asks the gate, and
writes the message's parts; the session's protocol reads every PDU that arrived in one call and
gives each answer to its message, which frees its window places at once. No task, future or
timer per message: at tens of thousands of parts a second those cost more than the SMPP itself.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import re
import ssl
import struct
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

from aiosmpplib import (
    BindTransceiver,
    DeliverSm,
    EnquireLink,
    EnquireLinkResp,
    GenericNack,
    PduHeader,
    SmppCommand,
    SmppCommandStatus,
    Unbind,
    UnbindResp,
)

from campaignd.plugin import Gate, SendResult, SendStatus
from campaignd_sms.encoding import UDHI, Concatenation, Encoded, udh
from campaignd_sms.receipts import Receipt
from campaignd_sms.settings import Sender, SmppSettings

log = logging.getLogger("campaignd_sms.smpp")

HEADER = struct.Struct("!IIII")
MAX_PDU = 64 * 1024
SUBMIT_SM, SUBMIT_SM_RESP = 0x00000004, 0x80000004
DELIVER_SM, DELIVER_SM_RESP = 0x00000005, 0x80000005
GENERIC_NACK = 0x80000000
SAR_MSG_REF_NUM, SAR_TOTAL_SEGMENTS, SAR_SEGMENT_SEQNUM = 0x020C, 0x020E, 0x020F
RECEIPTED_MESSAGE_ID, MESSAGE_STATE, MESSAGE_PAYLOAD = 0x001E, 0x0427, 0x0424
TON_INTERNATIONAL, NPI_ISDN = 1, 1

# Statuses that mean "not now": the message is retried later, and for the first two the
# transport slows down.
THROTTLING = frozenset({SmppCommandStatus.ESME_RTHROTTLED, SmppCommandStatus.ESME_RMSGQFUL})
TEMPORARY = THROTTLING | {
    SmppCommandStatus.ESME_RSYSERR,
    SmppCommandStatus.ESME_RX_T_APPN,
    SmppCommandStatus.ESME_RSUBMITFAIL,
    SmppCommandStatus.ESME_RUNKNOWNERR,
    SmppCommandStatus.ESME_RINVBNDSTS,
}


def status_name(status: int) -> str:
    """The SMPP name of a command_status, e.g. ESME_RINVDSTADR, or its number in hex."""
    try:
        return str(SmppCommandStatus(status).name)
    except ValueError:
        return f"0x{status:08X}"


class BindRefusedError(Exception):
    """The SMSC refused the bind (wrong system_id or password): nothing will go until the
    operator fixes the transport."""


class LinkDownError(Exception):
    """No bound session: the SMSC cannot be reached now."""


class LinkLostError(Exception):
    """The session ended while a request was outstanding: it may or may not have arrived."""


class Deliver(NamedTuple):
    """A deliver_sm from the SMSC: a delivery receipt or an inbound message."""

    source: str
    destination: str
    esm_class: int
    text: str
    receipted_id: str = ""
    message_state: int = 0

    @property
    def is_receipt(self) -> bool:
        """Whether esm_class marks it a delivery receipt (bits 2-5 = 0001)."""
        return is_receipt(self.esm_class)


def is_receipt(esm_class: int) -> bool:
    """Whether an esm_class marks a delivery receipt (bits 2-5 = 0001)."""
    return (esm_class & 0b00111100) == 0b00000100


class Answer(Protocol):
    """What waits for the response to a request."""

    def answer(self, command: int, status: int, body: bytes) -> None:
        """The response arrived: its command_id, command_status and body."""

    def lost(self, error: Exception) -> None:
        """No response will come: the session ended (LinkLostError) or it timed out (TimeoutError)."""


class _FutureAnswer:
    """An answer given to a future: (command_status, body), for the rare requests (enquire_link,
    unbind) that are simply awaited."""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[tuple[int, bytes]]) -> None:
        self.future = future

    def answer(self, command: int, status: int, body: bytes) -> None:
        if not self.future.done():
            self.future.set_result((status, body))

    def lost(self, error: Exception) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class Window:
    """At most `size` requests outstanding on a session. A message takes the places of all its
    parts before its first part goes, and messages take places in the order they asked, so two
    long messages cannot each hold part of the window and wait for each other."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.free = size
        self._waiting: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    async def acquire(self, units: int) -> int:
        """Wait for `units` free places (at most the whole window); returns how many were taken."""
        units = min(units, self.size)
        if not self._waiting and self.free >= units:
            self.free -= units
            return units
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((units, granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release(units)  # granted, then cancelled before it could be used
            raise
        return units

    def release(self, units: int = 1) -> None:
        """Give back places; those waiting get them in the order they asked."""
        self.free += units
        waiting = self._waiting
        while waiting and (waiting[0][1].done() or self.free >= waiting[0][0]):
            wanted, granted = waiting.popleft()
            if not granted.done():
                self.free -= wanted
                granted.set_result(None)


class Session(asyncio.Protocol):
    """One bound transceiver connection: writes requests, and reads every PDU that arrived in
    one go, giving responses to what waits for them."""

    def __init__(
        self,
        settings: SmppSettings,
        on_deliver: Callable[[Deliver], None],
        on_receipt: Callable[[Receipt], None] | None = None,
    ) -> None:
        self.settings = settings
        self.on_deliver = on_deliver
        # a receipt whose text has the usual form, read without building a Deliver
        self.on_receipt = on_receipt
        self.sequence = itertools.count(1)
        # sequence number -> (what waits for the answer, when the request was written)
        self.pending: dict[int, tuple[Answer, float]] = {}
        self.closed = asyncio.Event()
        self.error = ""
        self.last_read = time.monotonic()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._outbox: list[bytes] = []
        self._bound: asyncio.Future[tuple[int, int]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def next_sequence(self) -> int:
        """The next sequence number (1 to 0x7FFFFFFF)."""
        return next(self.sequence) % 0x7FFFFFFF or next(self.sequence)

    async def open(self) -> None:
        """Connect and bind; BindRefusedError or OSError when it cannot."""
        s = self.settings
        context: ssl.SSLContext | None = None
        if s.tls:
            context = ssl.create_default_context(cafile=s.ca_file)
            if not s.verify_certificate:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        self._loop = loop = asyncio.get_running_loop()
        self._bound = loop.create_future()
        async with asyncio.timeout(s.timeout):
            await loop.create_connection(lambda: self, s.host, s.port, ssl=context)
        try:
            bind = BindTransceiver(
                sequence_num=self.next_sequence(),
                system_id=s.system_id,
                password=s.password,
                system_type=s.system_type,
            )
            self._send(bind.pdu())
            async with asyncio.timeout(s.timeout):
                command, status = await self._bound
        except BaseException:
            self._abort()
            raise
        if command != SmppCommand.BIND_TRANSCEIVER_RESP or status != 0:
            self._abort()
            if status == SmppCommandStatus.ESME_RALYBND:
                # The SMSC allows one session per system_id and still has the one this replaces
                # (a reload that changed the transport while a batch used the old one): bound again
                # with backoff, not taken for a wrong password.
                raise ConnectionError("bind_transceiver refused: ESME_RALYBND (already bound)")
            raise BindRefusedError(f"bind_transceiver refused: {status_name(status)}")
        self._tasks = [
            loop.create_task(self._keep_alive()),
            loop.create_task(self._time_out_requests()),
        ]

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.error = self.error or f"connection lost: {exc or 'closed by the SMSC'}"
        if self._bound is not None and not self._bound.done():
            self._bound.set_exception(ConnectionError(self.error))
        self._finish()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        self.last_read = time.monotonic()
        at = 0
        end = len(buffer)
        try:
            while end - at >= 16 and not self.closed.is_set():
                length, command, status, sequence = HEADER.unpack_from(buffer, at)
                if not 16 <= length <= MAX_PDU:
                    raise ValueError(f"PDU length {length} out of range")
                if end - at < length:
                    break
                pdu = bytes(buffer[at : at + length])
                at += length
                self._dispatch(command, status, sequence, pdu)
        except (ValueError, LinkDownError) as exc:
            self.error = f"connection lost: {exc}"
            self._finish()
            return
        finally:
            del buffer[:at]
        self._flush()

    # -- reading --------------------------------------------------------------------------------------

    def _dispatch(self, command: int, status: int, sequence: int, pdu: bytes) -> None:
        if command & 0x80000000:
            if self._bound is not None and not self._bound.done():
                self._bound.set_result((command, status))  # the bind's answer, or a generic_nack
                return
            waiting = self.pending.pop(sequence, None)
            if waiting is not None:
                waiting[0].answer(command, status, pdu[16:])
            return
        if command == DELIVER_SM:
            self._send(deliver_sm_resp(sequence))
            if self.on_receipt is not None:
                receipt = _usual_receipt(pdu)
                if receipt is not None:
                    self.on_receipt(receipt)
                    return
            try:
                deliver = _read_deliver(pdu, sequence)
            except Exception as exc:  # a PDU the codec cannot read must not end the session
                log.warning("unreadable deliver_sm ignored: %r", exc)
                return
            self.on_deliver(deliver)
        elif command == SmppCommand.ENQUIRE_LINK:
            self._send(EnquireLinkResp(sequence_num=sequence).pdu())
        elif command == SmppCommand.UNBIND:
            self._send(UnbindResp(sequence_num=sequence).pdu())
            self.error = "the SMSC unbound the session"
            self._finish()
        else:
            self._send(
                GenericNack(sequence_num=sequence, command_status=SmppCommandStatus.ESME_RINVCMDID).pdu()
            )

    # -- writing --------------------------------------------------------------------------------------

    def _send(self, pdu: bytes) -> None:
        """Queue a PDU for the next write. What is written during one iteration of the event
        loop goes out in one system call: on a busy session a send() per PDU cost more than the
        rest of the submit together."""
        if not self._outbox and self._loop is not None:
            self._loop.call_soon(self._flush)
        self._outbox.append(pdu)

    def _flush(self) -> None:
        if not self._outbox:
            return
        data, self._outbox = b"".join(self._outbox), []
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def usable(self) -> bool:
        """Whether requests can be written."""
        return not self.closed.is_set() and self._transport is not None and not self._transport.is_closing()

    def submit(self, bodies: Sequence[bytes], answer: Answer) -> None:
        """Write the submit_sm of each part body (in one write); `answer` gets each response.
        LinkDownError when the session is closed."""
        if not self.usable():
            raise LinkDownError(self.error or "not connected")
        assert self._loop is not None
        now = self._loop.time()
        for body in bodies:
            sequence = self.next_sequence()
            self.pending[sequence] = (answer, now)
            self._send(submit_sm(sequence, body))

    def request(self, pdu_for: Callable[[int], bytes]) -> asyncio.Future[tuple[int, bytes]]:
        """Send a request; the future gives (command_status, the response's body)."""
        if not self.usable():
            raise LinkDownError(self.error or "not connected")
        assert self._loop is not None
        future: asyncio.Future[tuple[int, bytes]] = self._loop.create_future()
        sequence = self.next_sequence()
        self.pending[sequence] = (_FutureAnswer(future), self._loop.time())
        self._send(pdu_for(sequence))
        return future

    # -- the session's own tasks ----------------------------------------------------------------------

    async def _keep_alive(self) -> None:
        interval = self.settings.enquire_link
        while not self.closed.is_set():
            await asyncio.sleep(max(0.05, interval - (time.monotonic() - self.last_read)))
            if time.monotonic() - self.last_read < interval:
                continue
            try:
                answer = self.request(lambda seq: EnquireLink(sequence_num=seq).pdu())
                async with asyncio.timeout(self.settings.timeout):
                    await answer
            except (LinkDownError, LinkLostError, TimeoutError):
                self.error = self.error or "no answer to enquire_link"
                self._finish()
                return

    async def _time_out_requests(self) -> None:
        """Give up on requests unanswered for `timeout` seconds, oldest first (the pending
        requests are in the order they were written)."""
        timeout = self.settings.timeout
        assert self._loop is not None
        while not self.closed.is_set():
            await asyncio.sleep(min(1.0, timeout / 4))
            cutoff = self._loop.time() - timeout
            late = []
            for sequence, (_, written) in self.pending.items():
                if written > cutoff:
                    break
                late.append(sequence)
            for sequence in late:
                waiting = self.pending.pop(sequence, None)
                if waiting is not None:
                    waiting[0].lost(TimeoutError())

    def _finish(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        pending, self.pending = list(self.pending.values()), {}
        lost = LinkLostError(self.error or "connection lost")
        for waiting, _ in pending:
            waiting.lost(lost)
        if self._transport is not None:
            self._flush()  # what was written before the end still goes, e.g. an unbind_resp
            self._transport.close()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()

    async def close(self) -> None:
        """Unbind politely, then close."""
        if not self.closed.is_set():
            with contextlib.suppress(LinkDownError, LinkLostError, TimeoutError, OSError):
                answer = self.request(lambda seq: Unbind(sequence_num=seq).pdu())
                async with asyncio.timeout(min(self.settings.timeout, 2.0)):
                    await answer
        self.error = self.error or "closed"
        self._finish()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


# -- reading deliver_sm -----------------------------------------------------------------------------


def _read_deliver(pdu: bytes, sequence: int) -> Deliver:
    receipt = _read_receipt(pdu)
    return receipt if receipt is not None else _read_with_codec(pdu, sequence)


def _read_with_codec(pdu: bytes, sequence: int) -> Deliver:
    header = PduHeader(
        pdu_length=len(pdu),
        smpp_command=SmppCommand.DELIVER_SM,
        command_status=SmppCommandStatus.ESME_ROK,
        sequence_num=sequence,
    )
    message = DeliverSm.from_pdu(pdu, header)
    assert isinstance(message, DeliverSm)
    text = message.short_message or message.message_payload
    receipted = ""
    state = 0
    for param in message.optional_params or []:
        if param.tag == RECEIPTED_MESSAGE_ID:
            receipted = str(param.value).rstrip("\x00")
        elif param.tag == MESSAGE_STATE:
            state = int(param.value)
    return Deliver(
        source=message.source.number,
        destination=message.destination.number,
        esm_class=message.esm_class,
        text=text,
        receipted_id=receipted,
        message_state=state,
    )


# A deliver_sm's mandatory fields up to its short message: service_type, source (TON, NPI,
# address), destination (TON, NPI, address), esm_class, protocol_id, priority_flag,
# schedule_delivery_time, validity_period, registered_delivery, replace_if_present_flag,
# data_coding, sm_default_msg_id and sm_length, in one match.
_DELIVER_HEAD = re.compile(
    rb"[^\x00]*\x00..([^\x00]*)\x00..([^\x00]*)\x00(.)..[^\x00]*\x00[^\x00]*\x00....(.)", re.DOTALL
)


def _receipt_parts(pdu: bytes) -> tuple[bytes, bytes, int, bytes, str, int] | None:
    """(source, destination, esm_class, the text's bytes, receipted_message_id, message_state)
    of a deliver_sm that is a delivery receipt; None for anything else or a PDU this cannot
    read."""
    head = _DELIVER_HEAD.match(pdu, 16)
    if head is None:
        return None
    esm_class = head[3][0]
    if (esm_class & 0b00111100) != 0b00000100:
        return None
    start = head.end()
    at = start + head[4][0]
    if at > len(pdu):
        return None
    data = pdu[start:at]
    receipted, state = "", 0
    try:
        while at + 4 <= len(pdu):
            tag, size = struct.unpack_from("!HH", pdu, at)
            value = pdu[at + 4 : at + 4 + size]
            at += 4 + size
            if tag == RECEIPTED_MESSAGE_ID:
                receipted = value.rstrip(b"\x00").decode("latin-1")
            elif tag == MESSAGE_STATE and size == 1:
                state = value[0]
            elif tag == MESSAGE_PAYLOAD and not data:
                data = value
    except struct.error:
        return None
    return head[1], head[2], esm_class, data, receipted, state


def _read_receipt(pdu: bytes) -> Deliver | None:
    """A delivery receipt read straight from the PDU's fields, or None for anything else (an
    inbound message, whose text needs the codec's decoding, or a PDU this cannot read)."""
    parts = _receipt_parts(pdu)
    if parts is None:
        return None
    source, destination, esm_class, data, receipted, state = parts
    # The receipt's text is ASCII (SMPP 3.4 appendix B) in any data_coding.
    return Deliver(
        source.decode("latin-1"),
        destination.decode("latin-1"),
        esm_class,
        data.decode("latin-1"),
        receipted,
        state,
    )


# The usual receipt text (SMPP 3.4 appendix B), read in one match; anything else goes through
# receipts.parse_receipt.
_USUAL_RECEIPT = re.compile(
    rb"id:([^\s:]*) sub:[^\s:]* dlvrd:[^\s:]* submit date:[^\s:]* done date:[^\s:]* "
    rb"stat:([^\s:]+) err:([^\s:]*)(?: |\Z)",
    re.IGNORECASE,
)


def _usual_receipt(pdu: bytes) -> Receipt | None:
    """The receipt in a deliver_sm whose text has the usual form (the stat in upper case), else
    None. The receipted_message_id parameter wins over the text's id."""
    parts = _receipt_parts(pdu)
    if parts is None:
        return None
    data, receipted = parts[3], parts[4]
    match = _USUAL_RECEIPT.match(data)
    if match is None:
        return None
    part_id = receipted or match[1].decode("latin-1")
    if not part_id:
        return None
    return Receipt(part_id, match[2].decode("latin-1").upper(), match[3].decode("latin-1"))


# -- submitting -------------------------------------------------------------------------------------


class Submission(NamedTuple):
    """One message as the bodies of its submit_sm PDUs (one per part), built before the gate is
    asked; the header, with the sequence number, is added when it is written."""

    message_id: int
    parts: list[bytes]


def _c_string(value: str) -> bytes:
    return value.encode("ascii") + b"\x00"


class Builder:
    """Builds the submit_sm bodies of one sender's messages: the fields every message shares
    are encoded once."""

    def __init__(self, sender: Sender, concatenation: Concatenation, registered_delivery: int) -> None:
        # service_type "", then the source address
        self.head = b"\x00" + bytes((sender.ton, sender.npi)) + _c_string(sender.address)
        self.concatenation = concatenation
        self.registered_delivery = registered_delivery
        # After the destination, by (esm_class, data_coding): esm_class, protocol_id and
        # priority_flag, empty schedule_delivery_time and validity_period, registered_delivery,
        # replace_if_present_flag, data_coding and sm_default_msg_id; sm_length follows.
        self.fields = {
            (esm_class, coding): bytes((esm_class, 0, 0, 0, 0, registered_delivery, 0, coding, 0))
            for esm_class in (0, UDHI)
            for coding in (0, 8)
        }

    def build(self, message_id: int, address: str, encoded: Encoded, reference: int) -> Submission:
        """The submit_sm bodies of one message to `address` (E.164)."""
        # destination: TON international, NPI ISDN
        head = self.head + b"\x01\x01" + address.lstrip("+").encode("ascii") + b"\x00"
        coding = encoded.encoding.data_coding
        parts = encoded.parts
        total = len(parts)
        if total == 1:
            payload = parts[0]
            return Submission(message_id, [head + self.fields[0, coding] + bytes((len(payload),)) + payload])
        bodies = []
        if self.concatenation is Concatenation.UDH:
            fields = head + self.fields[UDHI, coding]
            for number, payload in enumerate(parts, start=1):
                data = udh(reference, total, number) + payload
                bodies.append(fields + bytes((len(data),)) + data)
        else:
            fields = head + self.fields[0, coding]
            for number, payload in enumerate(parts, start=1):
                sar = struct.pack(
                    "!HHHHHBHHB",
                    SAR_MSG_REF_NUM,
                    2,
                    reference & 0xFFFF,
                    SAR_TOTAL_SEGMENTS,
                    1,
                    total,
                    SAR_SEGMENT_SEQNUM,
                    1,
                    number,
                )
                bodies.append(fields + bytes((len(payload),)) + payload + sar)
        return Submission(message_id, bodies)


def submit_sm(sequence: int, body: bytes) -> bytes:
    """A whole submit_sm PDU from its body."""
    return HEADER.pack(16 + len(body), SUBMIT_SM, 0, sequence) + body


def deliver_sm_resp(sequence: int) -> bytes:
    """The answer to a deliver_sm (its message_id is empty)."""
    return HEADER.pack(17, DELIVER_SM_RESP, 0, sequence) + b"\x00"


class _Batch:
    """The results of one batch, as its messages are answered."""

    __slots__ = ("done", "left", "results")

    def __init__(self, size: int, loop: asyncio.AbstractEventLoop) -> None:
        self.results: list[tuple[SendResult, list[str]] | None] = [None] * size
        self.left = size
        self.done: asyncio.Future[None] = loop.create_future()
        if not size:
            self.done.set_result(None)

    def set(self, index: int, result: tuple[SendResult, list[str]]) -> None:
        self.results[index] = result
        self.left -= 1
        if not self.left and not self.done.done():
            self.done.set_result(None)


class _Outstanding:
    """One message whose parts were written: gathers their answers in order, gives a window
    place back as each arrives (the rest when the message is done) and its concurrency slot
    when the message is done."""

    __slots__ = ("answers", "batch", "index", "left", "link", "message_id", "places")

    def __init__(
        self, link: Link, batch: _Batch, index: int, message_id: int, parts: int, places: int
    ) -> None:
        self.link = link
        self.batch = batch
        self.index = index
        self.message_id = message_id
        self.answers: list[tuple[int, int, bytes]] = []
        self.left = parts
        self.places = places

    def answer(self, command: int, status: int, body: bytes) -> None:
        if self.left <= 0:
            return
        if self.places:
            self.places -= 1
            self.link.window.release()
        self.answers.append((command, status, body))
        self.left -= 1
        if not self.left:
            self.finish(self.link._result(self.message_id, len(self.answers), self.answers))

    def lost(self, error: Exception) -> None:
        if self.left <= 0:
            return
        self.left = 0
        if isinstance(error, TimeoutError):
            result = SendResult(
                self.message_id,
                SendStatus.RETRY,
                error=f"no submit_sm_resp within {self.link.settings.timeout:g} s",
                reason="no_answer",
            )
        else:
            result = SendResult(self.message_id, SendStatus.RETRY, error=str(error), reason="connection_lost")
        self.finish((result, []))

    def finish(self, result: tuple[SendResult, list[str]]) -> None:
        """The message is done: its places and slot go back, its result to the batch."""
        self.left = 0
        if self.places:
            self.link.window.release(self.places)
            self.places = 0
        self.link.slots.release()
        self.batch.set(self.index, result)


class Link:
    """The open `smpp` transport: a session kept bound while the transport is open, the window,
    the transport's concurrency, and what slows it down."""

    def __init__(
        self,
        settings: SmppSettings,
        concurrency: int,
        on_deliver: Callable[[Deliver], None],
        on_receipt: Callable[[Receipt], None] | None = None,
    ) -> None:
        self.settings = settings
        self.on_deliver = on_deliver
        self.on_receipt = on_receipt
        self.slots = asyncio.Semaphore(max(1, concurrency))
        self.window = Window(settings.window)
        self.session: Session | None = None
        self.fatal = ""
        self.last_error = ""
        self.retry_at = 0.0
        self.backoff = settings.reconnect_min
        self.throttled_until = 0.0
        self.throttle_delay = 0.0
        self.references = itertools.count(1)
        self._connecting = asyncio.Lock()
        self._keeper: asyncio.Task[None] | None = None
        self._closing = False

    async def bound(self) -> Session:
        """The bound session, connecting when there is none; BindRefusedError or LinkDownError."""
        if self.fatal:
            raise BindRefusedError(self.fatal)
        session = self.session
        if session is not None and not session.closed.is_set():
            return session
        async with self._connecting:
            session = self.session
            if session is not None and not session.closed.is_set():
                return session
            if self.fatal:
                raise BindRefusedError(self.fatal)
            if self._closing:
                raise LinkDownError("the transport is closing")
            if time.monotonic() < self.retry_at:
                raise LinkDownError(self.last_error)
            session = Session(self.settings, self.on_deliver, self.on_receipt)
            try:
                await session.open()
            except BindRefusedError as exc:
                self.fatal = str(exc)
                raise
            except (OSError, TimeoutError, ValueError, ssl.SSLError) as exc:
                self.last_error = f"cannot connect to {self.settings.host}:{self.settings.port}: {exc}"
                self.retry_at = time.monotonic() + self.backoff
                self.backoff = min(self.backoff * 2, self.settings.reconnect_max)
                raise LinkDownError(self.last_error) from None
            self.backoff = self.settings.reconnect_min
            self.session = session
            if self._keeper is None or self._keeper.done():
                self._keeper = asyncio.create_task(self._keep_bound())
            return session

    def keep_bound(self) -> None:
        """Bind now, not at the first send, and stay bound while the transport is open: receipts
        and replies (a STOP) the SMSC kept for this ESME arrive before any campaign sends."""
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.create_task(self._keep_bound(at_once=True))

    async def _keep_bound(self, *, at_once: bool = False) -> None:
        """Rebind after a lost session, with backoff, so receipts and replies keep arriving."""
        while not self._closing:
            session = self.session
            if session is not None:
                await session.closed.wait()
            if self._closing or self.fatal:
                return
            if not at_once:
                await asyncio.sleep(max(0.0, self.retry_at - time.monotonic()) or self.settings.reconnect_min)
            at_once = False
            try:
                await self.bound()
            except BindRefusedError as refused:
                log.error("bind refused; not bound again until a reload: %s", refused)
            except LinkDownError:
                pass

    async def close(self) -> None:
        """Unbind and stop reconnecting."""
        self._closing = True
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        async with self._connecting:
            if self.session is not None:
                await self.session.close()

    def slow_down(self) -> None:
        """A throttling answer: wait longer before the next submits, up to 10 s."""
        self.throttle_delay = min(max(self.throttle_delay * 2, self.settings.throttle_delay), 10.0)
        self.throttled_until = time.monotonic() + self.throttle_delay

    async def send(self, submissions: Sequence[Submission], gate: Gate) -> list[tuple[SendResult, list[str]]]:
        """Submit messages one after the other, each when the window has room for its parts and
        the gate admits it; for each, its result and the SMSC's id of each accepted part."""
        batch = _Batch(len(submissions), asyncio.get_running_loop())
        for index, submission in enumerate(submissions):
            await self.slots.acquire()
            outstanding: _Outstanding | None = None
            try:
                outstanding = await self._submit(batch, index, submission, gate)
            finally:
                if outstanding is None:
                    self.slots.release()
        await batch.done
        return [result for result in batch.results if result is not None]

    async def _submit(
        self, batch: _Batch, index: int, submission: Submission, gate: Gate
    ) -> _Outstanding | None:
        """Send one message holding a concurrency slot; what now waits for its answers, or None
        when it was settled without an answer to wait for (its result is already in `batch`)."""
        message_id, bodies = submission
        parts = len(bodies)
        wait = self.throttled_until - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        session = self.session
        if session is None or not session.usable():
            try:
                session = await self.bound()
            except BindRefusedError as exc:
                refused = SendResult(
                    message_id, SendStatus.RETRY, error=str(exc), reason="bind_refused", fatal=True
                )
                batch.set(index, (refused, []))
                return None
            except LinkDownError as exc:
                batch.set(index, (_unreachable(message_id, exc), []))
                return None
        places = await self.window.acquire(parts)
        outstanding = _Outstanding(self, batch, index, message_id, parts, places)
        try:
            admitted = await gate.admit(weight=parts, message_id=message_id)
        except BaseException:
            outstanding.places = 0
            self.window.release(places)
            raise
        if not admitted:
            outstanding.finish((SendResult(message_id, SendStatus.NOT_STARTED), []))
            return outstanding
        try:
            session.submit(bodies, outstanding)
        except LinkDownError as exc:
            outstanding.finish((_unreachable(message_id, exc), []))
        return outstanding

    def _result(
        self, message_id: int, parts: int, answers: Sequence[tuple[int, int, bytes]]
    ) -> tuple[SendResult, list[str]]:
        ids = []
        for command, status, body in answers:
            if status == 0 and command == SUBMIT_SM_RESP:
                ids.append(body.rstrip(b"\x00").decode("ascii", errors="replace"))
                continue
            name = status_name(status)
            error = f"submit_sm refused: {name} (0x{status:08X})" if status else "generic_nack"
            if status in THROTTLING:
                self.slow_down()
                return SendResult(
                    message_id, SendStatus.RETRY, error=error, reason="throttled", parts=parts
                ), ids
            if status in TEMPORARY or command == GENERIC_NACK:
                return SendResult(
                    message_id, SendStatus.RETRY, error=error, reason="deferred", parts=parts
                ), ids
            return SendResult(message_id, SendStatus.FAILED, error=error, reason=name, parts=parts), ids
        self.throttle_delay = 0.0
        return SendResult(message_id, SendStatus.SENT, provider_id=ids[0], parts=parts), ids


def _unreachable(message_id: int, exc: Exception) -> SendResult:
    return SendResult(message_id, SendStatus.RETRY, error=str(exc), reason="unreachable", transport_down=True)
