"""The transports this daemon has open: their clients, rate limiters and health.

A transport is opened through its plugin when a channel first sends through it and stays open
while the daemon runs. One whose type declares the capability `inbound` (its provider reports
receipts and replies through it) is opened at start, and again after a reload or a rest, so
that what the provider reports is not lost while no campaign sends through it. A reload that
changes a transport retires the open one: new batches get a fresh one, and the old one is closed
once the batches using it have finished.

Health: a transport that could not be reached rests for `[engine] transport_rest` seconds, during
which its recipients go through the channel's other transports (failover). One that failed
fatally (e.g. refused authentication) stays out until a reload or a restart.

In a cluster, a transport is opened with this daemon's share of its rate and concurrency
(`share`); when the members change, the open transport sends at the new rate at once and is
opened anew with the new concurrency once the batches using it have finished; when the
concurrency share shrank, those batches start no more sends through it meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from campaignd import logs
from campaignd.clock import Clock
from campaignd.engine.rates import RateLimiter
from campaignd.model import TransportShare
from campaignd.plugin import ChannelInfo, EventSink, Recipient, SendResult, SendStatus, Transport
from campaignd.plugin.manager import PluginCallError, Plugins

log = logs.get("campaignd.transports")
OPEN_TIMEOUT = 30.0  # seconds a plugin may take to open or close a transport
INBOUND = "inbound"  # the capability of types whose provider reports back through the transport


@dataclasses.dataclass(eq=False)
class OpenTransport:
    """One open transport and the batches using it."""

    transport: Transport  # as opened: this daemon's share of the configured one
    client: Any
    limiter: RateLimiter | None
    configured: Transport
    users: int = 0
    retired: bool = False
    # This daemon's share of the concurrency shrank: the batches using it start no more sends.
    draining: bool = False
    closed: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


@dataclasses.dataclass
class _Health:
    rest_until: float = 0.0
    fatal: str = ""


class Transports:
    """Opens, shares, rests and closes the daemon's transports."""

    def __init__(
        self,
        plugins: Plugins,
        events: EventSink,
        rest: Callable[[], float],
        clock: Clock,
        share: Callable[[Transport], Transport] | None = None,
    ) -> None:
        self.plugins = plugins
        # This daemon's part of a transport's rate and concurrency (all of it when alone).
        self.share = share or (lambda transport: transport)
        self.events = events
        self.rest_seconds = rest
        self.clock = clock
        self._open: dict[str, OpenTransport] = {}
        self._opening: dict[str, asyncio.Lock] = {}
        self._retired: list[OpenTransport] = []
        self._health: dict[str, _Health] = {}

    def usable(self, name: str) -> bool:
        """Whether batches may go through `name` now: neither resting nor fatally failed."""
        health = self._health.get(name)
        if health is not None and (health.fatal or health.rest_until > self.clock.monotonic()):
            return False
        # A cluster member with no share of its concurrency leaves it to the others.
        configured = self.plugins.config.transports.get(name)
        return configured is None or self.share(configured).concurrency > 0

    def fatal(self, name: str) -> str:
        """The error that took `name` out until a reload, or ""."""
        health = self._health.get(name)
        return health.fatal if health is not None else ""

    def rest(self, name: str, error: str) -> None:
        """Rest `name`: it could not be reached."""
        health = self._health.setdefault(name, _Health())
        if health.rest_until <= self.clock.monotonic():
            log.warning(
                "transport down; resting it", transport=name, seconds=self.rest_seconds(), error=error
            )
        health.rest_until = self.clock.monotonic() + self.rest_seconds()

    def fail(self, name: str, error: str) -> None:
        """Take `name` out until a reload: it failed in a way that retrying will not mend."""
        health = self._health.setdefault(name, _Health())
        if not health.fatal:
            log.error("transport failed; not used until a reload", transport=name, error=error)
        health.fatal = error or "transport failure"

    @contextlib.asynccontextmanager
    async def use(self, transport: Transport) -> AsyncIterator[OpenTransport]:
        """The open form of `transport` for the length of a batch; TransportOpenError if it cannot open."""
        entry = await self._get(transport)
        entry.users += 1
        try:
            yield entry
        finally:
            entry.users -= 1
            if entry.retired and entry.users == 0:
                await self._close(entry)

    async def _get(self, transport: Transport) -> OpenTransport:
        wanted = self.share(transport)
        entry = self._open.get(transport.name)
        # A draining one is not used again, even if the share came back to its size meanwhile.
        if entry is not None and entry.transport == wanted and not entry.draining:
            return entry
        lock = self._opening.setdefault(transport.name, asyncio.Lock())
        async with lock:
            wanted = self.share(transport)
            entry = self._open.get(transport.name)
            if entry is not None and entry.transport == wanted and not entry.draining:
                return entry
            kept: RateLimiter | None = None
            if entry is not None:
                await self._retire(entry)
                if entry.configured == transport:
                    # Only this daemon's share changed: the old connections must be gone before
                    # new ones open, or together they would exceed it. The limiter goes on: the
                    # last second's sends count against the new share too.
                    await entry.closed.wait()
                    kept = entry.limiter
            client = await self.plugins.open_transport(wanted, self.events, OPEN_TIMEOUT)
            limiter = kept if kept is not None and wanted.rate > 0 else None
            if limiter is not None:
                limiter.set_rate(wanted.rate)
            elif wanted.rate > 0:
                limiter = RateLimiter(wanted.rate, self.clock)
            entry = self._open[transport.name] = OpenTransport(wanted, client, limiter, transport)
            log.info(
                "transport opened",
                transport=transport.name,
                type=transport.channel_type,
                rate=wanted.rate,
                concurrency=wanted.concurrency,
            )
            return entry

    async def keep_open(self) -> None:
        """Open every usable transport of an `inbound` type that is not open; one that fails to
        open rests, and is tried again after its rest."""
        for name, transport in self.plugins.config.transports.items():
            declared = self.plugins.types.get(transport.channel_type)
            if declared is None or INBOUND not in declared.capabilities:
                continue
            if name in self._open or not self.usable(name):
                continue
            try:
                await self._get(transport)
            except PluginCallError as exc:
                self.rest(name, str(exc))

    def rebalance(self) -> None:
        """The cluster's members changed: open transports send at this daemon's new share of their
        rate now; the next batch opens them anew for its new share of their concurrency. One
        whose concurrency share shrank drains: sends in flight end, no new one starts through it
        (its messages go back to the queue unattempted), so that a member that joined does not
        add its share to sends this one still has in flight at its old share."""
        for entry in self._open.values():
            wanted = self.share(entry.configured)
            if entry.limiter is not None and wanted.rate > 0:
                entry.limiter.set_rate(wanted.rate)
            if 0 < wanted.concurrency < entry.transport.concurrency:
                entry.draining = True

    async def reconfigure(self) -> None:
        """After a reload: retire transports whose config changed or went, forget fatal errors."""
        self._health.clear()
        configured = self.plugins.config.transports
        for name, entry in list(self._open.items()):
            if configured.get(name) != entry.configured:
                del self._open[name]
                await self._retire(entry)

    async def _retire(self, entry: OpenTransport) -> None:
        entry.retired = True
        if entry.users == 0:
            await self._close(entry)

    async def _close(self, entry: OpenTransport) -> None:
        if self._open.get(entry.transport.name) is entry:
            del self._open[entry.transport.name]
        try:
            await self.plugins.close_transport(entry.transport, entry.client, OPEN_TIMEOUT)
        finally:
            entry.closed.set()
        log.info("transport closed", transport=entry.transport.name)

    async def close(self) -> None:
        """Close every open transport (at shutdown, after the workers stopped)."""
        for entry in list(self._open.values()):
            await self._close(entry)


def route(
    addresses: Sequence[str], targets: Sequence[tuple[Transport, int]], usable: Callable[[str], bool]
) -> list[Transport | None]:
    """The transport for each address: by the percentage split, deterministic per address, and
    failing over, in the order of `targets`, from an unusable transport to the next usable one.
    None where no transport is usable."""
    if not targets:
        return [None] * len(addresses)
    if len(targets) == 1:  # every address to it: no need to hash them
        only = targets[0][0]
        return [only if usable(only.name) else None] * len(addresses)
    bounds = []
    total = 0
    for transport, percent in targets:
        total += percent
        bounds.append((total, transport))
    live = [usable(t.name) for t, _ in targets]
    chosen: list[Transport | None] = []
    for address in addresses:
        bucket = _bucket(address, total)
        index = next(i for i, (bound, _) in enumerate(bounds) if bucket < bound)
        for step in range(len(targets)):
            candidate = (index + step) % len(targets)
            if live[candidate]:
                chosen.append(targets[candidate][0])
                break
        else:
            chosen.append(None)
    return chosen


def _bucket(address: str, total: int) -> int:
    # A hash, not Python's hash(): the same recipient must get the same transport in every process.
    digest = hashlib.blake2b(address.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % max(total, 1)


class _AlwaysOpen:
    """The gate of a test send: nothing pauses it."""

    async def admit(self, weight: float = 1.0, message_id: int | None = None) -> bool:
        return True


async def send_once(
    plugins: Plugins,
    transports: Transports,
    channel: ChannelInfo,
    shares: Sequence[TransportShare],
    recipients: Sequence[Recipient],
    seconds: float,
) -> list[SendResult]:
    """Send `recipients` outside any campaign run (a test send): through the channel's
    transports when its type has them; PluginCallError when the plugin fails."""
    declared = plugins.types.get(channel.type)
    if declared is None or not declared.uses_transports:
        return await plugins.send(channel.type, channel, recipients, _AlwaysOpen(), seconds)
    targets = plugins.transports_for(channel.type, shares)
    chosen = route([r.address for r in recipients], targets, transports.usable)
    results: list[SendResult] = []
    for recipient, transport in zip(recipients, chosen, strict=True):
        if transport is None:
            results.append(
                SendResult(recipient.message_id, SendStatus.RETRY, error="no transport is usable now")
            )
            continue
        async with transports.use(transport) as opened:
            results += await plugins.send(
                channel.type,
                channel,
                [recipient],
                _AlwaysOpen(),
                seconds,
                transport=transport,
                client=opened.client,
            )
    return results
