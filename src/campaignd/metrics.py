"""Prometheus metrics: messages by channel type, transport and outcome, send rate, queue depth,
RPC latency. Served over HTTP on `[metrics] address` when it is set."""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry()

MESSAGES = Counter(
    "campaignd_messages",
    "Messages that reached a state through this daemon's engine.",
    ["channel_type", "transport", "outcome"],
    registry=REGISTRY,
)
SEND_RATE = Gauge(
    "campaignd_send_rate",
    "Sends this daemon started per second over the last 10 seconds, per channel type.",
    ["channel_type"],
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "campaignd_queue_depth",
    "Messages waiting (queued or retrying) in running channels, per channel type.",
    ["channel_type"],
    registry=REGISTRY,
)
RPC_SECONDS = Histogram(
    "campaignd_rpc_duration_seconds",
    "Time to answer an RPC (to the end of the stream for streams).",
    ["method", "code"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
    registry=REGISTRY,
)


# A daemon's front process (api/front.py) hands the durations of the calls it answered itself to
# the daemon by this method of the daemon's private socket: a JSON list of [method, code, seconds].
FRONT_OBSERVED = "/campaignd.internal.Front/Observed"


def observe_rpcs(batch: bytes) -> None:
    """Count the calls of a FRONT_OBSERVED batch in RPC_SECONDS."""
    for method, code, seconds in json.loads(batch):
        RPC_SECONDS.labels(str(method), str(code)).observe(float(seconds))


def serve(address: str) -> int:
    """Start the HTTP endpoint on `host:port` in a background thread; returns the bound port."""
    host, _, port = address.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0", registry=REGISTRY)  # noqa: S104
    return int(server.server_port)
