"""The gRPC server: listeners, health checking, reflection, auth, and the services."""

from __future__ import annotations

import asyncio
import os
import pathlib
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from grpc import aio
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import _async as reflection_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from campaignd import logs, loops, metrics
from campaignd.api.auth import Authenticator
from campaignd.api.interceptors import CallInterceptor
from campaignd.config import Settings
from campaignd.v1 import (
    campaign_service_pb2,
    campaign_service_pb2_grpc,
    cluster_service_pb2,
    cluster_service_pb2_grpc,
    contact_service_pb2,
    contact_service_pb2_grpc,
)

if TYPE_CHECKING:
    from campaignd.api.interceptors import GenericHandler

Servicer = TypeVar("Servicer")
log = logs.get("campaignd.api")


class SocketInUseError(Exception):
    """Another process already serves on the Unix socket."""


class ApiServer:
    """One grpc.aio server listening on the Unix socket and, optionally, on TCP with TLS.

    It serves from a thread of its own with its own event loop, started by `start`, so that the
    main loop's sending does not hold up calls; its methods may be awaited from the main loop.
    """

    def __init__(
        self, settings: Settings, authenticator: Authenticator, private: pathlib.Path | None = None
    ) -> None:
        self.settings = settings
        # Behind a front process (api/front.py), which serves the configured listeners: only a
        # socket of the daemon's own user, which the front forwards calls to.
        self.private = private
        self._interceptor = CallInterceptor(authenticator)
        self._services: list[tuple[Callable[[Any, Any], None], Any, str]] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: aio.Server | None = None
        self._health: health_aio.HealthServicer | None = None
        self.tcp_port: int | None = None

    def add_servicers(
        self,
        campaigns: campaign_service_pb2_grpc.CampaignServiceServicer,
        contacts: contact_service_pb2_grpc.ContactServiceServicer,
        cluster: cluster_service_pb2_grpc.ClusterServiceServicer,
    ) -> None:
        """Serve CampaignService, ContactService and ClusterService through these servicers, from
        `start` on."""
        self._add(
            campaign_service_pb2_grpc.add_CampaignServiceServicer_to_server,
            campaigns,
            campaign_service_pb2.DESCRIPTOR.services_by_name["CampaignService"].full_name,
        )
        self._add(
            contact_service_pb2_grpc.add_ContactServiceServicer_to_server,
            contacts,
            contact_service_pb2.DESCRIPTOR.services_by_name["ContactService"].full_name,
        )
        self._add(
            cluster_service_pb2_grpc.add_ClusterServiceServicer_to_server,
            cluster,
            cluster_service_pb2.DESCRIPTOR.services_by_name["ClusterService"].full_name,
        )

    def _add(
        self, add_to_server: Callable[[Servicer, Any], None], servicer: Servicer, full_name: str
    ) -> None:
        # Registered in `_start`, on the API's loop, through the generated add_..._to_server
        # function, every method behind the call interceptor.
        self._services.append((add_to_server, servicer, full_name))

    async def start(self) -> None:
        """Start the API's thread, bind the listeners and serve; health reports NOT_SERVING
        until `set_serving`. Raises what binding raised, with the thread ended."""
        self.loop = asyncio.new_event_loop()
        # A daemon thread, so that a start that fails further on cannot leave the process running.
        self._thread = threading.Thread(
            target=self._serve, args=(self.loop,), name="campaignd-api", daemon=True
        )
        self._thread.start()
        try:
            await loops.run_on(self.loop, self._start())
        except BaseException:
            await self._end_thread()
            raise

    @staticmethod
    def _serve(loop: asyncio.AbstractEventLoop) -> None:
        # Before gRPC starts its threads, which inherit it.
        nice = loops.serve_first()
        log.debug("the API's thread", nice=nice)
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()

    async def _start(self) -> None:
        options = [*server_options(self.settings), ("grpc.so_reuseport", 0)]
        # grpc.aio binds a server to the event loop it is made on.
        server = self._server = aio.server(options=options)
        registrar = _Registrar(server, self._interceptor)
        health = self._health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, registrar)
        for add_to_server, servicer, _ in self._services:
            add_to_server(servicer, registrar)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection_aio.ReflectionServicer([*self.services, reflection.SERVICE_NAME]), registrar
        )
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.private is not None:
            service, _, method = metrics.FRONT_OBSERVED.lstrip("/").partition("/")
            server.add_generic_rpc_handlers(
                [
                    grpc.method_handlers_generic_handler(
                        service, {method: grpc.unary_unary_rpc_method_handler(_observed)}
                    )
                ]
            )
        self.tcp_port = await listen(server, self.settings, self.private)

    async def set_serving(self, serving: bool) -> None:
        """Report SERVING or NOT_SERVING for every service."""
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await loops.run_on(self.loop, self._set_all(status))

    async def _set_all(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        assert self._health is not None
        for name in ["", *self.services]:
            await self._health.set(name, status)

    async def alive(self, within: float) -> bool:
        """Whether the API's event loop runs a callback within `within` seconds (a loop held up
        by one callback would hold up every call)."""
        try:
            await asyncio.wait_for(loops.call_on(self.loop, lambda: None), within)
        except TimeoutError:
            return False
        return True

    async def stop(self, grace: float) -> None:
        """Refuse new calls, give running ones `grace` seconds to finish, and end the thread."""
        if self._server is not None:
            await loops.run_on(self.loop, self._server.stop(grace))
        (self.private or self.settings.socket_path).unlink(missing_ok=True)
        await self._end_thread()

    async def _end_thread(self) -> None:
        if self._thread is None or self.loop is None:
            return
        loops.soon_on(self.loop, self.loop.stop)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    @property
    def services(self) -> Sequence[str]:
        """Full names of the services served."""
        return (health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, *(s[2] for s in self._services))


class _Registrar:
    """What the generated `add_..._to_server` functions register with: each method handler
    wrapped by the call interceptor, once, then given to the server."""

    def __init__(self, server: aio.Server, interceptor: CallInterceptor) -> None:
        self.server = server
        self.interceptor = interceptor

    def add_generic_rpc_handlers(self, handlers: Sequence[GenericHandler]) -> None:
        self.server.add_generic_rpc_handlers([self.interceptor.generic(h) for h in handlers])

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Any]) -> None:
        wrapped = {name: self.interceptor.wrap(f"/{service}/{name}", h) for name, h in handlers.items()}
        # Typed without this method, which grpc.aio servers have (grpc >= 1.63).
        server: Any = self.server
        server.add_registered_method_handlers(service, wrapped)


async def _observed(batch: bytes, _context: Any) -> bytes:
    # The durations of the calls the front answered itself (metrics.FRONT_OBSERVED).
    metrics.observe_rpcs(batch)
    return b""


async def listen(server: aio.Server, settings: Settings, private: pathlib.Path | None = None) -> int | None:
    """Bind the configured listeners (the Unix socket, and TCP with TLS when configured), or behind
    a front process the daemon's `private` socket alone (mode 0600; the configured one must be
    free for the front), and start `server`; the TCP port bound, if any. SocketInUseError,
    RuntimeError (grpc cannot bind the TCP address), OSError (the runtime directory)."""
    _prepare_socket_path(settings.socket_path)
    path, mode, tcp_address = (
        settings.socket_path,
        int(settings.grpc.socket_mode, 8),
        settings.grpc.tcp_address,
    )
    if private is not None:
        _prepare_socket_path(private)
        path, mode, tcp_address = private, 0o600, ""
    tcp_port = None
    # Bind under a umask that already gives the final mode, so the socket is never more open.
    old_umask = os.umask(0o777 & ~mode)
    try:
        server.add_insecure_port(f"unix:{path}")
        if tcp_address:
            tcp_port = server.add_secure_port(tcp_address, _tls_credentials(settings))
        await server.start()
    finally:
        os.umask(old_umask)
    os.chmod(path, mode)
    return tcp_port


def server_options(settings: Settings) -> list[tuple[str, Any]]:
    """The options of a server, or a channel, that carries the API's messages."""
    return [
        ("grpc.max_receive_message_length", settings.grpc.max_message_bytes),
        ("grpc.max_send_message_length", settings.grpc.max_message_bytes),
    ]


def _prepare_socket_path(path: pathlib.Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # left behind by a process that died
    else:
        raise SocketInUseError(f"another process is serving on {path}")
    finally:
        probe.close()


def _tls_credentials(settings: Settings) -> grpc.ServerCredentials:
    tls = settings.grpc.tls
    assert tls is not None  # the config refuses tcp_address without [grpc.tls]
    key = tls.key_file.read_bytes()
    cert = tls.cert_file.read_bytes()
    client_ca = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
