"""Authentication and authorisation (SPEC §7) against the real daemon over TLS on TCP and its Unix socket."""

from __future__ import annotations

import dataclasses
import datetime
import functools
import ipaddress
import pathlib
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import campaign_service_pb2_grpc as svc_grpc
from campaignd.v1 import resources_pb2 as pb
from tests.integration.conftest import API_ONLY, DaemonFactory, DaemonProcess

ADMIN_ENV = "CAMPAIGND_TEST_ADMIN_TOKEN"
CALL_TIMEOUT = 10.0


# --- certificates --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pki:
    """PEM files of a test CA, a server certificate for 127.0.0.1/localhost and a client certificate."""

    ca_file: pathlib.Path
    server_cert_file: pathlib.Path
    server_key_file: pathlib.Path
    client_cert_file: pathlib.Path
    client_key_file: pathlib.Path

    @property
    def ca(self) -> bytes:
        return self.ca_file.read_bytes()

    def client_credentials(self, *, with_client_cert: bool) -> grpc.ChannelCredentials:
        """TLS credentials trusting the test CA, optionally presenting the client certificate."""
        if with_client_cert:
            return grpc.ssl_channel_credentials(
                root_certificates=self.ca,
                private_key=self.client_key_file.read_bytes(),
                certificate_chain=self.client_cert_file.read_bytes(),
            )
        return grpc.ssl_channel_credentials(root_certificates=self.ca)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    extensions: list[tuple[x509.ExtensionType, bool]],
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer is not None else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def _leaf_extensions(usage: x509.ObjectIdentifier) -> list[tuple[x509.ExtensionType, bool]]:
    return [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        ),
        (x509.ExtendedKeyUsage([usage]), False),
    ]


def write_pki(directory: pathlib.Path) -> Pki:
    """Generate a CA, a server certificate (SAN localhost and IP 127.0.0.1) and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca_cert = _issue(
        "campaignd test CA",
        ca_key,
        None,
        ca_key,
        [
            (x509.BasicConstraints(ca=True, path_length=0), True),
            (
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                True,
            ),
        ],
    )
    server_key = _key()
    server_cert = _issue(
        "localhost",
        server_key,
        ca_cert,
        ca_key,
        [
            *_leaf_extensions(ExtendedKeyUsageOID.SERVER_AUTH),
            (
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                False,
            ),
        ],
    )
    client_key = _key()
    client_cert = _issue(
        "campaignd test client",
        client_key,
        ca_cert,
        ca_key,
        _leaf_extensions(ExtendedKeyUsageOID.CLIENT_AUTH),
    )
    pki = Pki(
        ca_file=directory / "ca.pem",
        server_cert_file=directory / "server.pem",
        server_key_file=directory / "server.key",
        client_cert_file=directory / "client.pem",
        client_key_file=directory / "client.key",
    )
    pki.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.server_cert_file.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    pki.server_key_file.write_bytes(_key_pem(server_key))
    pki.client_cert_file.write_bytes(client_cert.public_bytes(serialization.Encoding.PEM))
    pki.client_key_file.write_bytes(_key_pem(client_key))
    for path in (pki.server_key_file, pki.client_key_file):
        path.chmod(0o600)
    return pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """PEM files of a test CA with a server and a client certificate signed by it."""
    return write_pki(tmp_path_factory.mktemp("pki"))


# --- tokens and config ---------------------------------------------------------------------------


@dataclasses.dataclass
class Tokens:
    """The secrets of the three configured tokens; viewer and operator in files, admin in the env."""

    viewer: str
    operator: str
    admin: str
    operator_file: pathlib.Path

    def all(self) -> list[str]:
        return [self.viewer, self.operator, self.admin]


def make_tokens(directory: pathlib.Path) -> Tokens:
    """Fresh random secrets; the viewer and operator secrets are written to files under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    tokens = Tokens(
        viewer=secrets.token_urlsafe(32),
        operator=secrets.token_urlsafe(32),
        admin=secrets.token_urlsafe(32),
        operator_file=directory / "operator.token",
    )
    (directory / "viewer.token").write_text(tokens.viewer + "\n", encoding="utf-8")
    tokens.operator_file.write_text(tokens.operator + "\n", encoding="utf-8")
    return tokens


def auth_config(
    pki: Pki, token_dir: pathlib.Path, *, client_ca: bool = False, log_level: str = "info"
) -> str:
    """Config TOML: JSON logs, the test channels, TLS on an OS-chosen TCP port and three tokens."""
    client_ca_line = f'client_ca_file = "{pki.ca_file}"\n' if client_ca else ""
    return (
        f'[log]\nlevel = "{log_level}"\nformat = "json"\n'
        + API_ONLY
        + '[grpc]\ntcp_address = "127.0.0.1:0"\n'
        f'[grpc.tls]\ncert_file = "{pki.server_cert_file}"\nkey_file = "{pki.server_key_file}"\n'
        + client_ca_line
        + "[[auth.tokens]]\n"
        'name = "dashboard"\nrole = "viewer"\n'
        f'secret = {{ file = "{token_dir / "viewer.token"}" }}\n'
        "[[auth.tokens]]\n"
        'name = "deployer"\nrole = "operator"\n'
        f'secret = {{ file = "{token_dir / "operator.token"}" }}\n'
        "[[auth.tokens]]\n"
        'name = "root"\nrole = "admin"\n'
        f'secret = {{ env = "{ADMIN_ENV}" }}\n'
    )


def wait_for_event(
    daemon: DaemonProcess, event: str, count: int = 1, timeout: float = 15.0
) -> dict[str, Any]:
    """The `count`-th JSON log event named `event`, waiting for it to be written."""
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in daemon.log_events() if e.get("event") == event]
        if len(found) >= count:
            return found[count - 1]
        if time.monotonic() > deadline:
            raise AssertionError(f"no {count}. {event!r} log event after {timeout}s:\n{daemon.log_text()}")
        time.sleep(0.05)


def tcp_port(daemon: DaemonProcess) -> int:
    """The TCP port the daemon bound, from its "serving" log event."""
    port = wait_for_event(daemon, "serving")["tcp_port"]
    assert isinstance(port, int)
    assert port > 0
    return port


def start_tls_daemon(
    daemon_factory: DaemonFactory,
    pki: Pki,
    token_dir: pathlib.Path,
    *,
    client_ca: bool = False,
    log_level: str = "info",
) -> tuple[DaemonProcess, Tokens, int]:
    """Start a daemon serving TLS on TCP with three tokens; returns it, its tokens and its TCP port."""
    tokens = make_tokens(token_dir)
    daemon = daemon_factory(
        auth_config(pki, token_dir, client_ca=client_ca, log_level=log_level), env={ADMIN_ENV: tokens.admin}
    ).start()
    return daemon, tokens, tcp_port(daemon)


def tls_channel(port: int, pki: Pki, *, with_client_cert: bool = False) -> grpc.Channel:
    """A TLS channel to the daemon's TCP port, verifying the server against the test CA."""
    return grpc.secure_channel(f"127.0.0.1:{port}", pki.client_credentials(with_client_cert=with_client_cert))


Metadata = tuple[tuple[str, str | bytes], ...]


def bearer(token: str | None) -> Metadata:
    """Call metadata carrying `token`, or none."""
    return () if token is None else (("authorization", f"Bearer {token}"),)


def status_of(call: Callable[[], object]) -> grpc.StatusCode:
    """Run a call; OK or the status code it failed with."""
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def draft_campaign(display_name: str = "auth test") -> pb.Campaign:
    """A valid DRAFT campaign with one test-email channel."""
    content = struct_pb2.Struct()
    content.update({"text": "hello"})
    return pb.Campaign(
        display_name=display_name,
        channels=[pb.Channel(channel_id="mail", type="test-email", content=content)],
    )


def create_over_socket(daemon: DaemonProcess, campaign_id: str) -> pb.Campaign:
    """Create a DRAFT campaign through the Unix socket (no token)."""
    with daemon.channel() as channel:
        return svc_grpc.CampaignServiceStub(channel).CreateCampaign(
            svc.CreateCampaignRequest(campaign=draft_campaign(), campaign_id=campaign_id),
            timeout=CALL_TIMEOUT,
        )


def get_over_socket(daemon: DaemonProcess, campaign_id: str) -> pb.Campaign | None:
    """The campaign read through the Unix socket, or None when it does not exist."""
    with daemon.channel() as channel:
        try:
            return svc_grpc.CampaignServiceStub(channel).GetCampaign(
                svc.GetCampaignRequest(name=f"campaigns/{campaign_id}"), timeout=CALL_TIMEOUT
            )
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise


# --- the shared daemon for the role matrix -------------------------------------------------------


@dataclasses.dataclass
class TlsDaemon:
    """A running daemon with TLS on TCP, its tokens and its bound TCP port."""

    daemon: DaemonProcess
    tokens: Tokens
    port: int


@pytest.fixture(scope="module")
def tls_daemon(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[TlsDaemon]:
    """One daemon shared by the read-mostly tests of this module; each test uses its own campaigns."""
    workdir = tmp_path_factory.mktemp("tls-daemon")
    tokens = make_tokens(workdir / "tokens")
    daemon = DaemonProcess(workdir, auth_config(pki, workdir / "tokens"), env={ADMIN_ENV: tokens.admin})
    try:
        daemon.start()
        yield TlsDaemon(daemon, tokens, tcp_port(daemon))
    finally:
        daemon.cleanup()


CALLERS = ("no-token", "wrong-token", "viewer", "operator", "admin")
METHODS = (
    "GetCampaign",
    "ListCampaigns",
    "CreateCampaign",
    "PauseCampaign",
    "DeleteCampaign",
    "RecordEvents",
)
RANKS = {"viewer": 0, "operator": 1, "admin": 2}
NEEDS = {
    "GetCampaign": "viewer",
    "ListCampaigns": "viewer",
    "CreateCampaign": "operator",
    "PauseCampaign": "operator",
    "DeleteCampaign": "admin",
    "RecordEvents": "operator",
}
# What each method answers once auth lets it through, on a fresh DRAFT campaign: pausing a
# DRAFT is the method's own FAILED_PRECONDITION, which shows the call got past auth.
ADMITTED = {
    "GetCampaign": grpc.StatusCode.OK,
    "ListCampaigns": grpc.StatusCode.OK,
    "CreateCampaign": grpc.StatusCode.OK,
    "PauseCampaign": grpc.StatusCode.FAILED_PRECONDITION,
    "DeleteCampaign": grpc.StatusCode.OK,
    "RecordEvents": grpc.StatusCode.OK,  # answered per event: this one's message is not found
}


def expected_status(caller: str, method: str) -> grpc.StatusCode:
    """SPEC §7: no or unknown token -> UNAUTHENTICATED, too small a role -> PERMISSION_DENIED."""
    if caller not in RANKS:
        return grpc.StatusCode.UNAUTHENTICATED
    if RANKS[caller] < RANKS[NEEDS[method]]:
        return grpc.StatusCode.PERMISSION_DENIED
    return ADMITTED[method]


def token_for(caller: str, tokens: Tokens) -> str | None:
    if caller == "no-token":
        return None
    if caller == "wrong-token":
        return secrets.token_urlsafe(32)
    return str(getattr(tokens, caller))


def call(stub: svc_grpc.CampaignServiceStub, method: str, campaign_id: str, token: str | None) -> object:
    """Make one call of `method` about `campaign_id` with `token`."""
    name = f"campaigns/{campaign_id}"
    metadata = bearer(token)
    if method == "GetCampaign":
        return stub.GetCampaign(svc.GetCampaignRequest(name=name), metadata=metadata, timeout=CALL_TIMEOUT)
    if method == "ListCampaigns":
        return stub.ListCampaigns(svc.ListCampaignsRequest(), metadata=metadata, timeout=CALL_TIMEOUT)
    if method == "CreateCampaign":
        return stub.CreateCampaign(
            svc.CreateCampaignRequest(campaign=draft_campaign(), campaign_id=campaign_id),
            metadata=metadata,
            timeout=CALL_TIMEOUT,
        )
    if method == "PauseCampaign":
        return stub.PauseCampaign(
            svc.PauseCampaignRequest(name=name, reason="auth test"), metadata=metadata, timeout=CALL_TIMEOUT
        )
    if method == "RecordEvents":
        event = svc.MessageEvent(
            event_id=campaign_id, kind=svc.MessageEvent.OPENED, provider_message_id="none"
        )
        return stub.RecordEvents(
            svc.RecordEventsRequest(events=[event]), metadata=metadata, timeout=CALL_TIMEOUT
        )
    assert method == "DeleteCampaign"
    return stub.DeleteCampaign(svc.DeleteCampaignRequest(name=name), metadata=metadata, timeout=CALL_TIMEOUT)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("caller", CALLERS)
def test_role_matrix_over_tcp(tls_daemon: TlsDaemon, pki: Pki, caller: str, method: str) -> None:
    """Each caller/method cell gets UNAUTHENTICATED, PERMISSION_DENIED or past auth, per SPEC §7."""
    campaign_id = f"m-{caller}-{method.lower()}"
    existing = None
    if method != "CreateCampaign":
        existing = create_over_socket(tls_daemon.daemon, campaign_id)
    token = token_for(caller, tls_daemon.tokens)
    with tls_channel(tls_daemon.port, pki) as channel:
        got = status_of(lambda: call(svc_grpc.CampaignServiceStub(channel), method, campaign_id, token))
    want = expected_status(caller, method)
    assert got == want, f"{caller} calling {method}: got {got.name}, want {want.name}"

    after = get_over_socket(tls_daemon.daemon, campaign_id)
    if want in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        # A refused call changed nothing.
        if existing is None:
            assert after is None, f"refused {caller} {method} created {campaign_id}"
        else:
            assert after == existing, f"refused {caller} {method} changed {campaign_id}"
    elif method == "CreateCampaign":
        assert after is not None
        assert after.state == pb.Campaign.DRAFT
    elif method == "DeleteCampaign":
        assert after is None
    else:
        assert after == existing


def test_viewer_lists_campaigns_made_over_the_socket(tls_daemon: TlsDaemon, pki: Pki) -> None:
    """A viewer's ListCampaigns over TCP sees campaigns made over the socket; a refused one gets nothing."""
    created = create_over_socket(tls_daemon.daemon, "listed-campaign")
    with tls_channel(tls_daemon.port, pki) as channel:
        stub = svc_grpc.CampaignServiceStub(channel)
        reply = stub.ListCampaigns(
            svc.ListCampaignsRequest(page_size=1000), metadata=bearer(tls_daemon.tokens.viewer), timeout=10
        )
        with pytest.raises(grpc.RpcError) as refused:
            stub.ListCampaigns(svc.ListCampaignsRequest(page_size=1000), timeout=10)
    assert created.name in [c.name for c in reply.campaigns]
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_history_names_the_token_that_made_a_change(tls_daemon: TlsDaemon, pki: Pki) -> None:
    """A change made over TCP is recorded with the token's name, one made over the socket as local."""
    with tls_channel(tls_daemon.port, pki) as channel:
        stub = svc_grpc.CampaignServiceStub(channel)
        created = stub.CreateCampaign(
            svc.CreateCampaignRequest(
                campaign_id="made-by-deployer",
                campaign=draft_campaign(),
            ),
            metadata=bearer(tls_daemon.tokens.operator),
            timeout=CALL_TIMEOUT,
        )
    local = create_over_socket(tls_daemon.daemon, "made-locally")
    with tls_channel(tls_daemon.port, pki) as channel:
        stub = svc_grpc.CampaignServiceStub(channel)
        actors = {
            name: {
                event.actor
                for event in stub.ListCampaignHistory(
                    svc.ListCampaignHistoryRequest(parent=name),
                    metadata=bearer(tls_daemon.tokens.viewer),
                    timeout=CALL_TIMEOUT,
                ).events
            }
            for name in (created.name, local.name)
        }
    assert actors == {created.name: {"deployer"}, local.name: {"local"}}


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("Basic {token}", id="basic-scheme"),
        pytest.param("{token}", id="no-scheme"),
        pytest.param("Bearer {token}x", id="token-with-suffix"),
        pytest.param("Bearer {prefix}", id="token-prefix"),
        pytest.param("Bearer ", id="empty-token"),
    ],
)
def test_malformed_authorization_is_unauthenticated(tls_daemon: TlsDaemon, pki: Pki, header: str) -> None:
    """Only `Bearer <exact secret>` authenticates; other schemes, prefixes and extensions do not."""
    admin = tls_daemon.tokens.admin
    value = header.format(token=admin, prefix=admin[: len(admin) // 2])
    with tls_channel(tls_daemon.port, pki) as channel:
        got = status_of(
            lambda: svc_grpc.CampaignServiceStub(channel).ListCampaigns(
                svc.ListCampaignsRequest(), metadata=(("authorization", value),), timeout=CALL_TIMEOUT
            )
        )
    assert got == grpc.StatusCode.UNAUTHENTICATED


def test_bearer_scheme_is_case_insensitive(tls_daemon: TlsDaemon, pki: Pki) -> None:
    """`bearer <token>` in lower case authenticates like `Bearer <token>` (RFC 6750 schemes ignore case)."""
    with tls_channel(tls_daemon.port, pki) as channel:
        got = status_of(
            lambda: svc_grpc.CampaignServiceStub(channel).ListCampaigns(
                svc.ListCampaignsRequest(),
                metadata=(("authorization", f"bearer {tls_daemon.tokens.viewer}"),),
                timeout=CALL_TIMEOUT,
            )
        )
    assert got == grpc.StatusCode.OK


def test_streaming_method_needs_a_token(tls_daemon: TlsDaemon, pki: Pki) -> None:
    """WatchCampaign (server streaming) refuses a caller without a token, and lets a viewer watch."""
    created = create_over_socket(tls_daemon.daemon, "watched-campaign")
    with tls_channel(tls_daemon.port, pki) as channel:
        stub = svc_grpc.CampaignServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            next(iter(stub.WatchCampaign(svc.WatchCampaignRequest(name=created.name), timeout=CALL_TIMEOUT)))
        stream = stub.WatchCampaign(
            svc.WatchCampaignRequest(name=created.name),
            metadata=bearer(tls_daemon.tokens.viewer),
            timeout=CALL_TIMEOUT,
        )
        first = next(iter(stream))
        stream.cancel()  # type: ignore[no-untyped-call]
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert first.campaign.name == created.name


def test_health_over_tcp_needs_no_token(tls_daemon: TlsDaemon, pki: Pki) -> None:
    """Load balancers may probe health on the TLS port without a token."""
    with tls_channel(tls_daemon.port, pki) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_over_tcp_needs_a_viewer_token(tls_daemon: TlsDaemon, pki: Pki) -> None:
    """Server reflection on the TCP port is a read: refused without a token, served to a viewer."""
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    with tls_channel(tls_daemon.port, pki) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            next(iter(stub.ServerReflectionInfo(iter([request]), timeout=CALL_TIMEOUT)))
        reply = next(
            iter(
                stub.ServerReflectionInfo(
                    iter([request]), metadata=bearer(tls_daemon.tokens.viewer), timeout=CALL_TIMEOUT
                )
            )
        )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    services = {s.name for s in reply.list_services_response.service}
    assert "campaignd.v1.CampaignService" in services


def test_plaintext_to_the_tcp_port_fails(tls_daemon: TlsDaemon) -> None:
    """The TCP listener is TLS only: a plaintext client cannot even make the open health call."""
    with grpc.insecure_channel(f"127.0.0.1:{tls_daemon.port}") as channel:
        got = status_of(
            lambda: health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        )
    assert got == grpc.StatusCode.UNAVAILABLE


def test_unix_socket_needs_no_token(tls_daemon: TlsDaemon) -> None:
    """A Unix-socket peer has full access without a token, admin-only DeleteCampaign included."""
    created = create_over_socket(tls_daemon.daemon, "socket-deleted")
    with tls_daemon.daemon.channel() as channel:
        reply = svc_grpc.CampaignServiceStub(channel).DeleteCampaign(
            svc.DeleteCampaignRequest(name=created.name), timeout=CALL_TIMEOUT
        )
    assert reply.name == created.name
    assert get_over_socket(tls_daemon.daemon, "socket-deleted") is None


def test_unix_socket_ignores_a_wrong_token(tls_daemon: TlsDaemon) -> None:
    """On the Unix socket a wrong bearer token does not demote the caller: the file mode decides."""
    with tls_daemon.daemon.channel() as channel:
        got = status_of(
            lambda: svc_grpc.CampaignServiceStub(channel).ListCampaigns(
                svc.ListCampaignsRequest(), metadata=bearer("not-a-token"), timeout=CALL_TIMEOUT
            )
        )
    assert got == grpc.StatusCode.OK


# --- mTLS, reload and logs: a daemon each ---------------------------------------------------------


def test_mtls_requires_a_client_certificate(
    daemon_factory: DaemonFactory, pki: Pki, tmp_path: pathlib.Path
) -> None:
    """With client_ca_file, a client without a certificate cannot call; one with a CA-signed one
    can, and still needs a token."""
    daemon, tokens, port = start_tls_daemon(daemon_factory, pki, tmp_path / "tokens", client_ca=True)

    with tls_channel(port, pki, with_client_cert=False) as channel:
        no_cert = status_of(
            lambda: svc_grpc.CampaignServiceStub(channel).ListCampaigns(
                svc.ListCampaignsRequest(), metadata=bearer(tokens.admin), timeout=5
            )
        )
        no_cert_health = status_of(
            lambda: health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        )
    assert no_cert == grpc.StatusCode.UNAVAILABLE
    assert no_cert_health == grpc.StatusCode.UNAVAILABLE

    with tls_channel(port, pki, with_client_cert=True) as channel:
        stub = svc_grpc.CampaignServiceStub(channel)
        with_token = status_of(
            lambda: stub.ListCampaigns(svc.ListCampaignsRequest(), metadata=bearer(tokens.viewer), timeout=5)
        )
        without_token = status_of(lambda: stub.ListCampaigns(svc.ListCampaignsRequest(), timeout=5))
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert with_token == grpc.StatusCode.OK
    assert without_token == grpc.StatusCode.UNAUTHENTICATED
    assert health.status == health_pb2.HealthCheckResponse.SERVING

    # A certificate from another CA is refused like none at all.
    stranger = write_pki(tmp_path / "stranger")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca,
        private_key=stranger.client_key_file.read_bytes(),
        certificate_chain=stranger.client_cert_file.read_bytes(),
    )
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        foreign_cert = status_of(
            lambda: svc_grpc.CampaignServiceStub(channel).ListCampaigns(
                svc.ListCampaignsRequest(), metadata=bearer(tokens.admin), timeout=5
            )
        )
    assert foreign_cert == grpc.StatusCode.UNAVAILABLE
    assert daemon.proc is not None
    assert daemon.proc.poll() is None


def test_sighup_rotates_a_token(daemon_factory: DaemonFactory, pki: Pki, tmp_path: pathlib.Path) -> None:
    """After the operator's secret file changes and SIGHUP, the old secret is UNAUTHENTICATED and
    the new one has the operator role; the other tokens keep working."""
    daemon, tokens, port = start_tls_daemon(daemon_factory, pki, tmp_path / "tokens")

    def status(token: str, method: str = "CreateCampaign", campaign_id: str = "") -> grpc.StatusCode:
        with tls_channel(port, pki) as channel:
            stub = svc_grpc.CampaignServiceStub(channel)
            return status_of(lambda: call(stub, method, campaign_id, token))

    assert status(tokens.operator, campaign_id="before-rotation") == grpc.StatusCode.OK

    new_secret = secrets.token_urlsafe(32)
    tokens.operator_file.write_text(new_secret + "\n", encoding="utf-8")
    daemon.signal(signal.SIGHUP)
    wait_for_event(daemon, "reloaded")

    assert status(tokens.operator, campaign_id="old-secret") == grpc.StatusCode.UNAUTHENTICATED
    assert get_over_socket(daemon, "old-secret") is None
    assert status(new_secret, campaign_id="new-secret") == grpc.StatusCode.OK
    assert get_over_socket(daemon, "new-secret") is not None
    # The new secret carries the operator role, no more.
    assert status(new_secret, "DeleteCampaign", "new-secret") == grpc.StatusCode.PERMISSION_DENIED
    assert status(tokens.viewer, "ListCampaigns") == grpc.StatusCode.OK
    assert status(tokens.admin, "DeleteCampaign", "new-secret") == grpc.StatusCode.OK


def test_failed_reload_keeps_the_running_tokens(
    daemon_factory: DaemonFactory, pki: Pki, tmp_path: pathlib.Path
) -> None:
    """When a token's secret file disappears, SIGHUP fails and the tokens in use keep working."""
    daemon, tokens, port = start_tls_daemon(daemon_factory, pki, tmp_path / "tokens")
    tokens.operator_file.unlink()
    daemon.signal(signal.SIGHUP)
    wait_for_event(daemon, "reload failed; keeping the running settings")
    with tls_channel(port, pki) as channel:
        stub = svc_grpc.CampaignServiceStub(channel)
        got = status_of(lambda: call(stub, "CreateCampaign", "after-failed-reload", tokens.operator))
    assert got == grpc.StatusCode.OK


def test_token_secrets_never_reach_the_log(
    daemon_factory: DaemonFactory, pki: Pki, tmp_path: pathlib.Path
) -> None:
    """At log level debug, through calls with every token, a wrong one and a reload, no secret is logged."""
    daemon, tokens, port = start_tls_daemon(daemon_factory, pki, tmp_path / "tokens", log_level="debug")
    wrong = secrets.token_urlsafe(32)
    with tls_channel(port, pki) as channel:
        stub = svc_grpc.CampaignServiceStub(channel)
        for token in [*tokens.all(), wrong]:
            status_of(functools.partial(call, stub, "ListCampaigns", "", token))
            status_of(functools.partial(call, stub, "DeleteCampaign", "no-such-campaign", token))
    rotated = secrets.token_urlsafe(32)
    tokens.operator_file.write_text(rotated + "\n", encoding="utf-8")
    daemon.signal(signal.SIGHUP)
    wait_for_event(daemon, "reloaded")
    with tls_channel(port, pki) as channel:
        status_of(lambda: call(svc_grpc.CampaignServiceStub(channel), "ListCampaigns", "", rotated))
    assert daemon.stop() == 0

    text = daemon.log_text()
    # Debug logging was on: every call above left an "rpc" line.
    rpcs = [e for e in daemon.log_events() if e.get("event") == "rpc"]
    assert len(rpcs) >= 9, text
    for secret in [*tokens.all(), wrong, rotated]:
        assert secret not in text
