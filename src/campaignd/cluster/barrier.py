"""Pause and Stop as a barrier for the whole cluster (SPEC §4.2, §9).

The member that got the call closes its own gates, then tells every member to close theirs
("hold") and waits until each live sending member has answered ("ack"), or has provably stopped
sending: its membership lease lapsed (it closed its gates itself before that, see membership.py),
in which case it is evicted in the same statement, so that it cannot renew and go on as it was.
Only then does the call change the state. Before the call returns, it asks once more: a member
that joined meanwhile may have read the channel as it was before the change, and must close its
gates too. Then it lets every member go ("release"); their next tick opens the gates of channels
still RUNNING. A held member that never hears the release lets go by itself after a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import psycopg

from campaignd import logs
from campaignd.errors import ApiError, Code
from campaignd.store import cluster as store
from campaignd.store.db import Database

if TYPE_CHECKING:
    from campaignd.cluster.bus import Bus
    from campaignd.cluster.membership import Membership
    from campaignd.engine.core import Engine, Key

log = logs.get("campaignd.cluster")
ASK_AGAIN = 1.0  # seconds between two tellings of a hold not yet acknowledged by every member
LOOK_AGAIN = 0.25  # seconds between two reads of the members while acknowledgements are awaited


class Barrier:
    """Holds a campaign's (or a channel's) gates on every member for the length of a call."""

    def __init__(self, bus: Bus, membership: Membership, database: Database, lease: float) -> None:
        self.bus = bus
        self.membership = membership
        self.db = database
        self.engine: Engine | None = None
        # A call waits at least this long for a member that neither answers nor lapses.
        self.timeout = 2 * lease + 5.0
        # A member held by another lets go by itself after this, should the release never come.
        self.hold_timeout = 5 * lease + 10.0
        self._acks: dict[str, set[str]] = {}
        self._answered: dict[str, asyncio.Event] = {}
        self._held: dict[str, tuple[Key, asyncio.TimerHandle]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, campaign_id: str, channel_id: str = "") -> AsyncIterator[None]:
        """Every member's gates for the channels named closed, from before the body runs until it
        has returned; ApiError UNAVAILABLE (and the body not run) when a member neither answers
        nor lapses within `timeout`."""
        hold_id = secrets.token_hex(8)
        message = {"k": "hold", "id": hold_id, "m": self.membership.id, "c": campaign_id, "ch": channel_id}
        self._acks[hold_id] = set()
        self._answered[hold_id] = asyncio.Event()
        local = (
            self.engine.hold(campaign_id, channel_id) if self.engine is not None else contextlib.nullcontext()
        )
        try:
            async with local:
                await self._reach_all(message, before=True)
                yield
                await self._reach_all(message, before=False)
        finally:
            self._acks.pop(hold_id, None)
            self._answered.pop(hold_id, None)
            self.bus.post({"k": "release", "id": hold_id, "m": self.membership.id})

    async def _reach_all(self, message: dict[str, Any], *, before: bool) -> None:
        hold_id = message["id"]
        acks, answered = self._acks[hold_id], self._answered[hold_id]
        began = time.monotonic()
        # Each member has its own lease: wait long enough for the longest one to lapse.
        leases = [(m.lease_expiry - m.heartbeat_time).total_seconds() for m in self.membership.members]
        timeout = max([self.timeout, *(2 * lease + 5.0 for lease in leases)])
        told = -ASK_AGAIN
        while True:
            if time.monotonic() - told >= ASK_AGAIN:
                told = time.monotonic()
                try:
                    await self.bus.send(message)
                except (psycopg.Error, OSError) as exc:
                    if not before:
                        return  # the state changed already; the others' next tick sees it
                    raise ApiError(
                        Code.UNAVAILABLE,
                        "STORAGE_UNAVAILABLE",
                        "the database cannot be used: the database connection was lost",
                    ) from exc
            senders = await self.db.read(store.senders)
            waiting = {m for m in senders if m != self.membership.id and m not in acks}
            lapsed = {m for m in waiting if not senders[m]}
            if lapsed:
                # A lapsed member fenced itself before its lease ran out; evicted, it cannot
                # renew and carry on, and its leases go to the others.
                gone = await self.db.write(functools.partial(store.evict, ids=lapsed))
                if gone:
                    log.warning("a member that did not answer a pause had stopped; evicted", owners=gone)
                    self.bus.post({"k": "members", "m": self.membership.id})
                continue
            if not waiting:
                return
            if time.monotonic() - began > timeout:
                log.error("members did not acknowledge a pause", members=sorted(waiting), before=before)
                if before:
                    raise ApiError(
                        Code.UNAVAILABLE,
                        "CLUSTER_UNREACHABLE",
                        f"{len(waiting)} other daemon(s) neither acknowledged closing their gates "
                        f"nor stopped within {timeout:g} s; nothing was changed",
                    )
                # The state changed already; their next tick closes their gates.
                return
            answered.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(answered.wait(), LOOK_AGAIN)

    def handle(self, message: dict[str, Any]) -> None:
        """A bus message about holds: close gates and answer, count an answer, or let go."""
        kind, hold_id, sender = message.get("k"), str(message.get("id", "")), message.get("m")
        if kind == "ack" and hold_id in self._acks and isinstance(sender, str):
            self._acks[hold_id].add(sender)
            self._answered[hold_id].set()
        elif kind == "hold" and sender != self.membership.id and self.engine is not None:
            if hold_id not in self._held:
                key = self.engine.close_gates(str(message.get("c", "")), str(message.get("ch", "")))
                timer = asyncio.get_running_loop().call_later(self.hold_timeout, self._let_go, hold_id)
                self._held[hold_id] = (key, timer)
            # Answered again for every telling: an earlier answer may have been missed.
            self.bus.post({"k": "ack", "id": hold_id, "m": self.membership.id})
        elif kind == "release":
            self._let_go(hold_id)

    def _let_go(self, hold_id: str) -> None:
        held = self._held.pop(hold_id, None)
        if held is not None and self.engine is not None:
            key, timer = held
            timer.cancel()
            self.engine.reopen(key)
