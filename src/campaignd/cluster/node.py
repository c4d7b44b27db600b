"""This daemon's place in its cluster, as the daemon, the engine and the API see it.

`Cluster` is a member of a cluster on PostgreSQL: membership and leadership, the pause barrier,
shares of the transports' limits, and watch wake-ups relayed to and from the other members.
`SingleNode` is a daemon alone on its database (SQLite): it leads, always may send, has whole
limits, and its barrier is the engine's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from campaignd import __version__, logs
from campaignd.changes import ChangeHub
from campaignd.cluster import shares
from campaignd.cluster.barrier import Barrier
from campaignd.cluster.bus import Bus
from campaignd.cluster.membership import Membership
from campaignd.cluster.settings import shared as shared_settings
from campaignd.config import Settings
from campaignd.engine.rates import WINDOW
from campaignd.plugin import Transport
from campaignd.store import cluster as store
from campaignd.store.db import Database, connect_args, create_engine

if TYPE_CHECKING:
    from campaignd.engine.core import Engine
    from campaignd.engine.transports import Transports

log = logs.get("campaignd.cluster")
RELAY_INTERVAL = 0.25  # seconds: at most this often does a campaign's change reach the other members


@dataclasses.dataclass(frozen=True)
class View:
    """The cluster as one member sees it: every member, the leader's id, and its own id."""

    members: tuple[store.Member, ...]
    leader: str
    me: str


class SingleNode:
    """A daemon alone on its database: one member, its own leader."""

    fencing = False

    def __init__(self, settings: Callable[[], Settings]) -> None:
        self.settings = settings
        self.engine: Engine | None = None
        self.owner = ""
        self._joined = dt.datetime.now(dt.UTC)

    def leads(self) -> bool:
        """Always: there is no other daemon."""
        return True

    def may_send(self) -> bool:
        """Always: nobody can take its leases while it lives."""
        return True

    def rate_share(self) -> float:
        """All of every rate."""
        return 1.0

    def share(self, transport: Transport) -> Transport:
        """All of every transport."""
        return transport

    def attach(self, engine: Engine | None, transports: Transports) -> None:
        """The engine whose gates Pause and Stop close."""
        self.engine = engine
        if engine is not None:
            self.owner = engine.owner

    async def start(self) -> None:
        """Nothing to join."""

    async def stop(self) -> None:
        """Nothing to leave."""

    @contextlib.asynccontextmanager
    async def hold(self, campaign_id: str, channel_id: str = "") -> AsyncIterator[None]:
        """The engine's own gates closed for the call (none on an API-only daemon)."""
        if self.engine is None:
            yield
            return
        async with self.engine.hold(campaign_id, channel_id):
            yield

    def wake(self) -> None:
        """Make the engine pass now."""
        if self.engine is not None:
            self.engine.wake()

    async def view(self) -> View:
        """This daemon, alone and leading."""
        now = dt.datetime.now(dt.UTC)
        me = self.owner.rsplit(":", 1)[-1] if self.owner else "local"
        member = store.Member(
            me,
            self.owner or f"{socket.gethostname()}:{os.getpid()}:{me}",
            socket.gethostname(),
            os.getpid(),
            __version__,
            self.engine is not None,
            tuple(sorted(self.settings().transports)),
            self._joined,
            now,
            now,
            True,
        )
        return View((member,), me, me)


class Cluster:
    """A member of a cluster of daemons on one PostgreSQL database."""

    fencing = True

    def __init__(self, database: Database, settings: Callable[[], Settings], hub: ChangeHub) -> None:
        self.settings = settings
        config = settings().cluster
        url = database.engine.url
        # Its own connections and threads: a heartbeat must not queue behind the engine's writes.
        self.db = Database(
            create_engine(
                url.render_as_string(hide_password=False),
                pool_size=2,
                idle_in_transaction=config.heartbeat_lease,
            ),
            threads=2,
        )
        self.membership = Membership(
            self.db,
            config,
            sends=settings().engine.enabled,
            transports=lambda: sorted(self.settings().transports),
            version=__version__,
            shared=lambda: shared_settings(self.settings()),
        )
        self.bus = Bus(connect_args(url), self._on_message)
        self.barrier = Barrier(self.bus, self.membership, self.db, config.heartbeat_lease)
        self.hub = hub
        self.engine: Engine | None = None
        self.transports: Transports | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._relayed: dict[str, float] = {}
        self._relaying: set[str] = set()
        self._chores: set[asyncio.Future[Any]] = set()
        # Member lists of the last WINDOW seconds, with when each stops counting: a share that
        # grows (a member left or lapsed) grows only once the sends made at the smaller share
        # and the leaver's last sends have left every one-second window.
        self._recent: list[tuple[float, tuple[store.Member, ...]]] = []
        self._shared: tuple[store.Member, ...] = ()  # the member list of the last rebalance

    # -- what the engine asks -------------------------------------------------------------------

    def leads(self) -> bool:
        """Whether this member holds the leader's lease."""
        return self.membership.leads()

    def may_send(self) -> bool:
        """Whether a send may start: the membership lease is safely live and the bus is heard."""
        return self.bus.listening and self.membership.may_send()

    def rate_share(self) -> float:
        """A channel's rate is divided among the members that send."""
        return 1.0 / max(shares.senders(members, self.membership.id) for members in self._views())

    def share(self, transport: Transport) -> Transport:
        """This member's part of a transport's rate and concurrency."""
        parts = [shares.share(transport, members, self.membership.id) for members in self._views()]
        return dataclasses.replace(
            parts[0], rate=min(p.rate for p in parts), concurrency=min(p.concurrency for p in parts)
        )

    def _views(self) -> list[tuple[store.Member, ...]]:
        """The member list now, and those of the last WINDOW seconds."""
        now = time.monotonic()
        self._recent = [(until, members) for until, members in self._recent if until > now]
        return [self.membership.members, *(members for _, members in self._recent)]

    # -- life -----------------------------------------------------------------------------------

    def attach(self, engine: Engine | None, transports: Transports) -> None:
        """The engine whose gates holds close and whose leases the membership names."""
        self.engine = engine
        self.transports = transports
        self.barrier.engine = engine
        self.membership.on_identity = self._identity
        self.membership.on_lapse = self._lapsed
        self.membership.on_change = self._members_changed
        self.bus.on_reconnect = self._heard_again

    async def start(self) -> None:
        """Listen to the other members, join, and keep the heartbeat; raises when PostgreSQL
        cannot be reached."""
        await self.bus.start()
        await self.membership.join()
        self._heartbeat = asyncio.create_task(self.membership.run(), name="cluster heartbeat")
        self.hub.relay = self._relay

    async def stop(self) -> None:
        """Leave (after the engine stopped): the leadership and any leases left go at once."""
        self.hub.relay = None
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        try:
            await self.membership.leave()
            await self.bus.send({"k": "members", "m": self.membership.id})
        except Exception as exc:
            # The others take over once the lease lapses.
            log.warning("could not leave the cluster cleanly", error=str(exc).strip())
        await self.bus.close()
        await asyncio.get_running_loop().run_in_executor(None, self.db.close)

    def hold(self, campaign_id: str, channel_id: str = "") -> contextlib.AbstractAsyncContextManager[None]:
        """Every member's gates closed for the length of a Pause or Stop (barrier.py)."""
        return self.barrier.hold(campaign_id, channel_id)

    def wake(self) -> None:
        """Make this member's engine pass now; the others learn of changes through the bus."""
        if self.engine is not None:
            self.engine.wake()

    async def view(self) -> View:
        """The members as the database has them now."""
        members = await self.db.read(store.members)
        leader = await self.db.read(store.current_leader)
        return View(members, leader, self.membership.id)

    # -- hooks ----------------------------------------------------------------------------------

    def _identity(self, owner: str) -> None:
        if self.engine is not None:
            self.engine.owner = owner

    async def _lapsed(self) -> None:
        if self.engine is not None:
            await self.engine.fence()

    def _members_changed(self, announce: bool) -> None:
        if self._shared:
            self._recent.append((time.monotonic() + WINDOW, self._shared))
            asyncio.get_running_loop().call_later(WINDOW, self._rebalance)
        self._shared = self.membership.members
        self._rebalance()
        if announce:
            self.bus.post({"k": "members", "m": self.membership.id})

    def _rebalance(self) -> None:
        if self.transports is not None:
            self.transports.rebalance()
        if self.engine is not None:
            self.engine.wake()

    def _heard_again(self) -> None:
        # Members may have come or gone while nothing was heard.
        self._later(self.membership.refresh())

    def _on_message(self, message: dict[str, Any]) -> None:
        kind, sender = message.get("k"), message.get("m")
        if kind == "change":
            if sender != self.membership.id and isinstance(message.get("c"), str):
                self.hub.deliver(message["c"])
        elif kind == "members":
            if sender != self.membership.id:
                self._later(self.membership.refresh())
        else:
            self.barrier.handle(message)

    def _relay(self, campaign_id: str) -> None:
        """Tell the other members that a campaign changed, at most every RELAY_INTERVAL: the
        first change at once, the ones after it together at the end of the interval."""
        if campaign_id in self._relaying:
            return
        now = time.monotonic()
        self._relayed = {c: t for c, t in self._relayed.items() if now - t < RELAY_INTERVAL}
        wait = max(0.0, self._relayed.get(campaign_id, -RELAY_INTERVAL) + RELAY_INTERVAL - now)
        self._relaying.add(campaign_id)
        asyncio.get_running_loop().call_later(wait, self._send_change, campaign_id)

    def _send_change(self, campaign_id: str) -> None:
        self._relaying.discard(campaign_id)
        self._relayed[campaign_id] = time.monotonic()
        self.bus.post({"k": "change", "c": campaign_id, "m": self.membership.id})

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._chores.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._chores.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not read the cluster's members", error=str(task.exception()).strip())


def open_node(database: Database, settings: Callable[[], Settings], hub: ChangeHub) -> Cluster | SingleNode:
    """A cluster member on PostgreSQL, a single node on SQLite."""
    if database.dialect == "postgresql":
        return Cluster(database, settings, hub)
    return SingleNode(settings)
