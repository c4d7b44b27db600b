"""A scriptable SMSC for the tests: an SMPP 3.4 server on 127.0.0.1 in a thread of its own.

It reads submit_sm and writes deliver_sm with smpp34's codec, independent of the plugin's, and
answers each submit as the test's script says: accept with a receipt (DELIVRD, UNDELIV, …),
a receipt before the response, refuse with a command status, or drop the connection.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import smpp34

HEADER = struct.Struct("!IIII")
BIND_TRANSCEIVER, BIND_TRANSCEIVER_RESP = 0x00000009, 0x80000009
SUBMIT_SM, SUBMIT_SM_RESP = 0x00000004, 0x80000004
DELIVER_SM, DELIVER_SM_RESP = 0x00000005, 0x80000005
ENQUIRE_LINK, ENQUIRE_LINK_RESP = 0x00000015, 0x80000015
UNBIND, UNBIND_RESP = 0x00000006, 0x80000006
GENERIC_NACK = 0x80000000
ESME_RINVPASWD = 0x0E
ESME_RALYBND = 0x05
ESME_RTHROTTLED = 0x58
ESME_RINVDSTADR = 0x0B
ESME_RSYSERR = 0x08


@dataclass(frozen=True)
class Answer:
    """What the SMSC does with one submit_sm: `status` 0 accepts it (then a receipt with `stat`
    unless None, before the response when `receipt_first`); another status refuses it."""

    status: int = 0
    stat: str | None = "DELIVRD"
    err: str = "000"
    receipt_first: bool = False
    drop: bool = False  # close the connection instead of answering


@dataclass
class Submitted:
    """One submit_sm as the SMSC read it."""

    destination: str
    source: str
    source_ton: int
    esm_class: int
    data_coding: int
    short_message: bytes
    tlvs: dict[int, bytes]
    message_id: str
    status: int
    time: float
    # The connection that submitted it: receipts may go back on another one (`receipt`).
    session: asyncio.StreamWriter | None = None


def accept_all(submit: Submitted, count: int) -> Answer:
    """Accept every submit, with a DELIVRD receipt."""
    return Answer()


@dataclass
class Smsc:
    """The server's state and script; read it from the test's thread."""

    password: str = "secret"
    # Refuse a bind with ESME_RALYBND while another session is bound, as SMSCs that allow one
    # session per system_id do.
    single_session: bool = False
    script: Callable[[Submitted, int], Answer] = accept_all
    answer_delay: float = 0.0
    port: int = 0
    submits: list[Submitted] = field(default_factory=list)
    binds: int = 0
    refused_binds: int = 0
    connections: int = 0
    outstanding: int = 0
    most_outstanding: int = 0
    enquire_links: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: asyncio.AbstractEventLoop | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _sequence: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def accepted(self) -> list[Submitted]:
        """The submits it accepted."""
        with self.lock:
            return [s for s in self.submits if s.status == 0]

    def accepted_count(self) -> int:
        """How many submits it accepted."""
        return len(self.accepted())

    def reply(self, source: str, text: str, *, ucs2: bool = False) -> None:
        """Send an inbound message (MO) from `source` over every bound session."""
        assert self._loop is not None
        data = text.encode("utf-16-be") if ucs2 else text.encode("ascii")
        future: Future[None] = asyncio.run_coroutine_threadsafe(
            self._deliver_all(source, data, 8 if ucs2 else 0, 0), self._loop
        )
        future.result(5)

    def receipt(self, submitted: Submitted, stat: str, err: str = "000", *, elsewhere: bool = False) -> None:
        """Send a receipt for an accepted submit over every bound session (one the SMSC kept,
        e.g. while the ESME was away); with `elsewhere`, over the bound sessions other than the
        one that submitted it only (as an SMSC that spreads receipts over an account's binds)."""
        assert self._loop is not None
        data = _receipt_text(submitted, stat, err)
        skip = submitted.session if elsewhere else None
        future: Future[None] = asyncio.run_coroutine_threadsafe(
            self._deliver_all(submitted.destination, data, 0, 0x04, skip=skip), self._loop
        )
        future.result(5)

    def drop_all(self) -> None:
        """Close every connection."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._drop_all)

    def _drop_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()

    async def _deliver_all(
        self,
        source: str,
        data: bytes,
        coding: int,
        esm_class: int,
        *,
        skip: asyncio.StreamWriter | None = None,
    ) -> None:
        for writer in list(self._writers):
            if writer is not skip:
                self._deliver(writer, source, data, coding, esm_class)

    def _deliver(
        self, writer: asyncio.StreamWriter, source: str, data: bytes, coding: int, esm_class: int
    ) -> None:
        pdu = smpp34.DeliverSm(
            source,
            "12345",
            data,
            esm_class=esm_class,
            data_coding=coding,
            source_addr_ton=1,
            source_addr_npi=1,
            sequence_number=next(self._sequence),
        ).encode()
        writer.write(pdu)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One ESME connection."""
        with self.lock:
            self.connections += 1
        bound = False
        try:
            while True:
                head = await reader.readexactly(16)
                length, command, _, sequence = HEADER.unpack(head)
                body = await reader.readexactly(length - 16)
                if command == BIND_TRANSCEIVER:
                    password = body.split(b"\x00")[1].decode()
                    status = 0 if password == self.password else ESME_RINVPASWD
                    if not status and self.single_session and self._writers:
                        status = ESME_RALYBND
                    ok = not status
                    with self.lock:
                        self.binds += ok
                        self.refused_binds += not ok
                    resp = b"TestSMSC\x00"
                    writer.write(HEADER.pack(16 + len(resp), BIND_TRANSCEIVER_RESP, status, sequence) + resp)
                    if not ok:
                        await writer.drain()
                        return
                    bound = True
                    self._writers.append(writer)
                elif command == SUBMIT_SM and bound:
                    if not await self._submit(writer, head + body, sequence):
                        return
                elif command == ENQUIRE_LINK:
                    with self.lock:
                        self.enquire_links += 1
                    writer.write(HEADER.pack(16, ENQUIRE_LINK_RESP, 0, sequence))
                elif command == UNBIND:
                    writer.write(HEADER.pack(16, UNBIND_RESP, 0, sequence))
                    await writer.drain()
                    return
                elif command & 0x80000000:
                    pass  # deliver_sm_resp and the like
                else:
                    writer.write(HEADER.pack(16, GENERIC_NACK, 3, sequence))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if writer in self._writers:
                self._writers.remove(writer)
            writer.close()
            with self.lock:
                self.connections -= 1

    async def _submit(self, writer: asyncio.StreamWriter, pdu: bytes, sequence: int) -> bool:
        decoded: Any = smpp34.decode(pdu)
        with self.lock:
            count = len(self.submits)
        submitted = Submitted(
            destination=decoded.destination_addr,
            source=decoded.source_addr,
            source_ton=decoded.source_addr_ton,
            esm_class=decoded.esm_class,
            data_coding=decoded.data_coding,
            short_message=bytes(decoded.short_message),
            tlvs={t.tag: bytes(t.value) for t in decoded.tlvs},
            message_id="",
            status=0,
            time=time.monotonic(),
            session=writer,
        )
        answer = self.script(submitted, count)
        if answer.drop:
            writer.transport.abort()
            return False
        submitted.status = answer.status
        if answer.status == 0:
            submitted.message_id = f"m{next(self._ids):06d}"
        with self.lock:
            self.submits.append(submitted)
            self.outstanding += 1
            self.most_outstanding = max(self.most_outstanding, self.outstanding)
        if self.answer_delay:
            task = asyncio.get_running_loop().create_task(
                self._answer_later(writer, submitted, answer, sequence)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._answer(writer, submitted, answer, sequence)
        return True

    async def _answer_later(
        self, writer: asyncio.StreamWriter, submitted: Submitted, answer: Answer, sequence: int
    ) -> None:
        await asyncio.sleep(self.answer_delay)
        if not writer.is_closing():
            self._answer(writer, submitted, answer, sequence)

    def _answer(
        self, writer: asyncio.StreamWriter, submitted: Submitted, answer: Answer, sequence: int
    ) -> None:
        with self.lock:
            self.outstanding -= 1
        receipt = b""
        if answer.status == 0 and answer.stat:
            receipt = _receipt_text(submitted, answer.stat, answer.err)
        if receipt and answer.receipt_first:
            self._deliver(writer, submitted.destination, receipt, 0, 0x04)
        body = (submitted.message_id.encode() if answer.status == 0 else b"") + b"\x00"
        writer.write(HEADER.pack(16 + len(body), SUBMIT_SM_RESP, answer.status, sequence) + body)
        if receipt and not answer.receipt_first:
            self._deliver(writer, submitted.destination, receipt, 0, 0x04)


def _receipt_text(submitted: Submitted, stat: str, err: str) -> bytes:
    return (
        f"id:{submitted.message_id} sub:001 dlvrd:{'001' if stat == 'DELIVRD' else '000'} "
        f"submit date:2512061200 done date:2512061201 stat:{stat} err:{err} text:x"
    ).encode()


@contextmanager
def running_smsc(**kwargs: Any) -> Iterator[Smsc]:
    """An Smsc serving on a free port of 127.0.0.1 in a thread, until the block ends."""
    smsc = Smsc(**kwargs)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    server_box: list[asyncio.Server] = []

    async def start() -> None:
        server = await asyncio.start_server(smsc.serve, "127.0.0.1", 0)
        smsc.port = server.sockets[0].getsockname()[1]
        server_box.append(server)

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        smsc._loop = loop
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(5)
    try:
        yield smsc
    finally:

        async def stop() -> None:
            server_box[0].close()
            smsc._drop_all()
            await asyncio.sleep(0.05)

        asyncio.run_coroutine_threadsafe(stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
