"""SMTP: a pool of long-lived connections per transport, and sending a batch through it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import socket
import ssl
import time
from collections.abc import Mapping, Sequence

import aiosmtplib
from aiosmtplib.protocol import SMTPProtocol, normalize_message_line_endings
from aiosmtplib.response import SMTPResponse

from campaignd.plugin import Gate, Recipient, Renderer, SendResult, SendStatus, TemplateError, Transport
from campaignd_email.message import AddressError, Built, Composer
from campaignd_email.settings import SmtpSettings

IDLE_CHECK = 10.0  # seconds a connection may sit idle before a NOOP checks it is still open
# Recipients rendered per call to the renderer. Sending one slice overlaps rendering the next, and
# at most about two slices of rendered messages are held at once.
SLICE = 100

# What an address on a command line may not hold, as aiosmtplib checks it: whitespace and control
# characters (CR and LF would end the command), angle brackets and quotes. Non-ASCII would need
# SMTPUTF8, which is not used.
_NOT_IN_PATH = re.compile(r"[\x00-\x20\x7f<>\"]")
# The replies that accept MAIL, RCPT and DATA, as SMTP.sendmail reads them.
_ENVELOPE_ACCEPTED = ((250,), (250, 251), (354,))
_CLOSING = 421  # the server is closing the session: aiosmtplib closes it too


class TransportError(Exception):
    """No connection to the server: it cannot be reached, or (`fatal`) it refuses us in a way
    retrying will not mend, such as refused authentication or a certificate that fails."""

    def __init__(self, message: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.fatal = fatal

    def result(self, message_id: int) -> SendResult:
        """The result of a message this error kept from being sent."""
        return SendResult(
            message_id,
            SendStatus.RETRY,
            error=str(self),
            reason="transport_failed" if self.fatal else "unreachable",
            fatal=self.fatal,
            transport_down=not self.fatal,
        )


class Connection:
    """One SMTP session of a pool."""

    __slots__ = ("last_used", "sent", "smtp")

    def __init__(self, smtp: aiosmtplib.SMTP) -> None:
        self.smtp = smtp
        self.sent = 0
        self.last_used = time.monotonic()


class Pool:
    """The open form of one transport: up to `transport.concurrency` SMTP connections, opened
    when first needed and kept for later batches."""

    def __init__(self, transport: Transport, tls: ssl.SSLContext | None, local_hostname: str) -> None:
        self.name = transport.name
        self.settings = SmtpSettings.from_options(transport.options)
        self.size = transport.concurrency
        self.closed = False
        self._tls = tls
        self._local_hostname = local_hostname
        self._slots = asyncio.Semaphore(self.size)
        self._idle: list[Connection] = []

    @property
    def where(self) -> str:
        """The server, for messages."""
        return f"{self.settings.host}:{self.settings.port}"

    async def acquire(self) -> Connection:
        """A connection for this task alone, connected and greeted; TransportError when none can
        be opened. Waits while every connection is in use."""
        await self._slots.acquire()
        try:
            if self.closed:
                raise TransportError(f"transport {self.name} is closed")
            while self._idle:
                connection = self._idle.pop()
                if await self._usable(connection):
                    return connection
            return await self._connect()
        except BaseException:
            self._slots.release()
            raise

    def release(self, connection: Connection, *, keep: bool) -> None:
        """Give a connection back; with `keep` False (or when it broke) it is closed."""
        connection.last_used = time.monotonic()
        if keep and connection.smtp.is_connected and not self.closed:
            self._idle.append(connection)
        else:
            connection.smtp.close()
        self._slots.release()

    async def close(self) -> None:
        """QUIT every idle connection; errors are ignored."""
        self.closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(_quit(c.smtp) for c in idle))

    async def _usable(self, connection: Connection) -> bool:
        limit = self.settings.messages_per_connection
        if not connection.smtp.is_connected:
            connection.smtp.close()
            return False
        if limit and connection.sent >= limit:
            await _quit(connection.smtp)
            return False
        if time.monotonic() - connection.last_used > IDLE_CHECK:
            # Servers close idle sessions; finding out now keeps a message from failing on it.
            try:
                await connection.smtp.noop()
            except (aiosmtplib.SMTPException, OSError):
                connection.smtp.close()
                return False
        return True

    async def _connect(self) -> Connection:
        settings = self.settings
        smtp = aiosmtplib.SMTP(
            hostname=settings.host,
            port=settings.port,
            local_hostname=self._local_hostname,
            timeout=settings.timeout,
            use_tls=settings.security == "tls",
            start_tls=False,
            tls_context=self._tls,
        )
        try:
            await self._open(smtp)
        except BaseException:
            smtp.close()
            raise
        return Connection(smtp)

    async def _open(self, smtp: aiosmtplib.SMTP) -> None:
        settings = self.settings
        step = "connecting to"
        try:
            await smtp.connect()
            step = "greeting"
            await _hello(smtp)
            if settings.security == "starttls":
                step = "STARTTLS with"
                if not smtp.supports_extension("starttls"):
                    raise TransportError(f"{self.where} does not offer STARTTLS", fatal=True)
                await smtp.starttls()
                await _hello(smtp)
            if settings.username:
                step = "authenticating to"
                await smtp.login(settings.username, settings.password or "")
        except TransportError:
            raise
        except aiosmtplib.SMTPAuthenticationError as exc:
            # 535 and its kin are the operator's to fix; 454 is a temporary failure.
            raise TransportError(
                f"{self.where} refused authentication: {exc.code} {exc.message}", fatal=exc.code >= 500
            ) from None
        except aiosmtplib.SMTPResponseException as exc:
            # A refused greeting or EHLO may pass; a refused STARTTLS means sending in clear.
            fatal = exc.code >= 500 and step == "STARTTLS with"
            raise TransportError(f"{step} {self.where}: {exc.code} {exc.message}", fatal=fatal) from None
        except aiosmtplib.SMTPConnectError as exc:
            tls_error = exc.__cause__ if isinstance(exc.__cause__, ssl.SSLError) else None
            if tls_error is not None:
                raise TransportError(f"TLS with {self.where} failed: {tls_error}", fatal=True) from None
            raise TransportError(f"{step} {self.where}: {exc}") from None
        except ssl.SSLError as exc:
            raise TransportError(f"TLS with {self.where} failed: {exc}", fatal=True) from None
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
            raise TransportError(f"{step} {self.where}: {exc}") from None
        except aiosmtplib.SMTPException as exc:
            # No AUTH offered, no common AUTH mechanism: the configuration does not fit the server.
            raise TransportError(f"{step} {self.where}: {exc}", fatal=step == "authenticating to") from None


async def open_pool(transport: Transport) -> Pool:
    """The pool of `transport`; no connection is opened yet."""
    settings = SmtpSettings.from_options(transport.options)
    tls = None if settings.security == "none" else await asyncio.to_thread(_tls_context, settings)
    # The name sent in EHLO; looking it up for every connection would cost a DNS query each time.
    local_hostname = settings.local_hostname
    if not local_hostname:
        local_hostname = await asyncio.to_thread(socket.getfqdn)
    return Pool(transport, tls, local_hostname)


def _tls_context(settings: SmtpSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=settings.ca_file)
    if not settings.verify_certificate:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def _hello(smtp: aiosmtplib.SMTP) -> None:
    # Greeting now rather than at the first message keeps every await before the gate.
    try:
        await smtp.ehlo()
    except aiosmtplib.SMTPHeloError:
        await smtp.helo()


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    try:
        await smtp.quit()
    except (aiosmtplib.SMTPException, OSError):
        pass
    finally:
        smtp.close()


async def send_batch(
    pool: Pool, composer: Composer, recipients: Sequence[Recipient], gate: Gate, renderer: Renderer
) -> list[SendResult]:
    """Send `recipients` over the pool's connections, one message at a time on each, while their
    templates are rendered a slice ahead."""
    batch = _Batch(pool, composer, gate)
    size = min(pool.size, len(recipients))
    ready: asyncio.Queue[_Ready | None] = asyncio.Queue(maxsize=SLICE)
    producer = asyncio.ensure_future(batch.render(recipients, renderer, ready, size))
    workers = [asyncio.ensure_future(batch.work(ready)) for _ in range(size)]
    try:
        await asyncio.gather(*workers)
    except BaseException:
        # No send may go on once the batch has ended, with an error or cancelled.
        for task in [producer, *workers]:
            task.cancel()
        await asyncio.gather(producer, *workers, return_exceptions=True)
        raise
    # Every worker has ended; the producer may still wait for room in the queue.
    producer.cancel()
    await asyncio.gather(producer, return_exceptions=True)
    if batch.error is not None:
        raise batch.error
    # Left over only when every worker lost its connection and could not open another.
    failure = batch.failure or TransportError(f"no connection to {pool.where}")
    return [batch.results.get(r.message_id) or failure.result(r.message_id) for r in recipients]


# A recipient ready to send: its rendered templates and its unsubscribe URL.
_Ready = tuple[Recipient, Mapping[str, str], str]


class _Batch:
    def __init__(self, pool: Pool, composer: Composer, gate: Gate) -> None:
        self.pool = pool
        self.composer = composer
        self.gate = gate
        self.results: dict[int, SendResult] = {}
        self.failure: TransportError | None = None
        self.error: Exception | None = None

    async def render(
        self,
        recipients: Sequence[Recipient],
        renderer: Renderer,
        ready: asyncio.Queue[_Ready | None],
        workers: int,
    ) -> None:
        """Render the batch a slice at a time into `ready`, then tell each worker it is done."""
        try:
            for start in range(0, len(recipients), SLICE):
                part = recipients[start : start + SLICE]
                for recipient, (url, fields) in zip(
                    part, await self.composer.render(part, renderer), strict=True
                ):
                    if isinstance(fields, TemplateError):
                        self.results[recipient.message_id] = _failed(recipient, str(fields), "template_error")
                    else:
                        await ready.put((recipient, fields, url))
        except Exception as exc:
            # Raised by send_batch once the workers have sent what was rendered.
            self.error = exc
        for _ in range(workers):
            await ready.put(None)

    async def work(self, ready: asyncio.Queue[_Ready | None]) -> None:
        """Send rendered messages from `ready` until it is done or this worker cannot go on."""
        while (item := await ready.get()) is not None:
            recipient, fields, url = item
            try:
                built = self.composer.build(recipient, fields, url)
            except AddressError as exc:
                self.results[recipient.message_id] = _failed(recipient, str(exc), "invalid_address")
                continue
            try:
                connection = await self.pool.acquire()
            except TransportError as exc:
                self.failure = exc
                self.results[recipient.message_id] = exc.result(recipient.message_id)
                return
            keep = stop = False
            try:
                if not await self.gate.admit(message_id=recipient.message_id):
                    keep = True
                    self.results[recipient.message_id] = SendResult(
                        recipient.message_id, SendStatus.NOT_STARTED
                    )
                    continue
                # Admitted: MAIL FROM is written before this task next yields.
                result, keep, stop = await self._transaction(connection, built, recipient)
                self.results[recipient.message_id] = result
            finally:
                self.pool.release(connection, keep=keep)
            if stop:
                return

    async def _transaction(
        self, connection: Connection, built: Built, recipient: Recipient
    ) -> tuple[SendResult, bool, bool]:
        """The result of one message, whether its connection can be kept, and whether this
        worker should stop."""
        message_id = recipient.message_id
        smtp = connection.smtp
        try:
            if smtp.supports_extension("pipelining"):
                await _send_pipelined(smtp, built.sender or self.composer.sender, built)
            else:
                # Checked here: sendmail cuts an address at a line break, and refuses some others
                # only once MAIL FROM is out, leaving that envelope open.
                _path(built.recipient)
                await smtp.sendmail(built.sender or self.composer.sender, [built.recipient], built.data)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients[0]
            return _reply(message_id, refused.code, refused.message), True, False
        except aiosmtplib.SMTPResponseException as exc:
            # RSET has been sent where needed, so the session can take the next message.
            return _reply(message_id, exc.code, exc.message), True, False
        except aiosmtplib.SMTPTimeoutError as exc:
            # A server that does not answer in time would make every message wait as long: this
            # worker stops, and what no other worker takes goes back for another transport.
            self.failure = TransportError(f"{self.pool.where} did not answer: {exc}")
            error = f"no answer from {self.pool.where} within {self.pool.settings.timeout:g} s"
            return SendResult(message_id, SendStatus.RETRY, error=error, reason="timeout"), False, True
        except (aiosmtplib.SMTPServerDisconnected, OSError) as exc:
            error = f"the connection to {self.pool.where} was lost during the transaction: {exc}"
            return (
                SendResult(message_id, SendStatus.RETRY, error=error, reason="connection_lost"),
                False,
                False,
            )
        except ValueError as exc:
            return _failed(recipient, str(exc), "invalid_address"), True, False
        except aiosmtplib.SMTPException as exc:
            return SendResult(message_id, SendStatus.RETRY, error=str(exc), reason="smtp_error"), False, False
        connection.sent += 1
        return SendResult(message_id, SendStatus.SENT, provider_id=built.message_id), True, False


def _reply(message_id: int, code: int, text: str) -> SendResult:
    error = f"{code} {text}".strip()
    if 500 <= code < 600:
        return SendResult(message_id, SendStatus.FAILED, error=error, reason="rejected")
    return SendResult(message_id, SendStatus.RETRY, error=error, reason="deferred")


def _failed(recipient: Recipient, error: str, reason: str) -> SendResult:
    return SendResult(recipient.message_id, SendStatus.FAILED, error=error, reason=reason)


async def _send_pipelined(smtp: aiosmtplib.SMTP, sender: str, built: Built) -> None:
    """Send one message as `SMTP.sendmail` does and raise as it does, but with MAIL, RCPT and
    DATA in one write and the message in another (RFC 2920)."""
    protocol = smtp.protocol
    lock = None if protocol is None else protocol._command_lock
    if protocol is None or lock is None:
        raise aiosmtplib.SMTPServerDisconnected("Server not connected")
    rcpt = b"RCPT TO:" + _path(built.recipient) + b"\r\n"
    size, message = _message(built.data)
    mail = _mail_from(sender)
    if smtp.supports_extension("size"):
        mail += b" SIZE=%d" % size
    try:
        async with lock:
            refused, reset = await _exchange(smtp, protocol, mail + b"\r\n" + rcpt + b"DATA\r\n", message)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, aiosmtplib.SMTPResponseException):
        # A reply lost, late or unreadable: the replies still to come would be paired with the
        # wrong commands.
        smtp.close()
        raise
    if refused is None:
        return
    if reset:
        # As SMTP.sendmail: the refusal is the message's result, however the reset went.
        with contextlib.suppress(ConnectionError, aiosmtplib.SMTPResponseException):
            await smtp.rset()
    raise aiosmtplib.SMTPResponseException(refused.code, refused.message)


async def _exchange(
    smtp: aiosmtplib.SMTP, protocol: SMTPProtocol, commands: bytes, message: bytes
) -> tuple[SMTPResponse | None, bool]:
    """Write the envelope's commands, read their replies, and send the message when all were
    accepted. Returns the reply to report (None: the message was accepted) and whether RSET
    must clear an envelope the server still holds. The caller holds the command lock."""
    timeout = smtp.timeout
    # As SMTPProtocol.execute_command: the reply is expected before the write.
    protocol._response_pending = True
    protocol.write(commands)
    refused = None
    for accepted in _ENVELOPE_ACCEPTED:
        reply = await _next_reply(protocol, timeout)
        if reply.code == _CLOSING:
            smtp.close()
            return refused or reply, False
        if refused is None and reply.code not in accepted:
            refused = reply
    if refused is None:
        protocol._response_pending = True
        protocol.write(message)
        reply = await _next_reply(protocol, timeout)
        if reply.code == _CLOSING:
            smtp.close()
        # The reply to the message ends the transaction either way (RFC 5321 4.1.1.4): no RSET.
        return (None if reply.code == 250 else reply), False
    if reply.code == 354:
        # Asked for the message after refusing the envelope: an empty message ends DATA, and
        # its reply tells nothing (RFC 2920 3.1).
        protocol._response_pending = True
        protocol.write(b".\r\n")
        if (await _next_reply(protocol, timeout)).code == _CLOSING:
            smtp.close()
            return refused, False
    return refused, True


async def _next_reply(protocol: SMTPProtocol, seconds: float | None) -> SMTPResponse:
    """The next reply to a pipelined command, waiting at most `seconds` for it."""
    # The protocol parses the first reply of each read only; replies that came with it wait in
    # its buffer.
    reply = protocol._read_response_from_buffer()
    if reply is not None:
        protocol._response_pending = False  # as read_response leaves it
        return reply
    try:
        # Not read_response(timeout=...): on Python 3.11 its wait_for resumes this task one
        # loop iteration after the reply came, and a reply arriving in that iteration finds
        # the protocol's waiter done and is dropped. Awaited directly, none can be.
        async with asyncio.timeout(seconds):
            return await protocol.read_response(timeout=None)
    except TimeoutError as exc:
        raise aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response") from exc


@functools.lru_cache(maxsize=64)
def _mail_from(sender: str) -> bytes:
    """The MAIL command of a channel's sender, made once."""
    return b"MAIL FROM:" + _path(sender)


def _path(address: str) -> bytes:
    """`address` as SMTP commands carry it; ValueError when a command cannot carry it."""
    if not address.isascii() or _NOT_IN_PATH.search(address):
        raise ValueError(f"address {address!r} contains characters not permitted in an SMTP mailbox")
    return b"<" + address.encode("ascii") + b">"


def _message(data: bytes) -> tuple[int, bytes]:
    """The size of `data` for SIZE (RFC 1870), and `data` as sent after DATA: CRLF lines,
    dot-stuffed, ended by the line holding only a dot."""
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf or not data.endswith(b"\r\n"):
        # The composer writes CRLF lines; counting is cheaper than a regex pass that finds none.
        data = normalize_message_line_endings(data)
    size = len(data)
    if data.startswith(b"."):
        data = b"." + data
    return size, data.replace(b"\r\n.", b"\r\n..") + b".\r\n"
