"""The API's front process: it serves the daemon's socket from a process of its own, forwards what
it does not answer, comes back when it dies, and never outlives the daemon."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import stat
import time
import urllib.request

import grpc
import pytest
from google.protobuf import field_mask_pb2
from grpc import aio

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import contact_service_pb2 as cs
from campaignd.v1 import resources_pb2 as pb
from tests.integration.campaign_client import Client, channel, expect_failure
from tests.integration.conftest import TEST_CHANNELS, DaemonFactory, DaemonProcess


def children(pid: int) -> dict[int, str]:
    """The child processes of `pid`: their command lines."""
    found = {}
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found[int(entry.name)] = command
    return found


def front_pid(daemon: DaemonProcess) -> int:
    """The pid of the daemon's front process."""
    assert daemon.proc is not None
    fronts = [pid for pid, command in children(daemon.proc.pid).items() if "campaignd.api.front" in command]
    assert len(fronts) == 1, children(daemon.proc.pid)
    return fronts[0]


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie counts as gone)."""
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until(condition: object, timeout: float = 15.0) -> None:
    """Poll `condition` (a callable) until it is true."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture
def served(daemon_factory: DaemonFactory) -> DaemonProcess:
    return daemon_factory(TEST_CHANNELS).start()


def test_the_socket_is_served_by_a_front_process_of_the_daemon(served: DaemonProcess) -> None:
    front = front_pid(served)
    # The configured socket keeps its mode; the daemon's own is its user's alone.
    assert stat.S_IMODE(served.socket_path.stat().st_mode) == 0o660
    private = served.socket_path.with_name("campaignd-core.sock")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    with served.channel() as ch:
        client = Client(ch)
        # A change goes through to the daemon, and a read made right after it, answered by the
        # front from the database, sees it.
        campaign = client.create(channel("e1"), campaign_id="front1", display_name="one")
        assert client.get(campaign.name).display_name == "one"
        updated = client.stub.UpdateCampaign(
            svc.UpdateCampaignRequest(
                campaign=pb.Campaign(name=campaign.name, display_name="two"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            ),
            timeout=10,
        )
        assert updated.display_name == "two"
        assert client.get(campaign.name).display_name == "two"
        # A refused change keeps its status and the offending field, through the front.
        failure = expect_failure(
            lambda: client.stub.CreateCampaign(
                svc.CreateCampaignRequest(campaign_id="Bad Id", campaign=pb.Campaign(display_name="x")),
                timeout=10,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert "campaign_id" in failure.fields
        history = client.history(campaign.name)
        assert history
        assert {event.actor for event in history} == {"local"}
    assert alive(front)


def test_a_front_that_dies_is_started_again(served: DaemonProcess) -> None:
    first = front_pid(served)
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: not alive(first))
    assert served.proc is not None
    wait_until(lambda: any("campaignd.api.front" in c for c in children(served.proc.pid).values()))
    served.wait_serving()
    with served.channel() as ch:
        client = Client(ch)
        campaign = client.create(channel("e1"), campaign_id="again", display_name="again")
        assert client.get(campaign.name).display_name == "again"
    assert front_pid(served) != first
    assert "the API's front process exited; starting it again" in served.log_text()


def test_the_front_never_outlives_the_daemon(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(TEST_CHANNELS).start()
    front = front_pid(daemon)
    assert daemon.proc is not None
    daemon.proc.kill()
    daemon.wait(10)
    wait_until(lambda: not alive(front), timeout=5)
    # The next daemon finds the socket free at once.
    daemon.start()
    with daemon.channel() as ch:
        Client(ch).create(channel("e1"), campaign_id="next", display_name="next")


def test_a_graceful_stop_ends_the_front_too(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(TEST_CHANNELS).start()
    front = front_pid(daemon)
    assert daemon.stop() == 0
    assert not alive(front)
    assert not daemon.socket_path.exists()
    assert not daemon.socket_path.with_name("campaignd-core.sock").exists()


def test_a_watch_the_caller_leaves_ends_at_the_daemon_too(daemon_factory: DaemonFactory) -> None:
    # One watcher allowed: a second watch is refused until the first one ended at the daemon.
    daemon = daemon_factory(TEST_CHANNELS + "[limits]\nmax_watchers = 1\n").start()
    with daemon.channel() as ch:
        client = Client(ch)
        campaign = client.create(channel("e1"), campaign_id="watched", display_name="watched")
        for _ in range(3):
            stream = client.stub.WatchCampaign(svc.WatchCampaignRequest(name=campaign.name), timeout=20)
            assert next(iter(stream)).campaign.name == campaign.name
            stream.cancel()  # type: ignore[no-untyped-call]  # untyped in grpc-stubs
            wait_until(lambda: watch_refused(client, campaign.name) is None, timeout=10)


def watch_refused(client: Client, name: str) -> grpc.StatusCode | None:
    """None when a watch of `name` opens (it is closed again), else the code it was refused with."""
    stream = client.stub.WatchCampaign(svc.WatchCampaignRequest(name=name), timeout=20)
    try:
        next(iter(stream))
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        return code
    stream.cancel()  # type: ignore[no-untyped-call]  # untyped in grpc-stubs
    return None


def test_without_a_front_the_daemon_serves_the_socket_itself(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(TEST_CHANNELS + "[grpc]\nfront_process = false\n").start()
    assert daemon.proc is not None
    assert not any("campaignd.api.front" in c for c in children(daemon.proc.pid).values())
    assert not daemon.socket_path.with_name("campaignd-core.sock").exists()
    with daemon.channel() as ch:
        client = Client(ch)
        campaign = client.create(channel("e1"), campaign_id="inproc", display_name="in")
        assert client.get(campaign.name).display_name == "in"
    assert daemon.stop() == 0


def rpc_count(port: int, method: str, code: str) -> float:
    """The daemon's count of `method` calls that ended with `code`, from /metrics."""
    series = f'campaignd_rpc_duration_seconds_count{{code="{code}",method="{method}"}}'
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.split()[-1])
    return 0.0


def test_the_daemons_metrics_count_the_calls_its_front_answered(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(
        TEST_CHANNELS + '[metrics]\naddress = "127.0.0.1:0"\n[log]\nformat = "json"\n'
    ).start()
    port = next(e for e in daemon.log_events() if e["event"] == "serving")["metrics_port"]
    get = "/campaignd.v1.CampaignService/GetCampaign"
    create = "/campaignd.v1.CampaignService/CreateCampaign"
    with daemon.channel() as ch:
        client = Client(ch)
        campaign = client.create(channel("e1"), campaign_id="counted", display_name="counted")
        for _ in range(25):
            client.get(campaign.name)
        expect_failure(lambda: client.get("campaigns/missing"), grpc.StatusCode.NOT_FOUND)
    # Answered by the front, handed to the daemon within a second or two.
    wait_until(lambda: rpc_count(port, get, "OK") == 25, timeout=10)
    assert rpc_count(port, get, "NOT_FOUND") == 1
    # Forwarded: counted once, by the daemon.
    time.sleep(1.5)
    assert rpc_count(port, create, "OK") == 1
    assert rpc_count(port, get, "OK") == 25


def test_an_asyncio_client_gets_the_refusal_of_an_import_stream(served: DaemonProcess) -> None:
    """A stream refused at its first or a later message answers INVALID_ARGUMENT every time, to
    an asyncio client as through the front (whose own client is one): the refusal goes once the
    stream was sent, not while the client still writes, which its gRPC library turned INTERNAL."""
    bad_options = cs.ImportContactsRequest(
        options=cs.ImportOptions(match_on=cs.ImportOptions.MatchOn.ValueType(7))
    ).SerializeToString()
    first = cs.ImportContactsRequest(options=cs.ImportOptions()).SerializeToString()

    async def codes(stream: list[bytes]) -> set[grpc.StatusCode]:
        seen = set()
        async with aio.insecure_channel(served.address) as ch:
            call = ch.stream_unary("/campaignd.v1.ContactService/ImportContacts", None, None)
            for _ in range(60):
                try:
                    await call(iter(stream), timeout=15)
                except aio.AioRpcError as exc:
                    seen.add(exc.code())
        return seen

    assert asyncio.run(codes([bad_options, bad_options, bad_options])) == {grpc.StatusCode.INVALID_ARGUMENT}
    assert asyncio.run(codes([first, first, first, first])) == {grpc.StatusCode.INVALID_ARGUMENT}


def test_a_reload_is_reported_once_the_front_has_taken_it(daemon_factory: DaemonFactory) -> None:
    """A reload reaches the front: a limit it applies itself (ListCampaigns' page size) holds from
    the first call made once `reloaded` is logged, every time."""
    daemon = daemon_factory(TEST_CHANNELS + "[limits]\nmax_page_size = 1\n").start()
    with daemon.channel() as ch:
        client = Client(ch)
        for n in range(3):
            client.create(channel("e1"), campaign_id=f"paged{n}", display_name="paged")
        for reload, size in enumerate([5, 1, 5, 1, 5], start=1):
            daemon.write_config(TEST_CHANNELS + f"[limits]\nmax_page_size = {size}\n")
            daemon.signal(signal.SIGHUP)
            # Polled without a pause: the first call goes as soon as the reload is reported.
            deadline = time.monotonic() + 15
            while daemon.log_text().count('"reloaded"') < reload:
                assert time.monotonic() < deadline, "no reload reported"
            listed = client.stub.ListCampaigns(svc.ListCampaignsRequest(page_size=10), timeout=10)
            assert len(listed.campaigns) == min(size, 3)
