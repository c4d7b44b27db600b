"""The API's front process: it serves the configured listeners, answers the calls that only read
the database itself, and forwards every other call to its daemon over the daemon's private
socket.

It is an interpreter of its own, so its calls never wait for the sending's share of a GIL: a
daemon's API thread gets what a campaign sending at full speed leaves of it. Run by the daemon
(`api/front_process.py`), never by hand: `python -m campaignd.api.front --upstream PATH
--ready-fd N --parent PID [--config FILE]`.
"""

from __future__ import annotations

import ctypes
import signal
import sys

if __name__ == "__main__" and sys.platform == "linux":
    # First, before the imports below (a second or more): a daemon that dies, even by SIGKILL,
    # takes its front with it, so that the next daemon finds the socket free.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

import argparse
import asyncio
import json
import os
import pathlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from campaignd import logs, loops, metrics
from campaignd.api.auth import FORWARDED_FOR, VIEWER_METHODS, Authenticator, current_principal
from campaignd.api.campaigns import CampaignReplies, CampaignService
from campaignd.api.contacts import ContactService
from campaignd.api.convert import PageTokens
from campaignd.api.interceptors import CallInterceptor
from campaignd.api.server import SocketInUseError, listen, server_options
from campaignd.audience.service import ContactManager
from campaignd.campaigns import CampaignManager, Previews, Reports
from campaignd.changes import ChangeHub
from campaignd.config import ConfigError, Settings, load
from campaignd.engine.events import EventRecorder
from campaignd.plugin.manager import PluginError, Plugins
from campaignd.store import keys
from campaignd.store.db import Database, create_engine
from campaignd.v1 import (
    campaign_service_pb2,
    campaign_service_pb2_grpc,
    cluster_service_pb2,
    contact_service_pb2,
    contact_service_pb2_grpc,
)

if TYPE_CHECKING:
    from google.protobuf.descriptor import FileDescriptor

    from campaignd.api.interceptors import GenericHandler

log = logs.get("campaignd.front")
Context = aio.ServicerContext[Any, Any]

# Answered here, from the database: the calls that only read (auth.VIEWER_METHODS), but those
# that need more of the daemon than its stored rows. Those, and every change, go to the daemon.
NEEDS_THE_DAEMON = frozenset(
    {
        "GetCampaignReport",  # the current rate, the send windows' reopening
        "WatchCampaign",  # the engine's wake-ups
        "EstimateRecipients",  # the plugins' address kinds; a long read, better not here
        "PreviewMessage",  # the render pool and the transports
        "ListChannelTypes",  # the plugins the daemon loaded
        "ListClusterMembers",  # the daemon's own membership
        "ServerReflectionInfo",  # a stream; rare
    }
)
LOCAL_METHODS = VIEWER_METHODS - NEEDS_THE_DAEMON
SERVED: Sequence[FileDescriptor] = (
    campaign_service_pb2.DESCRIPTOR,
    contact_service_pb2.DESCRIPTOR,
    cluster_service_pb2.DESCRIPTOR,
    health_pb2.DESCRIPTOR,
    reflection_pb2.DESCRIPTOR,
)
# Not passed on: the transport's own headers, and the caller's credentials, which were checked here.
_NOT_FORWARDED = frozenset({"authorization", "user-agent", "content-type", "te", FORWARDED_FOR})


class Upstream:
    """The daemon's private socket, and a forwarding method handler for each method served."""

    def __init__(self, path: pathlib.Path, settings: Settings) -> None:
        self.channel = aio.insecure_channel(
            f"unix:{path}", options=[*server_options(settings), ("grpc.enable_retries", 0)]
        )
        self.handlers: dict[str, Any] = {}
        for file in SERVED:
            for service in file.services_by_name.values():
                for method in service.methods:
                    name = f"/{service.full_name}/{method.name}"
                    self.handlers[name] = self._handler(
                        name, method.client_streaming, method.server_streaming
                    )

    def _handler(self, name: str, client_streaming: bool, server_streaming: bool) -> Any:
        # Messages pass as bytes, neither parsed nor built again here.
        if not client_streaming and not server_streaming:
            unary_unary = self.channel.unary_unary(name, None, None)

            async def unary(request: bytes, context: Context) -> bytes:
                return await _answer(unary_unary(request, **_call_options(context)), context)

            return grpc.unary_unary_rpc_method_handler(unary)
        if client_streaming and not server_streaming:
            stream_unary = self.channel.stream_unary(name, None, None)

            async def gathered(requests: AsyncIterator[bytes], context: Context) -> bytes:
                return await _answer(stream_unary(requests, **_call_options(context)), context)

            return grpc.stream_unary_rpc_method_handler(gathered)
        if server_streaming and not client_streaming:
            unary_stream = self.channel.unary_stream(name, None, None)

            async def streamed(request: bytes, context: Context) -> AsyncIterator[bytes]:
                async for reply in _replies(unary_stream(request, **_call_options(context)), context):
                    yield reply

            return grpc.unary_stream_rpc_method_handler(streamed)
        stream_stream = self.channel.stream_stream(name, None, None)

        async def both(requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[bytes]:
            async for reply in _replies(stream_stream(requests, **_call_options(context)), context):
                yield reply

        return grpc.stream_stream_rpc_method_handler(both)

    async def close(self) -> None:
        """Close the channel; calls still under way end CANCELLED."""
        await self.channel.close(None)


def _call_options(context: Context) -> dict[str, Any]:
    metadata = [
        (key, value)
        for key, value in context.invocation_metadata() or ()
        if key not in _NOT_FORWARDED and not key.startswith((":", "grpc-"))
    ]
    metadata.append((FORWARDED_FOR, current_principal.get().name.encode()))
    return {"metadata": tuple(metadata), "timeout": context.time_remaining()}


async def _answer(call: Any, context: Context) -> bytes:
    try:
        reply: bytes = await call
    except aio.AioRpcError as exc:
        await _relay(exc, context)
    return reply


async def _replies(call: Any, context: Context) -> AsyncIterator[bytes]:
    try:
        async for reply in call:
            yield reply
    except aio.AioRpcError as exc:
        await _relay(exc, context)
    finally:
        # The caller went away, or the stream ended: the daemon's side ends too.
        call.cancel()


async def _relay(exc: aio.AioRpcError, context: Context) -> None:
    # The trailing metadata carries the rich error details (the offending fields).
    trailing = cast(tuple[tuple[str, str | bytes], ...], tuple(exc.trailing_metadata() or ()))
    code = exc.code()
    if code is grpc.StatusCode.CANCELLED and exc.details() == "Channel closed!":
        code = grpc.StatusCode.UNAVAILABLE  # the front is stopping
    await context.abort(code, exc.details() or "", trailing)


class Observations:
    """The durations of the calls answered here, handed to the daemon each second: its metrics
    count them with the calls it answered (which include those forwarded)."""

    INTERVAL = 1.0

    def __init__(self) -> None:
        self.pending: list[tuple[str, str, float]] = []

    def observe(self, method: str, code: str, seconds: float) -> None:
        """Keep a call answered here; a forwarded one is the daemon's to count."""
        if method.rpartition("/")[2] in LOCAL_METHODS:
            self.pending.append((method, code, round(seconds, 6)))

    async def report(self, upstream: Upstream) -> None:
        """Hand what was kept to the daemon every INTERVAL seconds, until cancelled."""
        send = upstream.channel.unary_unary(metrics.FRONT_OBSERVED, None, None)
        while True:
            await asyncio.sleep(self.INTERVAL)
            if not self.pending:
                continue
            batch, self.pending = self.pending, []
            try:
                await send(json.dumps(batch).encode(), timeout=5.0)
            except aio.AioRpcError as exc:
                # The daemon is stopping or restarting: these calls go uncounted.
                log.debug("call durations not handed over", code=exc.code().name, calls=len(batch))


class Routes(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """Each method to its local handler, or to the daemon."""

    def __init__(self, local: Mapping[str, Any], upstream: Upstream) -> None:
        self.handlers = {**upstream.handlers, **local}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        return self.handlers.get(handler_call_details.method)


class _Collector:
    """What the generated `add_..._to_server` functions register with: the handlers of the
    methods served here, by their full name."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Sequence[GenericHandler]) -> None:
        """Only registered method handlers are taken (grpc >= 1.63 registers both)."""

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Any]) -> None:
        """Keep the handlers of LOCAL_METHODS."""
        for name, handler in handlers.items():
            if name in LOCAL_METHODS:
                self.handlers[f"/{service}/{name}"] = handler


class Front:
    """The front's server, its local reads and its upstream."""

    def __init__(self, settings: Settings, config_path: pathlib.Path | None, upstream: pathlib.Path) -> None:
        self.settings = settings
        self.config_path = config_path
        self.upstream_path = upstream
        self.authenticator = Authenticator(settings.auth.tokens)
        self.database = Database(create_engine(settings.database_url, pool_size=2), threads=2)
        self.contacts = ContactManager(self.database, lambda: self.settings.audience.default_region)
        self._stop = asyncio.Event()

    def local_handlers(self, plugins: Plugins) -> dict[str, Any]:
        """The handlers of LOCAL_METHODS, the daemon's own servicers on this process's database."""
        manager = CampaignManager(
            self.database, plugins, ChangeHub(), lambda: self.settings.engine, CampaignReplies()
        )
        tokens = PageTokens(self.database.read_sync(keys.get, keys.PAGE_TOKENS))
        # Their other methods, which would need the sending's parts, are never routed here.
        campaigns = CampaignService(
            manager,
            cast(Reports, None),
            cast(Previews, None),
            lambda: self.settings,
            tokens,
            cast(EventRecorder, None),
        )
        contacts = ContactService(self.contacts, lambda: self.settings, tokens)
        collector = _Collector()
        campaign_service_pb2_grpc.add_CampaignServiceServicer_to_server(campaigns, cast(Any, collector))
        contact_service_pb2_grpc.add_ContactServiceServicer_to_server(contacts, cast(Any, collector))
        return collector.handlers

    async def serve(self, plugins: Plugins, ready: Callable[[str], None]) -> None:
        """Listen, tell `ready` (the TCP port, or its error), and serve until SIGTERM."""
        # grpc.aio binds a channel or a server to the event loop it is made on.
        upstream = Upstream(self.upstream_path, self.settings)
        server = aio.server(options=[*server_options(self.settings), ("grpc.so_reuseport", 0)])
        observations = Observations()
        interceptor = CallInterceptor(self.authenticator, observations.observe)
        server.add_generic_rpc_handlers([interceptor.generic(Routes(self.local_handlers(plugins), upstream))])
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._reload(ready))
        try:
            tcp_port = await listen(server, self.settings)
        except SocketInUseError as exc:
            ready(f"in-use {exc}")
            return
        except RuntimeError as exc:
            ready(f"cannot-listen {exc}")
            return
        except OSError as exc:
            ready(f"os-error {exc.strerror or exc}")
            return
        ready(f"ok {tcp_port or 0}")
        reporting = asyncio.ensure_future(observations.report(upstream))
        await self._stop.wait()
        await server.stop(self.settings.daemon.shutdown_timeout)
        reporting.cancel()
        await upstream.close()
        self.settings.socket_path.unlink(missing_ok=True)

    def _reload(self, tell: Callable[[str], None]) -> None:
        # The listeners stay as they are (a restart changes them); tokens, limits and the log level
        # follow the file, as in the daemon, which waits for the word that it is done.
        try:
            new = load(self.config_path)
        except ConfigError:
            # The daemon logs the problems and keeps its settings, as this does.
            tell("reloaded")
            return
        self.authenticator.set_tokens(new.auth.tokens)
        logs.configure(new.log.level, new.log.format)
        self.settings = new.model_copy(update={"grpc": self.settings.grpc, "daemon": self.settings.daemon})
        tell("reloaded")

    def close(self) -> None:
        """Stop the import workers and the database's threads."""
        self.contacts.close()
        self.database.close()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="campaignd-front", description=__doc__)
    parser.add_argument("--config", type=pathlib.Path)
    parser.add_argument("--upstream", type=pathlib.Path, required=True)
    parser.add_argument("--ready-fd", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM; 0, or 1 after telling the daemon why it could not start."""
    args = _parser().parse_args(argv)
    if os.getppid() != args.parent:
        return 1  # the daemon died before the death signal was set
    # The daemon orders the stop: a ^C in its terminal reaches this process too.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # As the daemon's API thread: ahead of the sending on a busy machine, as far as allowed.
    loops.serve_first()

    def ready(line: str) -> None:
        # A line to the daemon: whether it listens, then each reload done. Left open till the end.
        os.write(args.ready_fd, line.encode() + b"\n")

    try:
        settings = load(args.config)
        # The daemon logged the plugins it loaded; only their warnings are worth a second line.
        logs.configure("warning", settings.log.format)
        plugins = Plugins(settings.plugins.load)
        plugins.configure(settings)
    except (ConfigError, PluginError) as exc:
        ready(f"config {exc}")
        return 1
    logs.configure(settings.log.level, settings.log.format)
    front = Front(settings, args.config, args.upstream)
    try:
        asyncio.run(front.serve(plugins, ready))
    finally:
        front.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
