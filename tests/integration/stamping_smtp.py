"""A real SMTP server that says when each transaction began, by the kernel's clock.

Every MAIL FROM is stamped with the time the kernel received it (SO_TIMESTAMPNS), not the time
this process got round to reading it: on a loaded machine a server can read a command long after
it arrived, and a barrier test that timed sends by the server's reading would count a send
started before a Pause as one started after it. PIPELINING is not offered, so each command
arrives on its own, answered before the next is sent.

It listens on several ports at once, so that each daemon of a cluster can be given its own and
every transaction told apart by who sent it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import struct
import threading
import time

TIMESTAMP = struct.Struct("qq")  # struct timespec on 64-bit Linux
# Linux's value on x86 and arm (asm-generic/socket.h); Python names it only from 3.14 on.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


@dataclasses.dataclass(frozen=True)
class Transaction:
    """One message received: the port it came in on, to whom, and when it began and ended."""

    port: int
    recipients: tuple[str, ...]
    started: float  # the kernel's receive time of MAIL FROM (time.time() clock)
    ended: float


class StampingSmtpServer:
    """An SMTP server on loopback with one listening port per sender."""

    def __init__(self, ports: int = 1, *, accept_delay: float = 0.0) -> None:
        # Seconds each message takes to be accepted after its data: a slow server, so that the
        # sends a daemon has in flight at once show as overlapping transactions.
        self.accept_delay = accept_delay
        self._listeners = []
        for _ in range(ports):
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", 0))
            listener.listen(128)
            self._listeners.append(listener)
        self.ports = [int(s.getsockname()[1]) for s in self._listeners]
        self._lock = threading.Lock()
        self._transactions: list[Transaction] = []
        self._connections: list[socket.socket] = []
        self._closed = False
        self._threads = [
            threading.Thread(
                target=self._accept, args=(s,), daemon=True, name=f"smtp accept {s.getsockname()}"
            )
            for s in self._listeners
        ]
        for thread in self._threads:
            thread.start()

    def transactions(self) -> list[Transaction]:
        """Every transaction completed so far, in the order they ended."""
        with self._lock:
            return list(self._transactions)

    def close(self) -> None:
        """Stop listening and drop every connection."""
        self._closed = True
        for listener in self._listeners:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def _accept(self, listener: socket.socket) -> None:
        port = int(listener.getsockname()[1])
        while not self._closed:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                self._connections.append(connection)
            threading.Thread(target=self._serve, args=(connection, port), daemon=True).start()

    def _serve(self, connection: socket.socket, port: int) -> None:
        session = _Session(connection)
        try:
            connection.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            session.reply("220 stamping ESMTP")
            started, recipients = 0.0, list[str]()
            while True:
                line, stamp = session.line()
                verb = line[:4].upper()
                if verb in ("EHLO", "HELO"):
                    session.reply("250-stamping\r\n250 8BITMIME" if verb == "EHLO" else "250 stamping")
                elif verb == "MAIL":
                    started, recipients = stamp, list[str]()
                    session.reply("250 2.1.0 ok")
                elif verb == "RCPT":
                    recipients.append(line.split(":", 1)[1].strip().strip("<>").lower())
                    session.reply("250 2.1.5 ok")
                elif verb == "DATA":
                    session.reply("354 go ahead")
                    session.body()
                    if self.accept_delay:
                        time.sleep(self.accept_delay)
                    with self._lock:
                        self._transactions.append(Transaction(port, tuple(recipients), started, time.time()))
                    session.reply("250 2.0.0 queued")
                elif verb in ("RSET", "NOOP"):
                    session.reply("250 ok")
                elif verb == "QUIT":
                    session.reply("221 bye")
                    return
                else:
                    session.reply("502 5.5.2 not implemented")
        except (OSError, EOFError):
            return
        finally:
            with self._lock:
                self._connections.remove(connection)
            connection.close()


class _Session:
    """Reads lines (with the kernel's receive time of the read that completed them) and the body."""

    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection
        self.buffer = b""
        self.stamp = 0.0

    def _receive(self) -> None:
        data, ancillary, _, _ = self.connection.recvmsg(65536, socket.CMSG_SPACE(TIMESTAMP.size))
        if not data:
            raise EOFError
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                seconds, nanoseconds = TIMESTAMP.unpack(value[: TIMESTAMP.size])
                self.stamp = seconds + nanoseconds / 1e9
        self.buffer += data

    def line(self) -> tuple[str, float]:
        while b"\r\n" not in self.buffer:
            self._receive()
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line.decode("utf-8", "replace"), self.stamp

    def body(self) -> None:
        while b"\r\n.\r\n" not in b"\r\n" + self.buffer:
            self._receive()
        _, self.buffer = (b"\r\n" + self.buffer).split(b"\r\n.\r\n", 1)

    def reply(self, text: str) -> None:
        self.connection.sendall(text.encode() + b"\r\n")
