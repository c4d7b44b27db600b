"""SMTP: a pool of long-lived connections per transport, and sending a batch through it."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Iterator, Sequence

import aiosmtplib

from campaignd.plugin import Gate, Recipient, SendResult, SendStatus, Transport
from campaignd_email.message import AddressError, Built, Composer
from campaignd_email.settings import SmtpSettings
from campaignd_email.templates import RenderError

IDLE_CHECK = 10.0  # seconds a connection may sit idle before a NOOP checks it is still open


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
    pool: Pool, composer: Composer, recipients: Sequence[Recipient], gate: Gate
) -> list[SendResult]:
    """Send `recipients` over the pool's connections, one message at a time on each."""
    batch = _Batch(pool, composer, gate)
    pending = iter(recipients)
    workers = [asyncio.ensure_future(batch.work(pending)) for _ in range(min(pool.size, len(recipients)))]
    try:
        await asyncio.gather(*workers)
    except BaseException:
        # No send may go on once the batch has ended, with an error or cancelled.
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        raise
    # Left over only when every worker lost its connection and could not open another.
    failure = batch.failure or TransportError(f"no connection to {pool.where}")
    for recipient in pending:
        batch.results[recipient.message_id] = failure.result(recipient.message_id)
    return [batch.results[r.message_id] for r in recipients]


class _Batch:
    def __init__(self, pool: Pool, composer: Composer, gate: Gate) -> None:
        self.pool = pool
        self.composer = composer
        self.gate = gate
        self.results: dict[int, SendResult] = {}
        self.failure: TransportError | None = None

    async def work(self, pending: Iterator[Recipient]) -> None:
        """Take messages from `pending` until it is empty or this worker cannot go on."""
        for recipient in pending:
            try:
                built = self.composer.build(recipient)
            except AddressError as exc:
                self.results[recipient.message_id] = _failed(recipient, str(exc), "invalid_address")
                continue
            except RenderError as exc:
                self.results[recipient.message_id] = _failed(recipient, str(exc), "render_error")
                continue
            try:
                connection = await self.pool.acquire()
            except TransportError as exc:
                self.failure = exc
                self.results[recipient.message_id] = exc.result(recipient.message_id)
                return
            keep = stop = False
            try:
                if not await self.gate.admit():
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
        try:
            await connection.smtp.sendmail(self.composer.sender, [built.recipient], built.data)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients[0]
            return _reply(message_id, refused.code, refused.message), True, False
        except aiosmtplib.SMTPResponseException as exc:
            # aiosmtplib has sent RSET, so the session can take the next message.
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
