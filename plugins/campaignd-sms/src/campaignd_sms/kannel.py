"""The `kannel` transport: Kannel's HTTP sendsms interface (smsbox), with delivery reports and
inbound messages coming back to an HTTP listener of the transport's own.

Each message gets an id of ours, `k-…`, carried in its dlr-url: the delivery report names it, so
it is the message's provider id. The listener serves two routes under a secret path segment,
`/<secret>/dlr` and `/<secret>/mo`; anything else is refused with 403 and logged.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import urllib.parse
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from campaignd.plugin import Gate, HttpRoute, Recipient, SendResult, SendStatus, Transport
from campaignd_sms.encoding import Encoded, Encoding
from campaignd_sms.receipts import Receipt
from campaignd_sms.settings import Sender

if TYPE_CHECKING:
    from campaignd_sms.link import SmsTransport

log = logging.getLogger("campaignd_sms.kannel")

# When the daemon's HTTP listener is on: the public URL of the sms prefix, and the open kannel
# transports by name, to which its routes hand the callbacks.
LISTENER: dict[str, str] = {}
OPEN: dict[str, Kannel] = {}

# dlr-mask: 1 delivered to the phone, 2 not delivered, 16 refused by the SMSC.
DLR_MASK = 1 | 2 | 16
DLR_STATES = {1: "DELIVRD", 2: "UNDELIV", 16: "REJECTD"}


class Kannel:
    """One kannel transport: a sendsms client and the callback listener."""

    def __init__(self, transport: Transport, owner: SmsTransport) -> None:
        options = transport.options
        self.owner = owner
        self.sendsms_url = str(options["sendsms_url"])
        self.username = str(options.get("username", ""))
        self.password = str(options.get("kannel_password", ""))
        self.smsc_id = str(options.get("smsc_id", ""))
        self.timeout = float(options.get("timeout", 10.0))
        self.callback_host = str(options.get("callback_host", "127.0.0.1"))
        self.callback_port = int(options.get("callback_port", 0))
        self.callback_url = str(options["callback_url"]).rstrip("/")
        self.secret = str(options["callback_secret"])
        self.name = transport.name
        self.slots = asyncio.Semaphore(max(1, transport.concurrency))
        self.prefix = f"k-{secrets.token_hex(4)}-"
        self.serial = 0
        self.session: aiohttp.ClientSession | None = None
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        """Open the callback listener, or, when the daemon's HTTP listener is on, take the
        callbacks through its routes (`callback_host`, `callback_port` and `callback_url` are
        then not used)."""
        if LISTENER:
            self.callback_url = f"{LISTENER['base_url']}/kannel/{self.name}"
            OPEN[self.name] = self
            return
        app = web.Application()
        app.router.add_get("/{secret}/dlr", self._dlr)
        app.router.add_get("/{secret}/mo", self._mo)
        app.router.add_route("*", "/{tail:.*}", self._refuse)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.callback_host, self.callback_port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.callback_port

    async def close(self) -> None:
        """Stop the listener and the client."""
        if OPEN.get(self.name) is self:
            del OPEN[self.name]
        if self.session is not None:
            await self.session.close()
        if self.runner is not None:
            await self.runner.cleanup()

    def _authorised(self, request: web.Request) -> bool:
        given = request.match_info.get("secret", "")
        return hmac.compare_digest(given.encode(), self.secret.encode())

    async def _refuse(self, request: web.Request) -> web.Response:
        log.warning("kannel callback refused: wrong path or secret (from %s)", request.remote)
        return web.Response(status=403, text="forbidden\n")

    async def _dlr(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return await self._refuse(request)
        message = request.query.get("id", "")
        try:
            kind = int(request.query.get("type", "0"))
        except ValueError:
            kind = 0
        stat = DLR_STATES.get(kind)
        if message and stat:
            reply = request.query.get("reply", "")
            self.owner.receipt(Receipt(message, stat, reply[:60]))
        return web.Response(text="ok\n")

    async def _mo(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return await self._refuse(request)
        source = request.query.get("from", "")
        if source:
            self.owner.reply(source, request.query.get("text", ""))
        return web.Response(text="ok\n")

    def _client(self) -> aiohttp.ClientSession:
        if self.session is None or self.session.closed:
            self.session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(limit=0),
            )
        return self.session

    async def send(self, recipient: Recipient, encoded: Encoded, sender: Sender, gate: Gate) -> SendResult:
        """Hand one message to smsbox."""
        message_id = recipient.message_id
        parts = len(encoded.parts)
        self.serial += 1
        provider_id = f"{self.prefix}{self.serial}"
        dlr = f"{self.callback_url}/{self.secret}/dlr?id={provider_id}&type=%d&reply=%A"
        query = {
            "username": self.username,
            "password": self.password,
            "from": sender.address,
            "to": recipient.address,
            "text": encoded.text,
            "charset": "UTF-8",
            "coding": "0" if encoded.encoding is Encoding.GSM7 else "2",
            "dlr-mask": str(DLR_MASK),
            "dlr-url": dlr,
        }
        if self.smsc_id:
            query["smsc"] = self.smsc_id
        url = f"{self.sendsms_url}?{urllib.parse.urlencode(query)}"
        async with self.slots:
            client = self._client()
            if not await gate.admit(weight=parts, message_id=message_id):
                return SendResult(message_id, SendStatus.NOT_STARTED)
            try:
                async with client.get(url) as response:
                    status = response.status
                    body = (await response.text(errors="replace")).strip()
            except (aiohttp.ClientConnectorError, ConnectionRefusedError) as exc:
                return SendResult(
                    message_id,
                    SendStatus.RETRY,
                    error=f"cannot reach smsbox: {exc}",
                    reason="unreachable",
                    transport_down=True,
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                return SendResult(
                    message_id, SendStatus.RETRY, error=f"no answer from smsbox: {exc!r}", reason="no_answer"
                )
        error = f"{status} {body}"[:300]
        if status in (200, 202):
            # "0: Accepted for delivery" or "3: Queued for later delivery": Kannel has it.
            self.owner.receipts.sent([provider_id])
            return SendResult(message_id, SendStatus.SENT, provider_id=provider_id, parts=parts)
        if status in (401, 403):
            return SendResult(message_id, SendStatus.RETRY, error=error, reason="unauthorized", fatal=True)
        if status >= 500 or status == 429:
            return SendResult(message_id, SendStatus.RETRY, error=error, reason="deferred", parts=parts)
        return SendResult(message_id, SendStatus.FAILED, error=error, reason="rejected", parts=parts)


def routes() -> list[HttpRoute]:
    """The callback routes on the daemon's HTTP listener: `kannel/<transport>/<secret>/dlr` and
    `/mo`, handed to that transport while it is open (503 before, so that Kannel tries again)."""

    def dispatch(kind: str) -> Any:
        async def handle(request: web.Request) -> web.Response:
            kannel = OPEN.get(request.match_info["transport"])
            if kannel is None:
                return web.Response(status=503, text="transport not open\n")
            return await (kannel._dlr(request) if kind == "dlr" else kannel._mo(request))

        return handle

    return [
        HttpRoute("GET", "kannel/{transport}/{secret}/dlr", dispatch("dlr")),
        HttpRoute("GET", "kannel/{transport}/{secret}/mo", dispatch("mo")),
    ]
