"""The gRPC server: listeners, health checking, reflection, auth, and the services."""

from __future__ import annotations

import os
import pathlib
import socket
from collections.abc import Sequence

import grpc
from grpc import aio
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

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


class SocketInUseError(Exception):
    """Another process already serves on the Unix socket."""


class ApiServer:
    """One grpc.aio server listening on the Unix socket and, optionally, on TCP with TLS."""

    def __init__(self, settings: Settings, authenticator: Authenticator) -> None:
        self.settings = settings
        options = [
            ("grpc.max_receive_message_length", settings.grpc.max_message_bytes),
            ("grpc.max_send_message_length", settings.grpc.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        self.server = aio.server(interceptors=[CallInterceptor(authenticator)], options=options)
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._service_names: list[str] = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
        self.tcp_port: int | None = None

    def add_servicers(
        self,
        campaigns: campaign_service_pb2_grpc.CampaignServiceServicer,
        contacts: contact_service_pb2_grpc.ContactServiceServicer,
        cluster: cluster_service_pb2_grpc.ClusterServiceServicer,
    ) -> None:
        """Serve CampaignService, ContactService and ClusterService through these servicers."""
        campaign_service_pb2_grpc.add_CampaignServiceServicer_to_server(campaigns, self.server)
        self._service_names.append(
            campaign_service_pb2.DESCRIPTOR.services_by_name["CampaignService"].full_name
        )
        contact_service_pb2_grpc.add_ContactServiceServicer_to_server(contacts, self.server)
        self._service_names.append(
            contact_service_pb2.DESCRIPTOR.services_by_name["ContactService"].full_name
        )
        cluster_service_pb2_grpc.add_ClusterServiceServicer_to_server(cluster, self.server)
        self._service_names.append(
            cluster_service_pb2.DESCRIPTOR.services_by_name["ClusterService"].full_name
        )

    async def start(self) -> None:
        """Bind the listeners and start serving; health reports NOT_SERVING until `set_serving`."""
        reflection.enable_server_reflection([*self._service_names, reflection.SERVICE_NAME], self.server)
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        path = self.settings.socket_path
        _prepare_socket_path(path)
        mode = int(self.settings.grpc.socket_mode, 8)
        # Bind under a umask that already gives the final mode, so the socket is never more open.
        old_umask = os.umask(0o777 & ~mode)
        try:
            self.server.add_insecure_port(f"unix:{path}")
            if self.settings.grpc.tcp_address:
                self.tcp_port = self.server.add_secure_port(
                    self.settings.grpc.tcp_address, _tls_credentials(self.settings)
                )
            await self.server.start()
        finally:
            os.umask(old_umask)
        os.chmod(path, mode)

    async def set_serving(self, serving: bool) -> None:
        """Report SERVING or NOT_SERVING for every service."""
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self._set_all(status)

    async def _set_all(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        for name in ["", *self._service_names]:
            await self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        """Refuse new calls and give running ones `grace` seconds to finish."""
        await self.server.stop(grace)
        self.settings.socket_path.unlink(missing_ok=True)

    @property
    def services(self) -> Sequence[str]:
        """Full names of the services served."""
        return tuple(self._service_names)


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
