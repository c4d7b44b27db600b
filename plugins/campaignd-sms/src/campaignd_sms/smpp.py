"""The `smpp` transport: one SMPP 3.4 transceiver session per transport, with a window of
outstanding submit_sm, enquire_link, reconnection with backoff, receipts and inbound messages.

PDUs are built and read with aiosmpplib's codec (`aiosmpplib.protocol`). Its ESME runner is not
used: it takes messages from a queue one at a time with no window of outstanding requests, splits
long texts itself, and retries a refused bind for ever, where a campaign needs the gate before
each submit, its own part count, and a refused bind reported as fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from aiosmpplib import (
    NPI,
    TON,
    BindTransceiver,
    DeliverSm,
    DeliverSmResp,
    EnquireLink,
    EnquireLinkResp,
    GenericNack,
    OptionalParam,
    PduHeader,
    PhoneNumber,
    SmppCommand,
    SmppCommandStatus,
    SubmitSm,
    Unbind,
    UnbindResp,
)

from campaignd.plugin import Gate, Recipient, SendResult, SendStatus
from campaignd_sms.encoding import UDHI, Concatenation, Encoded, Encoding, udh
from campaignd_sms.settings import Sender, SmppSettings

log = logging.getLogger("campaignd_sms.smpp")

HEADER = struct.Struct("!IIII")
MAX_PDU = 64 * 1024
SAR_MSG_REF_NUM, SAR_TOTAL_SEGMENTS, SAR_SEGMENT_SEQNUM = 0x020C, 0x020E, 0x020F
RECEIPTED_MESSAGE_ID = 0x001E

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


@dataclass(frozen=True)
class Deliver:
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
        return (self.esm_class & 0b00111100) == 0b00000100


class Window:
    """At most `size` requests outstanding on a session. A message takes the places of all its
    parts before its first part goes, one message at a time, so two long messages cannot each
    hold part of the window and wait for each other."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.places = asyncio.Semaphore(size)
        self.taking = asyncio.Lock()

    async def acquire(self, units: int) -> int:
        """Wait for `units` free places (at most the whole window); returns how many were taken."""
        units = min(units, self.size)
        if units == 1:
            await self.places.acquire()
            return 1
        async with self.taking:
            for _ in range(units):
                await self.places.acquire()
        return units

    def release(self, units: int = 1) -> None:
        """Give back places."""
        for _ in range(units):
            self.places.release()


class _Places:
    """The places one message took in the window, given back one per answer as the receiver
    reads it (not when the sending task next runs, a loop iteration later), the rest when the
    message is done; each place once."""

    __slots__ = ("left", "window")

    def __init__(self, window: Window, taken: int) -> None:
        self.window = window
        self.left = taken

    def one(self) -> None:
        if self.left:
            self.left -= 1
            self.window.release()

    def rest(self) -> None:
        if self.left:
            self.window.release(self.left)
            self.left = 0


class Session:
    """One bound transceiver connection."""

    def __init__(self, settings: SmppSettings, on_deliver: Callable[[Deliver], None]) -> None:
        self.settings = settings
        self.on_deliver = on_deliver
        self.sequence = itertools.count(1)
        self.pending: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self.on_answer: dict[int, Callable[[], None]] = {}
        self.closed = asyncio.Event()
        self.error = ""
        self.last_read = time.monotonic()
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._outbox: list[bytes] = []

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
        async with asyncio.timeout(s.timeout):
            reader, writer = await asyncio.open_connection(s.host, s.port, ssl=context)
        self._writer = writer
        try:
            sequence = self.next_sequence()
            bind = BindTransceiver(
                sequence_num=sequence,
                system_id=s.system_id,
                password=s.password,
                system_type=s.system_type,
            )
            writer.write(bind.pdu())
            async with asyncio.timeout(s.timeout):
                await writer.drain()
                command, status, _, _ = await self._read_pdu(reader)
        except BaseException:
            writer.close()
            raise
        if command != SmppCommand.BIND_TRANSCEIVER_RESP or status != 0:
            writer.close()
            raise BindRefusedError(f"bind_transceiver refused: {status_name(status)}")
        self._tasks = [
            asyncio.create_task(self._receive(reader)),
            asyncio.create_task(self._keep_alive()),
        ]

    async def _read_pdu(self, reader: asyncio.StreamReader) -> tuple[int, int, int, bytes]:
        head = await reader.readexactly(16)
        length, command, status, sequence = HEADER.unpack(head)
        if not 16 <= length <= MAX_PDU:
            raise ValueError(f"PDU length {length} out of range")
        body = await reader.readexactly(length - 16) if length > 16 else b""
        self.last_read = time.monotonic()
        return command, status, sequence, head + body

    def write(self, pdu: bytes) -> None:
        """Write PDUs on the connection; LinkDownError when it is closed.

        What is written during one iteration of the event loop goes out in one system call at
        the start of the next: on a busy session a send() per PDU cost more than the rest of
        the submit together."""
        if self._writer is None or self.closed.is_set() or self._writer.is_closing():
            raise LinkDownError(self.error or "not connected")
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append(pdu)

    def _flush(self) -> None:
        data, self._outbox = b"".join(self._outbox), []
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(data)

    def request(self, pdu_for: Callable[[int], bytes]) -> asyncio.Future[tuple[int, bytes]]:
        """Send a request; the future gives (command_status, the whole response PDU)."""
        return self.requests([pdu_for])[0]

    def requests(
        self, pdus_for: Sequence[Callable[[int], bytes]], on_answer: Callable[[], None] | None = None
    ) -> list[asyncio.Future[tuple[int, bytes]]]:
        """Send requests in one write (the parts of a message); a future per request.
        `on_answer` is called as each response is read, or when the session ends without it."""
        loop = asyncio.get_running_loop()
        numbered = [(self.next_sequence(), pdu_for) for pdu_for in pdus_for]
        self.write(b"".join(pdu_for(sequence) for sequence, pdu_for in numbered))
        futures = []
        for sequence, _ in numbered:
            future: asyncio.Future[tuple[int, bytes]] = loop.create_future()
            self.pending[sequence] = future
            if on_answer is not None:
                self.on_answer[sequence] = on_answer
            futures.append(future)
        return futures

    def forget(self, count: int, on_answer: Callable[[], None]) -> None:
        """Drop the answer callbacks of requests given up on (timed out)."""
        for sequence in [s for s, call in self.on_answer.items() if call == on_answer][:count]:
            del self.on_answer[sequence]

    async def _receive(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                command, status, sequence, pdu = await self._read_pdu(reader)
                if command & 0x80000000:
                    future = self.pending.pop(sequence, None)
                    if future is not None and not future.done():
                        future.set_result((status, pdu))
                    answered = self.on_answer.pop(sequence, None)
                    if answered is not None:
                        answered()
                    continue
                if command == SmppCommand.DELIVER_SM:
                    self.write(DeliverSmResp(sequence_num=sequence).pdu())
                    try:
                        deliver = _read_deliver(pdu, sequence)
                    except Exception as exc:  # a PDU the codec cannot read must not end the session
                        log.warning("unreadable deliver_sm ignored: %r", exc)
                        continue
                    self.on_deliver(deliver)
                elif command == SmppCommand.ENQUIRE_LINK:
                    self.write(EnquireLinkResp(sequence_num=sequence).pdu())
                elif command == SmppCommand.UNBIND:
                    self.write(UnbindResp(sequence_num=sequence).pdu())
                    self.error = "the SMSC unbound the session"
                    return
                else:
                    self.write(
                        GenericNack(
                            sequence_num=sequence, command_status=SmppCommandStatus.ESME_RINVCMDID
                        ).pdu()
                    )
        except (OSError, asyncio.IncompleteReadError, ValueError, LinkDownError) as exc:
            self.error = f"connection lost: {exc or type(exc).__name__}"
        finally:
            self._finish()

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

    def _finish(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for future in self.pending.values():
            if not future.done():
                future.set_exception(LinkLostError(self.error or "connection lost"))
        self.pending.clear()
        answers, self.on_answer = list(self.on_answer.values()), {}
        for answered in answers:
            answered()
        if self._writer is not None:
            self._flush()  # what was written before the end still goes, e.g. an unbind_resp
            self._writer.close()
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
        if self._writer is not None:
            with contextlib.suppress(OSError, ssl.SSLError):
                await self._writer.wait_closed()


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
        elif param.tag == 0x0427:  # message_state
            state = int(param.value)
    return Deliver(
        source=message.source.number,
        destination=message.destination.number,
        esm_class=message.esm_class,
        text=text,
        receipted_id=receipted,
        message_state=state,
    )


def _c_string(pdu: bytes, at: int) -> tuple[str, int]:
    end = pdu.index(0, at)
    return pdu[at:end].decode("latin-1"), end + 1


def _read_receipt(pdu: bytes) -> Deliver | None:
    """A delivery receipt read straight from the PDU's fields, or None for anything else (an
    inbound message, whose text needs the codec's decoding, or a PDU this cannot read).
    Receipts are one per part sent: aiosmpplib's codec took a tenth of the event loop's time
    reading them."""
    try:
        _, at = _c_string(pdu, 16)  # service_type
        source, at = _c_string(pdu, at + 2)
        destination, at = _c_string(pdu, at + 2)
        esm_class = pdu[at]
        _, at = _c_string(pdu, at + 3)  # schedule_delivery_time
        _, at = _c_string(pdu, at)  # validity_period
        length = pdu[at + 4]
        at += 5
        if (esm_class & 0b00111100) != 0b00000100 or at + length > len(pdu):
            return None
        data = pdu[at : at + length]
        at += length
        receipted, state = "", 0
        while at + 4 <= len(pdu):
            tag, size = struct.unpack_from("!HH", pdu, at)
            value = pdu[at + 4 : at + 4 + size]
            at += 4 + size
            if tag == RECEIPTED_MESSAGE_ID:
                receipted = value.rstrip(b"\x00").decode("latin-1")
            elif tag == 0x0427 and size == 1:  # message_state
                state = value[0]
            elif tag == 0x0424 and not data:  # message_payload
                data = value
        # The receipt's text is ASCII (SMPP 3.4 appendix B) in any data_coding.
        text = data.decode("latin-1")
    except (ValueError, IndexError, struct.error):
        return None
    return Deliver(source, destination, esm_class, text, receipted, state)


# -- submitting -------------------------------------------------------------------------------------


@dataclass
class Submission:
    """One message as submit_sm PDUs, one per part, built before the gate is asked."""

    recipient: Recipient
    encoded: Encoded
    pdus: list[Callable[[int], bytes]] = field(default_factory=list)


def build(
    recipient: Recipient,
    encoded: Encoded,
    sender: Sender,
    concatenation: Concatenation,
    reference: int,
    registered_delivery: int,
) -> Submission:
    """The submit_sm PDUs of one message (sequence numbers filled in when sent)."""
    total = len(encoded.parts)
    destination = PhoneNumber(recipient.address.lstrip("+"), TON.INTERNATIONAL, NPI.ISDN)
    source = PhoneNumber(sender.address, TON(sender.ton), NPI(sender.npi))
    coding = "gsm0338" if encoded.encoding is Encoding.GSM7 else "ucs2"
    submission = Submission(recipient, encoded)
    for number, payload in enumerate(encoded.parts, start=1):
        esm_class = 0
        params: list[OptionalParam] = []
        data = payload
        if total > 1 and concatenation is Concatenation.UDH:
            esm_class = UDHI
            data = udh(reference, total, number) + payload
        elif total > 1:
            params = [
                OptionalParam(SAR_MSG_REF_NUM, reference & 0xFFFF),
                OptionalParam(SAR_TOTAL_SEGMENTS, total),
                OptionalParam(SAR_SEGMENT_SEQNUM, number),
            ]
        submission.pdus.append(
            _pdu_builder(source, destination, esm_class, params, coding, data, registered_delivery)
        )
    return submission


def _pdu_builder(
    source: PhoneNumber,
    destination: PhoneNumber,
    esm_class: int,
    params: list[OptionalParam],
    coding: str,
    data: bytes,
    registered_delivery: int,
) -> Callable[[int], bytes]:
    def pdu(sequence: int) -> bytes:
        message = SubmitSm(
            sequence_num=sequence,
            short_message=" ",  # replaced by the pre-encoded bytes below
            source=source,
            destination=destination,
            esm_class=esm_class,
            registered_delivery=registered_delivery,
            encoding=coding,
            optional_params=list(params),
            auto_message_payload=False,
        )
        message.set_encoded_message(data)
        return bytes(message.pdu())

    return pdu


class Link:
    """The open `smpp` transport: a session kept bound while the transport is open, the window,
    the transport's concurrency, and what slows it down."""

    def __init__(
        self, settings: SmppSettings, concurrency: int, on_deliver: Callable[[Deliver], None]
    ) -> None:
        self.settings = settings
        self.on_deliver = on_deliver
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
            session = Session(self.settings, self.on_deliver)
            try:
                await session.open()
            except BindRefusedError as exc:
                self.fatal = str(exc)
                raise
            except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
                self.last_error = f"cannot connect to {self.settings.host}:{self.settings.port}: {exc}"
                self.retry_at = time.monotonic() + self.backoff
                self.backoff = min(self.backoff * 2, self.settings.reconnect_max)
                raise LinkDownError(self.last_error) from None
            self.backoff = self.settings.reconnect_min
            self.session = session
            if self._keeper is None or self._keeper.done():
                self._keeper = asyncio.create_task(self._keep_bound())
            return session

    async def _keep_bound(self) -> None:
        """Rebind after a lost session, with backoff, so receipts and replies keep arriving."""
        while not self._closing:
            session = self.session
            if session is not None:
                await session.closed.wait()
            if self._closing or self.fatal:
                return
            await asyncio.sleep(max(0.0, self.retry_at - time.monotonic()) or self.settings.reconnect_min)
            with contextlib.suppress(BindRefusedError, LinkDownError):
                await self.bound()

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

    async def send(self, submission: Submission, gate: Gate) -> tuple[SendResult, list[str]]:
        """Submit one message's parts; its result and the SMSC's id of each accepted part."""
        message_id = submission.recipient.message_id
        parts = len(submission.pdus)
        async with self.slots:
            wait = self.throttled_until - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                session = await self.bound()
            except BindRefusedError as exc:
                return SendResult(
                    message_id, SendStatus.RETRY, error=str(exc), reason="bind_refused", fatal=True
                ), []
            except LinkDownError as exc:
                return SendResult(
                    message_id, SendStatus.RETRY, error=str(exc), reason="unreachable", transport_down=True
                ), []
            places = _Places(self.window, await self.window.acquire(parts))
            try:
                if not await gate.admit(weight=parts, message_id=message_id):
                    return SendResult(message_id, SendStatus.NOT_STARTED), []
                try:
                    answers = session.requests(submission.pdus, places.one)
                except LinkDownError as exc:
                    return SendResult(
                        message_id,
                        SendStatus.RETRY,
                        error=str(exc),
                        reason="unreachable",
                        transport_down=True,
                    ), []
                results: list[tuple[int, bytes]] = []
                async with asyncio.timeout(self.settings.timeout):
                    for answer in answers:
                        results.append(await answer)
            except LinkLostError as exc:
                return SendResult(message_id, SendStatus.RETRY, error=str(exc), reason="connection_lost"), []
            except TimeoutError:
                session.forget(parts, places.one)
                return SendResult(
                    message_id,
                    SendStatus.RETRY,
                    error=f"no submit_sm_resp within {self.settings.timeout:g} s",
                    reason="no_answer",
                ), []
            finally:
                places.rest()
        return self._result(message_id, parts, results)

    def _result(
        self, message_id: int, parts: int, results: Sequence[tuple[int, bytes]]
    ) -> tuple[SendResult, list[str]]:
        ids = []
        for status, pdu in results:
            if status == 0 and pdu[4:8] == b"\x80\x00\x00\x04":
                ids.append(pdu[16:].rstrip(b"\x00").decode("ascii", errors="replace"))
                continue
            name = status_name(status)
            error = f"submit_sm refused: {name} (0x{status:08X})" if status else "generic_nack"
            if status in THROTTLING:
                self.slow_down()
                return SendResult(
                    message_id, SendStatus.RETRY, error=error, reason="throttled", parts=parts
                ), ids
            if status in TEMPORARY or pdu[4:8] == b"\x80\x00\x00\x00":
                return SendResult(
                    message_id, SendStatus.RETRY, error=error, reason="deferred", parts=parts
                ), ids
            return SendResult(message_id, SendStatus.FAILED, error=error, reason=name, parts=parts), ids
        self.throttle_delay = 0.0
        return SendResult(message_id, SendStatus.SENT, provider_id=ids[0], parts=parts), ids
