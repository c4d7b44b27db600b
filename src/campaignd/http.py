"""The daemon's HTTP listener ([http]): what recipients and providers reach over HTTP. Channel
plugins mount their routes on it (campaignd_http_routes) under `/{channel type}/`: the email
channel's one-click unsubscribe and tracking, an SMS gateway's delivery reports."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Awaitable, Callable

from aiohttp import web

from campaignd import logs
from campaignd.config import HttpSettings
from campaignd.plugin import MessageEventSink
from campaignd.plugin.manager import Plugins

log = logs.get("campaignd.http")

# Methods a plugin may mount; anything else is a mistake in the plugin.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class MountError(Exception):
    """A plugin could not set up what its routes need (e.g. a port of its own to listen on)."""


class HttpListener:
    """An aiohttp server on `[http] address` with the routes the loaded plugins mount."""

    def __init__(self, settings: HttpSettings, plugins: Plugins, events: MessageEventSink) -> None:
        self.settings = settings
        self.plugins = plugins
        self.events = events
        self.routes: list[str] = []
        self.port = 0
        self._runner: web.AppRunner | None = None
        # The handler of each mounted (method, path), replaced at a reload: aiohttp's router is
        # frozen once serving, so routes are mounted once and call through this table.
        self._handlers: dict[tuple[str, str], Handler] = {}

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
        the one the OS chose for port 0); returns the port. OSError when the address cannot be bound,
        MountError when a plugin cannot set up what its routes need."""
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
        try:
            self._handlers = self._plugin_routes()
        except BaseException:
            sock.close()
            raise
        app = web.Application(client_max_size=self.settings.max_body_bytes, middlewares=[self._limit_body])
        app.router.add_get("/healthz", _healthz)
        for method, path in sorted(self._handlers):
            self._mount(app, method, path)
        context = None
        if self.settings.tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.settings.tls.cert_file, self.settings.tls.key_file)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.SockSite(self._runner, sock, ssl_context=context, shutdown_timeout=2.0).start()
        log.info("http listening", port=self.port, public_url=self.public_url, routes=self.routes)
        return self.port

    def _plugin_routes(self) -> dict[tuple[str, str], Handler]:
        """Each plugin's routes under `/{type}/` with the type's current options. MountError when
        a plugin cannot set up what they need."""
        found: dict[tuple[str, str], Handler] = {}
        for channel_type in sorted(self.plugins.types):
            try:
                answers = self.plugins.manager.hook.campaignd_http_routes(
                    channel_type=channel_type,
                    options=self.plugins.config.options.get(channel_type, {}),
                    base_url=f"{self.public_url}/{channel_type}",
                    events=self.events,
                )
            except OSError as exc:
                raise MountError(f"channel type {channel_type}: {exc}") from None
            for routes in answers:
                for route in routes or ():
                    method = route.method.upper()
                    if method not in METHODS:
                        raise ValueError(f"channel type {channel_type}: cannot mount method {route.method!r}")
                    found[(method, f"/{channel_type}/{route.path.lstrip('/')}")] = route.handler
        return found

    def _mount(self, app: web.Application, method: str, path: str) -> None:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._handlers.get((method, path), _gone)(request)

        if method == "GET":
            # HEAD runs the GET handler (aiohttp drops the body), unless the plugin mounts its own.
            app.router.add_get(path, handle, allow_head=("HEAD", path) not in self._handlers)
        else:
            app.router.add_route(method, path, handle)
        self.routes.append(f"{method} {path}")

    def reconfigure(self) -> None:
        """After a reload: ask the plugins for their routes again, with the reloaded options, and
        serve the mounted ones with the new handlers. A route that was not mounted at start needs a
        restart (logged); one a plugin no longer returns answers 404."""
        mounted = set(self._handlers)
        try:
            handlers = self._plugin_routes()
        except (MountError, ValueError) as exc:
            log.error("http routes not reloaded; keeping the running ones", error=str(exc))
            return
        added = sorted(set(handlers) - mounted)
        if added:
            log.warning(
                "these http routes are served only after a restart", routes=[f"{m} {p}" for m, p in added]
            )
        self._handlers = {key: handlers.get(key, _gone) for key in mounted}

    @web.middleware
    async def _limit_body(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """413 for a body over max_body_bytes before any handler runs, whether the handler would
        read the body or not."""
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
        if request.body_exists:
            # Reads at most `limit` bytes (client_max_size), then 413; the handler gets what was read.
            await request.read()
        return await handler(request)

    async def stop(self) -> None:
        """Stop listening; requests in progress get a short grace."""
        if self._runner is not None:
            await self._runner.cleanup()


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _gone(request: web.Request) -> web.Response:
    raise web.HTTPNotFound()
