"""The real daemon, started as a process and reached over its real Unix socket; the fixtures the
integration tests share: daemons, clients, databases a module shares, SMTP servers."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any, Self

import grpc
import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from grpc_health.v1 import health_pb2, health_pb2_grpc

from campaignd.store.schema import metadata
from campaignd.v1 import contact_service_pb2_grpc
from tests.conftest import new_pg_database
from tests.integration.campaign_client import Client, ensure_list
from tests.integration.email_campaigns import Inbox, Server, free_port

# The test channel types (`campaignd.testing.channels`), a double that counts at the receiving end.
TEST_CHANNELS = '[plugins]\nload = ["campaignd.testing.channels"]\n'
# The test channel types without the engine (an API-only daemon): only calls change the database,
# and launched channels stay QUEUED.
API_ONLY = TEST_CHANNELS + "[engine]\nenabled = false\n"


class DaemonProcess:
    """A `campaignd serve` process with its own state and runtime directories."""

    def __init__(self, workdir: pathlib.Path, config: str, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        # Unix socket paths are limited to 108 bytes, so the runtime directory is kept short.
        self.runtime_dir = pathlib.Path(tempfile.mkdtemp(prefix="cd-", dir="/tmp"))
        self.socket_path = self.runtime_dir / "campaignd.sock"
        self.config_path = workdir / "config.toml"
        self.log_path = workdir / "daemon.log"
        self.write_config(config)
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self, extra: str) -> None:
        """Write the config: test directories, JSON logs, then `extra` TOML."""
        self.config_path.write_text(
            "[daemon]\n"
            f'state_directory = "{self.workdir / "state"}"\n'
            f'runtime_directory = "{self.runtime_dir}"\n'
            "shutdown_timeout = 5.0\n" + extra,
            encoding="utf-8",
        )

    @property
    def address(self) -> str:
        """The gRPC target for the Unix socket."""
        return f"unix:{self.socket_path}"

    def start(self, *, wait: bool = True) -> DaemonProcess:
        """Start the process and wait until health reports SERVING."""
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "campaignd.daemon", "serve", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        log.close()
        if wait:
            self.wait_serving()
        return self

    def wait_serving(self, timeout: float = 30.0) -> None:
        """Block until the health check answers SERVING."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log_text()}")
            if self.socket_path.exists():
                try:
                    with grpc.insecure_channel(self.address) as channel:
                        reply = health_pb2_grpc.HealthStub(channel).Check(
                            health_pb2.HealthCheckRequest(), timeout=1
                        )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
            time.sleep(0.05)
        raise AssertionError(f"daemon not serving after {timeout}s:\n{self.log_text()}")

    def channel(self) -> grpc.Channel:
        """A new client channel to the daemon."""
        return grpc.insecure_channel(self.address)

    def ensure_lists(self, *list_ids: str) -> DaemonProcess:
        """Create the (empty) contact lists campaigns will target, unless they exist."""
        with self.channel() as channel:
            stub = contact_service_pb2_grpc.ContactServiceStub(channel)
            for list_id in list_ids:
                ensure_list(stub, list_id)
        return self

    def signal(self, sig: signal.Signals) -> None:
        """Send a signal to the process."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit; returns its status."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> int:
        """SIGTERM and wait for the exit status."""
        self.signal(signal.SIGTERM)
        return self.wait(30)

    @contextlib.contextmanager
    def running(self) -> Iterator[Self]:
        """Started until the block ends, then killed: a daemon that a module's tests share."""
        self.start()
        try:
            yield self
        finally:
            self.cleanup()

    def log_text(self) -> str:
        """Everything the daemon printed."""
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def log_events(self) -> list[dict[str, Any]]:
        """The JSON log lines, parsed."""
        events = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                events.append(json.loads(line))
        return events

    def cleanup(self) -> None:
        """Kill the process if it still runs and remove the runtime directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)


# The cluster's membership: a daemon on PostgreSQL renews its heartbeat there every second,
# whatever the calls it answers.
HEARTBEATS = frozenset({"cluster_members", "cluster_leader"})


class DatabaseDaemon(DaemonProcess):
    """A daemon on the database at `database_url`, which its tests may read behind its back."""

    def __init__(self, workdir: pathlib.Path, config: str, database_url: str) -> None:
        super().__init__(workdir, f'{config}[database]\nurl = "{database_url}"\n')
        self.database_url = database_url
        self._reader: sa.Engine | None = None

    def digest(self) -> str:
        """A digest of every row of every table of the database but the cluster's heartbeats
        (rows sorted, so the order the database returns them in does not matter)."""
        if self._reader is None:
            url = self.database_url.replace("postgresql://", "postgresql+psycopg://", 1)
            self._reader = sa.create_engine(url)
        digest = hashlib.sha256()
        with self._reader.connect() as conn:
            for table in (t for t in metadata.sorted_tables if t.name not in HEARTBEATS):
                for row in sorted(repr(tuple(r)) for r in conn.execute(sa.select(table))):
                    digest.update(f"{table.name}:{row}\n".encode())
        return digest.hexdigest()

    def cleanup(self) -> None:
        """Kill the process, remove the runtime directory, close the connections to the database."""
        super().cleanup()
        if self._reader is not None:
            self._reader.dispose()


DaemonFactory = Callable[..., DaemonProcess]


@pytest.fixture
def daemon_factory(tmp_path: pathlib.Path) -> Iterator[DaemonFactory]:
    """Make daemons (not yet started); all are killed at the end of the test."""
    made: list[DaemonProcess] = []

    def make(config: str = "", env: dict[str, str] | None = None, name: str = "d") -> DaemonProcess:
        workdir = tmp_path / f"{name}{len(made)}"
        workdir.mkdir()
        daemon = DaemonProcess(workdir, config, env)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.cleanup()


@pytest.fixture
def daemon(daemon_factory: DaemonFactory) -> DaemonProcess:
    """A running daemon on its embedded SQLite default."""
    return daemon_factory().start()


@pytest.fixture
def client(daemon: DaemonProcess) -> Iterator[Client]:
    """A client on the daemon's Unix socket."""
    with daemon.channel() as channel:
        yield Client(channel)


@pytest.fixture
def plugged(daemon_factory: DaemonFactory) -> DaemonProcess:
    """A running API-only daemon with the test channel types loaded."""
    return daemon_factory(API_ONLY).start()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A database for the module's daemon: a SQLite file, then a new PostgreSQL database named
    after the module."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'campaignd.db'}"
        return
    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    with new_pg_database(request.getfixturevalue("pg_admin"), f"campaignd_{module}") as url:
        yield url


@pytest.fixture
def smtp() -> Iterator[Callable[..., Server]]:
    """Start aiosmtpd servers on loopback; all are stopped at the end."""
    started: list[Server] = []

    def start(**options: Any) -> Server:
        inbox = Inbox()
        port = free_port()
        controller = Controller(inbox, hostname="127.0.0.1", port=port, **options)
        controller.start()
        server = Server(inbox, controller, port)
        started.append(server)
        return server

    yield start
    for server in started:
        # A server the test stopped itself raises here.
        with contextlib.suppress(AssertionError, RuntimeError):
            server.stop()
