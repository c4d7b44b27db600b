"""This daemon's membership of the cluster: its heartbeat lease, its fence, and the leader's lease.

Leases are kept by the database's clock; the fence by this process's monotonic clock, from the
moment a renewal was sent: a renewal sent at t makes the lease run to at least t + lease (the
database's `now()` comes after t), so closing every gate at t + lease - margin stops this daemon
before anyone can take it for stopped. A renewal that finds the lease lapsed means others may
have done so: the daemon ends everything it had under its old id and joins again under a new
one, so that nothing it leased before is taken from it (store.engine records only for a live
owner).
"""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from campaignd import logs
from campaignd.cluster.settings import differences
from campaignd.config import ClusterSettings
from campaignd.engine.rates import WINDOW
from campaignd.store import cluster as store
from campaignd.store.db import Database, storage_fault

log = logs.get("campaignd.cluster")


class Membership:
    """Joins, renews its lease every heartbeat, leads when it can, and rejoins after a lapse."""

    def __init__(
        self,
        database: Database,
        settings: ClusterSettings,
        *,
        sends: bool,
        transports: Callable[[], Sequence[str]],
        version: str,
        shared: Callable[[], Mapping[str, Any]] = dict,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = database
        self.settings = settings
        self.sends = sends
        self.transports = transports
        # The settings every member must share (cluster/settings.py), as this one has them now.
        self.shared = shared
        # (member id, the settings it differs in) already logged: each is logged once.
        self._mismatches: set[tuple[str, tuple[str, ...]]] = set()
        self.version = version
        self.clock = clock
        self.id = ""
        self.owner = ""
        self.members: tuple[store.Member, ...] = ()
        self.leader = ""
        self._deadline = 0.0  # no send starts from then on (monotonic)
        self._warm_until = 0.0
        self._leads_until = 0.0
        self._fenced_logged = False
        # Set by the node: end everything of the old id (the engine's fence); the new owner id;
        # the members changed (shares to rebalance; with True, tell the others too).
        self.on_lapse: Callable[[], Awaitable[None]] | None = None
        self.on_identity: Callable[[str], None] | None = None
        self.on_change: Callable[[bool], None] | None = None

    @property
    def margin(self) -> float:
        """How long before its lease lapses a member stops sending."""
        return self.settings.heartbeat_lease / 5

    def may_send(self) -> bool:
        """Whether a send may start: joined, past the warm-up, and the lease safely live."""
        now = self.clock()
        return self._warm_until <= now < self._deadline

    def leads(self) -> bool:
        """Whether this daemon holds the leader's lease now."""
        return self.clock() < self._leads_until

    async def join(self) -> None:
        """Register under a new id, then take part at once (heartbeat, perhaps the leadership)."""
        self.id = secrets.token_hex(6)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{self.id}"
        began = self.clock()
        await self.db.write(
            functools.partial(
                store.register,
                member_id=self.id,
                owner=self.owner,
                hostname=socket.gethostname(),
                pid=os.getpid(),
                version=self.version,
                sends=self.sends,
                transports=sorted(self.transports()),
                settings=self.shared(),
                lease=self.settings.heartbeat_lease,
            )
        )
        self._deadline = began + self.settings.heartbeat_lease - self.margin
        # The others divide rates anew when they see this member; it sends once they have had a
        # heartbeat to do so, and the sends they made at their old shares have left every
        # one-second window, so that a transport's rate holds while they learn of it.
        self._warm_until = self.clock() + self.settings.heartbeat_interval + WINDOW
        self._leads_until = 0.0
        if self.on_identity is not None:
            self.on_identity(self.owner)
        log.info("joined the cluster", member=self.id, owner=self.owner, sends=self.sends)
        await self.beat(joined=True)

    async def beat(self, *, joined: bool = False) -> None:
        """Renew the lease (and the leader's, or take it); rejoin when it had lapsed."""
        began = self.clock()
        found = await self.db.write(
            functools.partial(
                store.heartbeat,
                member_id=self.id,
                transports=sorted(self.transports()),
                settings=self.shared(),
                lease=self.settings.heartbeat_lease,
                # The leader's duties are the engine's (schedules, sweeps, lease expiry): a
                # member that does not send never leads, or nobody would do them.
                lead=self.sends,
            )
        )
        if not found.renewed:
            await self._rejoin()
            return
        self._deadline = began + self.settings.heartbeat_lease - self.margin
        self._fenced_logged = False
        leads_before = self.leads()
        self._leads_until = self._deadline if found.leads else 0.0
        if found.leads and not leads_before:
            log.info("leading the cluster", member=self.id)
        elif leads_before and not found.leads:
            log.warning("no longer leading the cluster", member=self.id, leader=found.leader)
        if found.evicted:
            log.warning(
                "removed members whose heartbeat lapsed; their leases are taken over", owners=found.evicted
            )
        changed = _shape(found.members) != _shape(self.members) or found.leader != self.leader
        self.members, self.leader = found.members, found.leader
        self._compare_settings()
        if (changed or joined or found.evicted) and self.on_change is not None:
            self.on_change(joined or bool(found.evicted))

    async def refresh(self) -> None:
        """Read the members again (another member said they changed)."""
        members = await self.db.read(store.members)
        leader = await self.db.read(store.current_leader)
        if _shape(members) != _shape(self.members) or leader != self.leader:
            self.members, self.leader = members, leader
            self._compare_settings()
            if self.on_change is not None:
                self.on_change(False)

    async def run(self) -> None:
        """Heartbeat every `heartbeat_interval` until cancelled."""
        while True:
            began = self.clock()
            try:
                await self.beat()
            except Exception as exc:
                # The fence closes the gates by itself if this goes on until the lease is nearly out.
                cause = storage_fault(exc)
                if cause is None:
                    log.exception("cluster heartbeat failed", member=self.id)
                else:
                    log.warning("cluster heartbeat failed", member=self.id, cause=cause)
            if self.clock() >= self._deadline and not self._fenced_logged:
                self._fenced_logged = True
                log.error("sending stopped: the cluster heartbeat was not renewed in time", member=self.id)
            await asyncio.sleep(max(0.0, self.settings.heartbeat_interval - (self.clock() - began)))

    async def _rejoin(self) -> None:
        old_id, old_owner = self.id, self.owner
        self._deadline = self._leads_until = 0.0
        log.error(
            "the cluster heartbeat lapsed: ending what this member had leased and rejoining",
            member=old_id,
        )
        if self.on_lapse is not None:
            await self.on_lapse()
        # Gone already if the leader evicted it; if not, its leases end now rather than later.
        await self.db.write(functools.partial(store.evict, ids=[old_id]))
        await self.join()
        log.warning("rejoined the cluster", member=self.id, previous_member=old_id, previous_owner=old_owner)

    def _compare_settings(self) -> None:
        """Log, once each, the members whose shared settings differ from this one's."""
        mine = self.shared()
        for member in self.members:
            if member.id == self.id or not member.live or member.settings is None:
                continue
            differing = tuple(differences(mine, member.settings))
            if differing and (member.id, differing) not in self._mismatches:
                self._mismatches.add((member.id, differing))
                log.warning(
                    "cluster members' settings differ; every member must have the same",
                    member=self.id,
                    other_member=member.id,
                    other_owner=member.owner,
                    settings=list(differing),
                )

    async def leave(self) -> None:
        """Deregister (at shutdown): the leadership and the leases go to the others at once."""
        self._deadline = self._leads_until = 0.0
        if self.id:
            await self.db.write(store.leave, self.id, self.owner)
            log.info("left the cluster", member=self.id)


def _shape(members: Sequence[store.Member]) -> list[tuple[str, bool, bool, tuple[str, ...]]]:
    """What a change of shares depends on: who is there, live, sending, and through what."""
    return [(m.id, m.live, m.sends, m.transports) for m in members]
