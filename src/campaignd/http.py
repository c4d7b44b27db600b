"""The daemon's HTTP listener ([http]): what recipients and providers reach over HTTP. Channel
plugins mount their routes on it (campaignd_http_routes) under `/{channel type}/`: the email
channel's one-click unsubscribe and tracking, an SMS gateway's delivery reports."""

from __future__ import annotations

import socket
import ssl

from aiohttp import web

from campaignd import logs
from campaignd.config import HttpSettings
from campaignd.plugin import HttpRoute, MessageEventSink
from campaignd.plugin.manager import Plugins

log = logs.get("campaignd.http")

# Methods a plugin may mount; anything else is a mistake in the plugin.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE"})


class HttpListener:
    """An aiohttp server on `[http] address` with the routes the loaded plugins mount."""

    def __init__(self, settings: HttpSettings, plugins: Plugins, events: MessageEventSink) -> None:
        self.settings = settings
        self.plugins = plugins
        self.events = events
        self.routes: list[str] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def public_url(self) -> str:
        """The listener's URL as recipients reach it."""
        if self.settings.public_url:
            return self.settings.public_url
        scheme = "https" if self.settings.tls is not None else "http"
        host = self.settings.address.rpartition(":")[0] or "localhost"
        return f"{scheme}://{host}:{self.port}"

    async def start(self) -> int:
        """Listen, then mount the plugins' routes (they are told the public URL, whose port may be
        the one the OS chose for port 0); returns the port. OSError when the address cannot be bound."""
        host, _, port = self.settings.address.rpartition(":")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host.strip("[]"), int(port)))
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.port = int(sock.getsockname()[1])
        app = web.Application(client_max_size=self.settings.max_body_bytes)
        app.router.add_get("/healthz", _healthz)
        for channel_type in sorted(self.plugins.types):
            answers = self.plugins.manager.hook.campaignd_http_routes(
                channel_type=channel_type,
                options=self.plugins.config.options.get(channel_type, {}),
                base_url=f"{self.public_url}/{channel_type}",
                events=self.events,
            )
            for routes in answers:
                for route in routes or ():
                    self._mount(app, channel_type, route)
        context = None
        if self.settings.tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.settings.tls.cert_file, self.settings.tls.key_file)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.SockSite(self._runner, sock, ssl_context=context, shutdown_timeout=2.0).start()
        log.info("http listening", port=self.port, public_url=self.public_url, routes=self.routes)
        return self.port

    def _mount(self, app: web.Application, channel_type: str, route: HttpRoute) -> None:
        method = route.method.upper()
        if method not in METHODS:
            raise ValueError(f"channel type {channel_type}: cannot mount method {route.method!r}")
        path = f"/{channel_type}/{route.path.lstrip('/')}"
        app.router.add_route(method, path, route.handler)
        self.routes.append(f"{method} {path}")

    async def stop(self) -> None:
        """Stop listening; requests in progress get a short grace."""
        if self._runner is not None:
            await self._runner.cleanup()


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")
