"""Connection to the daemon, exit statuses, and the daemon's errors as printed on stderr."""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

import grpc
from google.protobuf import message as pb_message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from campaignd import config
from campaignd.v1 import campaign_service_pb2_grpc as api_grpc
from campaignd.v1 import cluster_service_pb2_grpc as cl_grpc
from campaignd.v1 import contact_service_pb2 as capi
from campaignd.v1 import contact_service_pb2_grpc as capi_grpc

PROG = "campaignctl"
EXIT_OK = 0
EXIT_FAILURE = 1  # the daemon refused or failed the call
EXIT_USAGE = 2  # bad local input, or the daemon said INVALID_ARGUMENT
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT

SOCKET_ENV = "CAMPAIGND_SOCKET"
ADDRESS_ENV = "CAMPAIGND_ADDRESS"
TOKEN_ENV = "CAMPAIGND_TOKEN"  # noqa: S105 - the name of a variable, not a token

Message = TypeVar("Message", bound=pb_message.Message)
Request = TypeVar("Request", bound=pb_message.Message)


class UsageError(Exception):
    """Bad local input: reported on one line with exit status 2, and no call is made."""


def read_text(path: str, what: str) -> str:
    """A local file's text; `-` is standard input."""
    if path == "-":
        return sys.stdin.read()
    try:
        return pathlib.Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"cannot read {what} {path}: not UTF-8 text") from None


@dataclass(frozen=True)
class Target:
    """Where the daemon listens and how to reach it."""

    target: str
    description: str
    credentials: grpc.ChannelCredentials | None = None  # None: the Unix socket, trusted by file mode


def resolve_target(args: argparse.Namespace, environ: Mapping[str, str]) -> Target:
    """Flags first, then $CAMPAIGND_SOCKET / $CAMPAIGND_ADDRESS, then the daemon's config."""
    given = [flag for flag in ("socket", "address", "config") if getattr(args, flag, None)]
    if len(given) > 1:
        raise UsageError("give only one of --socket, --address and --config")
    if args.socket:
        return unix_target(pathlib.Path(args.socket))
    if args.address:
        return tcp_target(host_port(args.address, "--address"), args, environ)
    if not args.config:
        if environ.get(SOCKET_ENV):
            return unix_target(pathlib.Path(environ[SOCKET_ENV]))
        if environ.get(ADDRESS_ENV):
            return tcp_target(host_port(environ[ADDRESS_ENV], f"${ADDRESS_ENV}"), args, environ)
    try:
        # Only the socket path is needed; the daemon's secret files may be unreadable to this user.
        settings = config.load(pathlib.Path(args.config) if args.config else None, check_files=False)
    except config.ConfigError as exc:
        raise UsageError(f"cannot find the daemon's socket: {exc}") from None
    return unix_target(settings.socket_path)


def host_port(address: str, given: str) -> str:
    """`address` when it is HOST:PORT (a bracketed IPv6 host too); UsageError naming `given`."""
    if address.startswith(("unix:", "unix-abstract:", "/")):
        raise UsageError(f"{given} takes the TCP listener's HOST:PORT; for a Unix socket use --socket PATH")
    host, colon, port = address.rpartition(":")
    if not colon or not host or "/" in address or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{given} takes HOST:PORT, e.g. mx1.example.org:7443, not {address!r}")
    return address


def unix_target(path: pathlib.Path) -> Target:
    """The daemon's Unix socket."""
    return Target(f"unix:{path}", str(path))


def tcp_target(address: str, args: argparse.Namespace, environ: Mapping[str, str]) -> Target:
    """A TCP listener: always TLS, with a bearer token and optionally a client certificate."""
    if (args.cert_file is None) != (args.key_file is None):
        raise UsageError("--cert-file and --key-file go together")
    root = read_bytes(args.ca_file, "--ca-file") if args.ca_file else None
    key = read_bytes(args.key_file, "--key-file") if args.key_file else None
    cert = read_bytes(args.cert_file, "--cert-file") if args.cert_file else None
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root, private_key=key, certificate_chain=cert
    )
    token = args.token
    if args.token_file:
        token = read_text(args.token_file, "--token-file").strip()
    token = token or environ.get(TOKEN_ENV, "")
    if token:
        # Sent as `authorization: Bearer <token>`, and only ever over TLS.
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(token)
        )
    return Target(address, address, credentials)


def read_bytes(path: str, what: str) -> bytes:
    """A local file's bytes."""
    try:
        return pathlib.Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None


class Client:
    """A connection to the daemon, opened at the first call, and the output options."""

    def __init__(self, target: Target, *, timeout: float, json_output: bool) -> None:
        self.target = target
        self.timeout = timeout
        self.json = json_output
        self._channel: grpc.Channel | None = None
        self._campaigns: api_grpc.CampaignServiceStub | None = None
        self._contacts: capi_grpc.ContactServiceStub | None = None
        self._cluster: cl_grpc.ClusterServiceStub | None = None

    @property
    def channel(self) -> grpc.Channel:
        """The gRPC channel."""
        if self._channel is None:
            if self.target.credentials is None:
                self._channel = grpc.insecure_channel(self.target.target)
            else:
                self._channel = grpc.secure_channel(self.target.target, self.target.credentials)
        return self._channel

    @property
    def campaigns(self) -> api_grpc.CampaignServiceStub:
        """The CampaignService stub."""
        if self._campaigns is None:
            self._campaigns = api_grpc.CampaignServiceStub(self.channel)
        return self._campaigns

    @property
    def contacts(self) -> capi_grpc.ContactServiceStub:
        """The ContactService stub."""
        if self._contacts is None:
            self._contacts = capi_grpc.ContactServiceStub(self.channel)
        return self._contacts

    @property
    def cluster(self) -> cl_grpc.ClusterServiceStub:
        """The ClusterService stub."""
        if self._cluster is None:
            self._cluster = cl_grpc.ClusterServiceStub(self.channel)
        return self._cluster

    def call(self, method: grpc.UnaryUnaryMultiCallable[Request, Message], request: Request) -> Message:
        """A unary call with the --timeout deadline."""
        return method(request, timeout=self.timeout)

    def close(self) -> None:
        """Close the connection, if one was opened."""
        if self._channel is not None:
            self._channel.close()


def rpc_error_lines(err: grpc.Call, where: str) -> list[str]:
    """The code and message of a failed call, then the reason and field violations it carries."""
    code = err.code()
    details = err.details() or ""
    try:
        status = rpc_status.from_call(err)
    except ValueError:
        # The rich status disagrees with the call's status; the code and message still hold.
        status = None
    # The daemon's own errors carry an ErrorInfo: then UNAVAILABLE is its answer (e.g. a
    # provider that failed a test send), not a connection problem.
    if code == grpc.StatusCode.UNAVAILABLE and (status is None or not status.details):
        head = f"the daemon is not reachable at {where}" + (f" ({details})" if details else "")
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        head = f"no answer from {where} in time (see --timeout)"
    else:
        head = details
    lines = [f"{PROG}: {code.name}: {head}"]
    if code == grpc.StatusCode.UNAUTHENTICATED:
        lines.append(f"  pass a token with --token-file, --token or ${TOKEN_ENV}")
    for detail in status.details if status is not None else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            extra = ", ".join(f"{k}={v}" for k, v in sorted(info.metadata.items()))
            lines.append(f"  reason: {info.reason}" + (f" ({extra})" if extra else ""))
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            lines += [f"  field {v.field}: {v.description}" for v in bad.field_violations]
        elif detail.Is(capi.ImportContactsResponse.DESCRIPTOR):
            # A failed import says what it had written: those rows stay.
            written = capi.ImportContactsResponse()
            detail.Unpack(written)
            lines.append(
                f"  written before the error: created {written.created}, updated {written.updated}, "
                f"rejected {written.rejected}"
            )
        elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            detail.Unpack(failure)
            lines += [f"  {v.type} {v.subject}: {v.description}".rstrip() for v in failure.violations]
    return lines


def exit_status(code: grpc.StatusCode) -> int:
    """2 for INVALID_ARGUMENT (the input was wrong), 1 for every other failure."""
    return EXIT_USAGE if code == grpc.StatusCode.INVALID_ARGUMENT else EXIT_FAILURE
