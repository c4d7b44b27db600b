"""The named queries on the cluster's members and its leader's lease (PostgreSQL only).

Every lease time is the database's clock (`now()`), so the daemons' hosts need not agree on
the time. A member renews its lease only while it has not lapsed: once it has, the member must
rejoin under a new id, and whatever it leased under the old one is no longer its own.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from campaignd.store.schema import cluster_leader, cluster_members, messages

LEADER = "leader"
# A message lease set to this has run out for any clock: the leader's next sweep resolves it.
LONG_AGO = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Member:
    """A daemon registered in the cluster, as the database sees it now."""

    id: str
    owner: str
    hostname: str
    pid: int
    version: str
    sends: bool
    transports: tuple[str, ...]
    join_time: dt.datetime
    heartbeat_time: dt.datetime
    lease_expiry: dt.datetime
    live: bool  # its lease has not lapsed
    settings: Mapping[str, Any] | None = None  # what must match on every member; None: not written


@dataclass(frozen=True)
class Beat:
    """What one heartbeat found: whether the lease was renewed, and the cluster after it."""

    renewed: bool  # False: the lease had lapsed (or the member was evicted); rejoin
    leads: bool
    leader: str  # id of the member whose leader lease is current, "" when none
    members: tuple[Member, ...]
    evicted: tuple[str, ...]  # owners this heartbeat evicted (on the leader)


def _after(seconds: float) -> sa.ColumnElement[dt.datetime]:
    return sa.func.now() + sa.bindparam(None, dt.timedelta(seconds=seconds), type_=sa.Interval)


def live_owner(owner: str | sa.ColumnElement[str]) -> sa.ColumnElement[bool]:
    """True while `owner` is a member whose lease has not lapsed: only such an owner's marks,
    renewals and results are taken."""
    return sa.exists().where(cluster_members.c.owner == owner, cluster_members.c.lease_expiry > sa.func.now())


def register(
    conn: Connection,
    *,
    member_id: str,
    owner: str,
    hostname: str,
    pid: int,
    version: str,
    sends: bool,
    transports: Sequence[str],
    settings: Mapping[str, Any],
    lease: float,
) -> None:
    """Add a member with a fresh lease."""
    conn.execute(
        cluster_members.insert().values(
            id=member_id,
            owner=owner,
            hostname=hostname,
            pid=pid,
            version=version,
            sends=sends,
            transports=list(transports),
            settings=dict(settings),
            join_time=sa.func.now(),
            heartbeat_time=sa.func.now(),
            lease_expiry=_after(lease),
        )
    )


def heartbeat(
    conn: Connection,
    *,
    member_id: str,
    transports: Sequence[str],
    settings: Mapping[str, Any],
    lease: float,
    lead: bool = True,
) -> Beat:
    """Renew a member's lease unless it lapsed; with `lead`, renew or take the leader's lease (the
    leader then evicts the lapsed members); returns the members as they are now."""
    renewed = conn.execute(
        cluster_members.update()
        .where(cluster_members.c.id == member_id, cluster_members.c.lease_expiry > sa.func.now())
        .values(
            heartbeat_time=sa.func.now(),
            lease_expiry=_after(lease),
            transports=list(transports),
            settings=dict(settings),
        )
        .returning(cluster_members.c.id)
    ).first()
    if renewed is None or not lead:
        return Beat(renewed is not None, False, current_leader(conn), members(conn), ())
    claim = postgresql.insert(cluster_leader).values(
        name=LEADER, member=member_id, since=sa.func.now(), lease_expiry=_after(lease)
    )
    claim = claim.on_conflict_do_update(
        index_elements=[cluster_leader.c.name],
        set_={
            "member": claim.excluded.member,
            "lease_expiry": claim.excluded.lease_expiry,
            "since": sa.case(
                (cluster_leader.c.member == claim.excluded.member, cluster_leader.c.since),
                else_=claim.excluded.since,
            ),
        },
        # Renewed by its holder, or taken once it lapsed; never taken from a live leader.
        where=sa.or_(cluster_leader.c.member == member_id, cluster_leader.c.lease_expiry < sa.func.now()),
    )
    leads = conn.execute(claim.returning(cluster_leader.c.member)).first() is not None
    evicted = evict(conn) if leads else ()
    return Beat(True, leads, member_id if leads else current_leader(conn), members(conn), evicted)


def evict(conn: Connection, ids: Collection[str] | None = None) -> tuple[str, ...]:
    """Remove the lapsed members (of `ids`, or all), and end the message leases they held, so
    that the leader's next sweep resolves those messages as it does any expired lease. Returns
    the owners removed. A member that renewed meanwhile is not lapsed and stays."""
    where = [cluster_members.c.lease_expiry < sa.func.now()]
    if ids is not None:
        if not ids:
            return ()
        where.append(cluster_members.c.id.in_(list(ids)))
    removed = conn.execute(cluster_members.delete().where(*where).returning(cluster_members.c.owner))
    owners = tuple(r.owner for r in removed)
    release(conn, owners)
    return owners


def release(conn: Connection, owners: Collection[str]) -> None:
    """End the message leases of `owners` now (a member that left or was evicted)."""
    if owners:
        conn.execute(
            messages.update()
            .where(sa.text("messages.state = 'sending'"), messages.c.lease_owner.in_(list(owners)))
            .values(lease_expiry=LONG_AGO)
        )


def leave(conn: Connection, member_id: str, owner: str) -> None:
    """A member that stops: its row, its leader lease and its message leases go now, rather than
    when they lapse."""
    conn.execute(cluster_members.delete().where(cluster_members.c.id == member_id))
    conn.execute(cluster_leader.delete().where(cluster_leader.c.member == member_id))
    release(conn, [owner])


def current_leader(conn: Connection) -> str:
    """The id of the member whose leader lease is current, or ""."""
    found = conn.execute(
        sa.select(cluster_leader.c.member).where(
            cluster_leader.c.name == LEADER, cluster_leader.c.lease_expiry > sa.func.now()
        )
    ).scalar()
    return str(found) if found else ""


def members(conn: Connection) -> tuple[Member, ...]:
    """Every registered member, lapsed ones not yet evicted included, in id order."""
    live = (cluster_members.c.lease_expiry > sa.func.now()).label("live")
    rows = conn.execute(sa.select(cluster_members, live).order_by(cluster_members.c.id))
    return tuple(
        Member(
            r.id,
            r.owner,
            r.hostname,
            r.pid,
            r.version,
            r.sends,
            tuple(r.transports),
            r.join_time,
            r.heartbeat_time,
            r.lease_expiry,
            bool(r.live),
            r.settings,
        )
        for r in rows
    )


def senders(conn: Connection) -> dict[str, bool]:
    """Members whose engine sends, each with whether its lease is live."""
    live = (cluster_members.c.lease_expiry > sa.func.now()).label("live")
    rows = conn.execute(sa.select(cluster_members.c.id, live).where(cluster_members.c.sends.is_(True)))
    return {r.id: bool(r.live) for r in rows}
