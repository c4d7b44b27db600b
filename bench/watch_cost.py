"""Watch benchmark: what WatchCampaign streams cost the daemon on a campaign with many events.

    .venv/bin/python bench/watch_cost.py [--recipients N] [--events E] [--watchers 1,4]
                                         [--seconds 15] [--backend sqlite|postgresql]

In one run it starts the real daemon (engine off: nothing is sent, so the watch is all that
runs), imports N contacts into a list, launches a `test-email` campaign to it, and records E
events against its messages through RecordEvents (70 % opens, 20 % clicks over ten links, 10 %
bounces, the opens and clicks spread over two thirds of the recipients). Then, for each count of
watchers (0 first, the baseline), it holds that many WatchCampaign streams open for `--seconds`
while a client records 100 more opens a second, and prints:

- the CPU of the daemon (and of the PostgreSQL server processes serving it) over that time, as
  a share of one core, and its increase over the baseline;
- the watch updates received per second, per watcher;
- how long after a RecordEvents call returned the first watcher saw its opens counted (median
  and largest): what a watch's reuse of the engagement costs in freshness.
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

import grpc
from google.protobuf import struct_pb2

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from audience import Daemon, ServerCpu, cpu_seconds, database, launch_to_list, machine

from campaignd.v1 import campaign_service_pb2 as svc
from campaignd.v1 import campaign_service_pb2_grpc as svc_grpc
from campaignd.v1 import resources_pb2 as pb

E = svc.MessageEvent
CAMPAIGN = "campaigns/engaged"


def event(i: int, n: int, campaign: str) -> svc.MessageEvent:
    """Event i of the bulk: an open, a click or a bounce of one of the first two thirds."""
    who = E.Recipient(campaign=campaign, channel_id="main", address=f"user{i % (2 * n // 3)}@example.org")
    if i % 10 < 7:
        return E(event_id=f"bulk-{i}", kind=E.OPENED, recipient=who)
    if i % 10 < 9:
        return E(event_id=f"bulk-{i}", kind=E.CLICKED, recipient=who, url=f"https://example.org/{i % 10}")
    return E(event_id=f"bulk-{i}", kind=E.BOUNCED, recipient=who, soft=True)


def prepare(channel: grpc.Channel, n: int, events: int) -> None:
    text = struct_pb2.Struct()
    text.update({"text": "Hello"})
    launch_to_list(channel, n, "engaged", pb.Channel(channel_id="main", type="test-email", content=text))
    campaigns = svc_grpc.CampaignServiceStub(channel)
    started = time.perf_counter()
    for start in range(0, events, 1000):
        batch = [event(i, n, CAMPAIGN) for i in range(start, min(events, start + 1000))]
        campaigns.RecordEvents(svc.RecordEventsRequest(events=batch), timeout=600)
    print(f"   {events:,} events recorded in {time.perf_counter() - started:.1f} s", flush=True)


class Watcher(threading.Thread):
    """One WatchCampaign stream; keeps the time and opens count of every update."""

    def __init__(self, channel: grpc.Channel) -> None:
        super().__init__(daemon=True)
        self.stub = svc_grpc.CampaignServiceStub(channel)
        self.updates: list[tuple[float, int]] = []
        self.call: Any = None  # the stream: an iterator of updates that can be cancelled
        self.ready = threading.Event()

    def run(self) -> None:
        self.call = self.stub.WatchCampaign(svc.WatchCampaignRequest(name=CAMPAIGN))
        with contextlib.suppress(grpc.RpcError):
            for update in self.call:
                self.updates.append((time.monotonic(), update.report.totals.opens))
                self.ready.set()

    def stop(self) -> None:
        if self.call is not None:
            self.call.cancel()


def trickle(channel: grpc.Channel, seconds: float, tag: str) -> list[tuple[float, int]]:
    """Record 10 new opens every 0.1 s; returns (when the call returned, opens expected after it)."""
    stub = svc_grpc.CampaignServiceStub(channel)
    first = stub.GetCampaignReport(svc.GetCampaignReportRequest(name=CAMPAIGN)).totals.opens
    sent: list[tuple[float, int]] = []
    deadline = time.monotonic() + seconds
    k = 0
    while time.monotonic() < deadline:
        batch = [
            E(
                event_id=f"{tag}-{k + j}",
                kind=E.OPENED,
                recipient=E.Recipient(campaign=CAMPAIGN, channel_id="main", address=f"user{j}@example.org"),
            )
            for j in range(10)
        ]
        stub.RecordEvents(svc.RecordEventsRequest(events=batch))
        k += 10
        sent.append((time.monotonic(), first + k))
        time.sleep(0.1)
    return sent


def lags(sent: list[tuple[float, int]], seen: list[tuple[float, int]]) -> list[float]:
    """For each call, the time until an update counted its opens."""
    out = []
    for at, opens in sent:
        later = [t for t, n in seen if n >= opens and t >= at]
        if later:
            out.append(min(later) - at)
    return out


def measure(
    daemon: Daemon, server: ServerCpu, watchers: int, seconds: float
) -> tuple[float, float, list[float]]:
    """CPU share of the daemon and its database server, updates per second per watcher, and the
    lags, with `watchers` streams."""
    with grpc.insecure_channel(daemon.address) as channel:
        streams = [Watcher(channel) for _ in range(watchers)]
        for stream in streams:
            stream.start()
        for stream in streams:
            stream.ready.wait(60)
        before, server_before = sum(cpu_seconds(daemon.pid)), server.snapshot()
        started = time.monotonic()
        sent = trickle(channel, seconds, f"w{watchers}")
        elapsed = time.monotonic() - started
        used = sum(cpu_seconds(daemon.pid)) - before + server.used(server_before, server.snapshot())
        for stream in streams:
            stream.stop()
        for stream in streams:
            stream.join(10)
    rate = statistics.mean(len(s.updates) / elapsed for s in streams) if streams else 0.0
    return used / elapsed, rate, lags(sent, streams[0].updates) if streams else []


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--watchers", default="1,4", help="comma-separated counts of streams")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    args = parser.parse_args()
    print(f"machine: {machine()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="campaignd-watch-") as tmp, database(args.backend, False) as url:
        daemon = Daemon(pathlib.Path(tmp), url)
        daemon.start()
        server = ServerCpu(url)
        who = "daemon + PostgreSQL" if url else "daemon"
        try:
            with grpc.insecure_channel(daemon.address) as channel:
                prepare(channel, args.recipients, args.events)
            baseline, _, _ = measure(daemon, server, 0, args.seconds)
            print(f"[{args.backend}] no watcher: {who} CPU {baseline:.0%} of a core (100 opens/s recorded)")
            for count in (int(w) for w in args.watchers.split(",")):
                share, rate, seen = measure(daemon, server, count, args.seconds)
                worst = max(seen) if seen else float("nan")
                median = statistics.median(seen) if seen else float("nan")
                print(
                    f"[{args.backend}] {count} watcher(s): {who} CPU {share:.0%} of a core "
                    f"(+{share - baseline:.0%} over none, {share / max(baseline, 1e-9):.1f}x); "
                    f"{rate:.1f} updates/s per watcher; new opens seen after {median:.2f} s "
                    f"(median), {worst:.2f} s (largest)",
                    flush=True,
                )
        finally:
            server.close()
            daemon.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
