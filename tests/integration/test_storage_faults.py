"""Storage faults in the real daemon: its SQLite state directory on a small tmpfs that fills up
mid-campaign, and its PostgreSQL connection cut mid-campaign by a loopback proxy that stops
forwarding. Sends are counted at the receiving end by the test channel double's sink file.

Mounting a tmpfs needs root; the tests and CI run as root.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import contact_service_pb2 as cs
from campaignd.v1 import contact_service_pb2_grpc as cs_grpc
from campaignd.v1 import resources_pb2 as pb
from tests.integration.campaign_client import Client, wait_until
from tests.integration.conftest import TEST_CHANNELS, DaemonFactory, DaemonProcess
from tests.integration.sending import double_campaign, fast_engine, import_list, sink_counts

ENGINE = fast_engine(sending_timeout=5.0) + "storage_pause_after = 1.0\n"
RECIPIENTS = 4000


def _health(daemon: DaemonProcess) -> int:
    with daemon.channel() as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return int(reply.status)


def _launch(daemon: DaemonProcess, sink: pathlib.Path) -> str:
    with daemon.channel() as channel:
        client = Client(channel)
        rows = [cs.ContactRow(email=f"p{i}@faults.example.org") for i in range(RECIPIENTS)]
        campaign = double_campaign(client, import_list(client, "many", rows), sink=str(sink), delay_ms=4)
        client.launch(campaign.name)
        return campaign.name


def _write_refused(daemon: DaemonProcess) -> grpc.RpcError:
    """A write call made while the database cannot be written, and how it was refused."""
    with daemon.channel() as channel:
        stub = cs_grpc.ContactServiceStub(channel)
        for attempt in range(50):
            try:
                stub.CreateList(
                    cs.CreateListRequest(list_id=f"during{attempt}", list=cs.ContactList(display_name="d"))
                )
            except grpc.RpcError as error:
                return error
            time.sleep(0.1)
    raise AssertionError("every write succeeded while the database was failing")


def _check_outage_then_recovery(
    daemon: DaemonProcess, name: str, sink: pathlib.Path, cause: str, restore: Callable[[], None]
) -> None:
    """While the fault lasts: NOT_SERVING, writes refused UNAVAILABLE with `cause`, nothing sent.
    After `restore`: SERVING, the channel PAUSED by the system with the cause; resumed, it
    completes with every recipient sent exactly once and nobody failed."""
    wait_until(lambda: _health(daemon) == health_pb2.HealthCheckResponse.NOT_SERVING, what="NOT_SERVING")
    error = _write_refused(daemon)
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error
    assert cause in (error.details() or ""), error.details()
    time.sleep(0.5)  # sends already admitted finish
    during = sum(sink_counts(sink).values())
    time.sleep(1.5)
    assert sum(sink_counts(sink).values()) == during, "sends went on while results could not be written"
    restore()
    wait_until(lambda: _health(daemon) == health_pb2.HealthCheckResponse.SERVING, what="SERVING again")
    with daemon.channel() as channel:
        client = Client(channel)
        wait_until(lambda: client.get(name).channels[0].state == pb.Channel.PAUSED, what="the pause")
        pause = [e for e in client.history(name) if e.operation == "guard_pause"]
        assert [e.cause for e in pause] == [pb.CampaignEvent.SYSTEM]
        assert cause in pause[0].reason
        client.resume(name)
        wait_until(lambda: client.get(name).channels[0].state == pb.Channel.COMPLETED, what="completion")
        report = client.stub.GetCampaignReport(svc.GetCampaignReportRequest(name=name))
    received = sink_counts(sink)
    assert report.totals.sent == RECIPIENTS
    assert report.totals.failed == 0
    assert len(received) == RECIPIENTS
    assert max(received.values()) == 1, "a recipient was sent twice"


@contextlib.contextmanager
def _tmpfs(path: pathlib.Path, size: str) -> Iterator[pathlib.Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(directory: pathlib.Path) -> pathlib.Path:
    """Fill the file system of `directory` to the last byte; returns the filler file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        chunk = b"\0" * (1 << 20)
        while chunk:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                chunk = chunk[: len(chunk) // 2]
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_loses_no_result_and_pauses_until_resumed(
    daemon_factory: DaemonFactory, tmp_path: pathlib.Path
) -> None:
    """SQLite on a 48 MB tmpfs filled up mid-campaign: the daemon says NOT_SERVING and refuses
    writes with UNAVAILABLE "database or disk is full", sends nothing more, keeps the results it
    had; with room again it writes them, the channel is PAUSED (cause SYSTEM), and resumed it
    sends everyone exactly once, nobody failed."""
    sink = tmp_path / "received"
    daemon = daemon_factory(TEST_CHANNELS + ENGINE)
    with _tmpfs(daemon.workdir / "state", "48m") as state:
        daemon.start()
        name = _launch(daemon, sink)
        wait_until(lambda: sum(sink_counts(sink).values()) > 300, what="the first sends")
        filler = _fill(state)
        _check_outage_then_recovery(daemon, name, sink, "database or disk is full", filler.unlink)
        daemon.stop()


class _Proxy:
    """A TCP proxy on loopback to PostgreSQL that can cut every connection and refuse new ones."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.up = True
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            server = socket.create_connection(self.target)
            with self._lock:
                self._open += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every connection; refuse new ones until `restore`."""
        self.up = False
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def restore(self) -> None:
        """Forward new connections again."""
        self.up = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


def test_a_cut_postgresql_connection_loses_no_result(
    daemon_factory: DaemonFactory, tmp_path: pathlib.Path, pg_url: str
) -> None:
    """The daemon's PostgreSQL connections cut mid-campaign (a loopback proxy stops forwarding):
    NOT_SERVING, writes refused UNAVAILABLE "the database connection was lost", nothing sent;
    reconnected, the kept results are written, the channel is PAUSED (cause SYSTEM), and resumed
    it sends everyone exactly once, nobody failed."""
    import sqlalchemy as sa

    url = sa.make_url(pg_url)
    proxy = _Proxy((url.host or "127.0.0.1", url.port or 5432))
    try:
        proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        sink = tmp_path / "received"
        daemon = daemon_factory(TEST_CHANNELS + ENGINE + f'[database]\nurl = "{proxied}"\n').start()
        name = _launch(daemon, sink)
        wait_until(lambda: sum(sink_counts(sink).values()) > 300, what="the first sends")
        proxy.cut()
        _check_outage_then_recovery(daemon, name, sink, "the database connection was lost", proxy.restore)
        daemon.stop()
    finally:
        proxy.close()


@pytest.fixture(autouse=True)
def _root() -> None:
    """Mounting needs root: fail clearly rather than mid-test."""
    assert os.geteuid() == 0, "these tests mount a tmpfs and must run as root (CI does)"
