"""Named queries on messages: leases, results, sweeps, operators' moves, reads, inbound events.

A lease marks messages SENDING with an owner and an expiry that the live owner renews; a lease
skips, as OPTED_OUT, messages whose address was suppressed or whose contact was deleted since the
launch. The owner marks a message `started` before handing it to its channel plugin, and gives
back the ones it did not start. SENDING messages whose lease ran out belonged to an owner that
died: those never started go back to QUEUED; whether the started ones went out is unknown, so
they fail as `ambiguous` and are never sent again, unless their channel chose to resend them
(SPEC §8). Every change of a message's state is one `lifecycle.MESSAGE_TRANSITIONS` allows
(`moving`, `check_moves`) and moves the channel's counters in the same transaction.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import itertools
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection

from campaignd.lifecycle import MessageState, message_sources
from campaignd.plugin import LABEL_LENGTH, PROVIDER_ID_LENGTH
from campaignd.store.cluster import live_owner
from campaignd.store.counts import add_counts
from campaignd.store.schema import (
    campaigns,
    channel_counts,
    channels,
    contacts,
    message_parts,
    messages,
    suppressions,
)
from campaignd.store.sql import among, insert_ignore

SENDING = "sending"
AMBIGUOUS = "ambiguous"  # the reason of a message whose send started and was never recorded


# Leased and Outcome are made for every message sent: slotted, not frozen (a frozen dataclass's
# __init__ sets each field through object.__setattr__, four times as slow).
@dataclass(slots=True)
class Leased:
    """A message leased for sending."""

    id: int
    address: str
    time_zone: str | None
    attempts: int
    contact: int | None


@dataclass(frozen=True)
class MessageRow:
    """A message as ListMessages shows it."""

    id: int
    channel_id: str
    contact_id: str | None  # None once the contact was deleted, or for a message without one
    address: str
    state: str
    attempts: int
    transport: str | None
    provider_id: str | None
    last_error: str | None
    reason: str | None
    outcome: str | None
    parts: int | None  # None: one, or none if never sent
    talk_time: float | None
    create_time: dt.datetime
    update_time: dt.datetime


def provider_key(provider_id: str) -> str:
    """A provider's id as it is stored and looked up (campaignd.plugin.PROVIDER_ID_LENGTH)."""
    return provider_id[:PROVIDER_ID_LENGTH]


@dataclass(slots=True)
class Outcome:
    """The result of one send: the new state and what the provider said."""

    id: int
    state: str  # sent, delivered, failed, retrying, queued (not started)
    provider_id: str = ""
    error: str = ""
    reason: str = ""
    next_attempt_time: dt.datetime | None = None
    transport: str | None = None  # the transport it went through, when its type uses transports
    parts: int = 1  # provider messages it took (SMS parts)
    attempted: bool = True  # False for one handed back unstarted (then queued, or cancelled by a stop)
    outcome: str = ""  # the channel's own word for it, e.g. a call's "answered" or "busy"
    talk_time: float | None = None  # seconds an answered call lasted
    part_ids: tuple[str, ...] = ()  # a SENT message's parts whose receipts are to come


# -- moves ----------------------------------------------------------------------------------------


class IllegalMoveError(RuntimeError):
    """A move of a message that `lifecycle.MESSAGE_TRANSITIONS` does not allow: a bug, never a
    client's doing; the transaction that tried it writes nothing."""


def check_moves(moves: Iterable[tuple[str, str]]) -> None:
    """Raise IllegalMoveError unless the lifecycle allows each (from state, to state) move.
    Staying in a state (a result that refines an `ambiguous` failure) is no move."""
    for frm, to in set(moves):
        if frm != to and MessageState(frm) not in message_sources(MessageState(to)):
            raise IllegalMoveError(f"a message cannot move from {frm} to {to}")


def moving(frm: Iterable[str], to: str) -> sa.ColumnElement[bool]:
    """The WHERE condition of an UPDATE that moves messages in states `frm` to `to`; raises
    IllegalMoveError, before anything is written, when the lifecycle forbids one of the moves."""
    states = sorted(set(frm))
    check_moves((state, to) for state in states)
    return messages.c.state == states[0] if len(states) == 1 else messages.c.state.in_(states)


# -- leases ---------------------------------------------------------------------------------------


@dataclass
class LeaseCursor:
    """Where a channel's next lease of QUEUED messages starts looking: just above the messages it
    took last. Leasing moves a message out of QUEUED, and on PostgreSQL the QUEUED range of the
    state index keeps an entry for every message moved out of it until a vacuum (and for as
    long as a transaction could still see it): a scan from the start walks, and checks in the
    table, every message the channel already leased, so each lease cost more than the one
    before (bench/lease.py). Messages back in QUEUED below the cursor (requeued after a
    transport failed or a lease expired, or after a restart) are found by a scan from the
    start when the one above the cursor comes up short. PostgreSQL only."""

    after: int = 0


def lease(
    conn: Connection,
    *,
    campaign_id: str,
    channel_id: str,
    owner: str,
    limit: int,
    now: dt.datetime,
    expiry: dt.datetime,
    zones: Sequence[str | None] | None = None,
    channel_type: str = "",
    cursor: LeaseCursor | None = None,
) -> list[Leased]:
    """Mark up to `limit` messages SENDING for `owner`: QUEUED ones first (from `cursor` on,
    then from the start), then RETRYING ones due now.

    With `zones`, only messages to recipients in those time zones (None: no zone) are taken. Of
    those taken, the ones whose address is now suppressed for `channel_type` (or for every type),
    or whose contact was deleted, become OPTED_OUT instead and are not returned. `cursor` moves
    to the last QUEUED message taken by the scan that found the last ones.
    """

    dialect = conn.dialect.name
    named = [z for z in zones if z is not None] if zones is not None else []
    zoning = "" if zones is None else ("named_or_none" if None in zones else "named")
    values = {
        "campaign": campaign_id,
        "channel": channel_id,
        "owner": owner,
        "expiry": expiry,
        "now": now,
        "zones": named,
    }

    def take(state: str, room: int, after: int = 0) -> list[Leased]:
        statement = _lease_statement(state, bool(after), zoning, dialect)
        rows = conn.execute(statement, {**values, "room": room, "after": after})
        return [Leased(*row) for row in rows]

    # SQLite removes an index entry when its row moves: it has no moved messages to skip, and
    # the cursor would only add a second scan whenever the first comes up short.
    if dialect != "postgresql":
        cursor = None
    after = cursor.after if cursor is not None else 0
    above = take("queued", limit, after) if after else []
    rest = take("queued", limit - len(above)) if len(above) < limit else []
    if cursor is not None and (above or rest):
        cursor.after = max(m.id for m in (rest or above))
    queued = above + rest
    retried = take("retrying", limit - len(queued)) if len(queued) < limit else []
    for state, taken in (("queued", queued), ("retrying", retried)):
        if taken:
            add_counts(conn, campaign_id, channel_id, {state: -len(taken), SENDING: len(taken)})
    leased = sorted(queued + retried, key=lambda m: m.id)
    if leased:
        leased = _opt_out(conn, campaign_id, channel_id, channel_type, leased, now)
    return leased


@functools.cache
def _lease_statement(state: str, above: bool, zoning: str, dialect: str) -> sa.Update:
    """The UPDATE … RETURNING of one lease query, built once per shape: a daemon leases many
    times a second, and building the statement cost more than SQLite took to run it.
    `zoning`: "" (every zone), "named" or "named_or_none" (the `zones` parameter, or no zone)."""
    where = [
        messages.c.campaign_id == sa.bindparam("campaign"),
        messages.c.channel_id == sa.bindparam("channel"),
        moving([state], SENDING),
    ]
    if above:
        where.append(messages.c.id > sa.bindparam("after"))
    if state == "retrying":
        where.append(messages.c.next_attempt_time <= sa.bindparam("now", type_=messages.c.update_time.type))
    if zoning:
        zone_match: sa.ColumnElement[bool] = messages.c.time_zone.in_(sa.bindparam("zones", expanding=True))
        if zoning == "named_or_none":
            zone_match = sa.or_(zone_match, messages.c.time_zone.is_(None))
        where.append(zone_match)
    candidates = sa.select(messages.c.id).where(*where).order_by(messages.c.id).limit(sa.bindparam("room"))
    if dialect == "postgresql":
        # Several daemons lease from one table: each takes rows no one else has locked.
        candidates = candidates.with_for_update(skip_locked=True)
    return (
        messages.update()
        .where(messages.c.id.in_(candidates.scalar_subquery()))
        .values(
            state=SENDING,
            lease_owner=sa.bindparam("owner"),
            lease_expiry=sa.bindparam("expiry", type_=messages.c.lease_expiry.type),
            update_time=sa.bindparam("now", type_=messages.c.update_time.type),
        )
        .returning(
            messages.c.id,
            messages.c.address,
            messages.c.time_zone,
            messages.c.attempts,
            messages.c.contact,
        )
    )


def _opt_out(
    conn: Connection,
    campaign_id: str,
    channel_id: str,
    channel_type: str,
    leased: list[Leased],
    now: dt.datetime,
) -> list[Leased]:
    """Move the just-leased messages that may no longer be sent to OPTED_OUT; returns the rest.

    Two indexed lookups per batch (the suppressions' unique (address, channel type) index and the
    contacts' primary key), so the check costs the same whatever the audience's size.
    """
    addresses = sorted({m.address for m in leased})
    suppressed = set(
        conn.execute(
            _suppressed_statement(conn.dialect.name), {"addresses": addresses, "types": ["", channel_type]}
        ).scalars()
    )
    wanted = sorted({m.contact for m in leased if m.contact is not None})
    existing = (
        set(conn.execute(_existing_statement(conn.dialect.name), {"ids": wanted}).scalars())
        if wanted
        else set()
    )
    reasons = {}
    for m in leased:
        if m.address in suppressed:
            reasons[m.id] = "suppressed"
        elif m.contact is not None and m.contact not in existing:
            reasons[m.id] = "contact_deleted"
    if not reasons:
        return leased
    for reason in sorted(set(reasons.values())):
        ids = [mid for mid, why in reasons.items() if why == reason]
        conn.execute(
            messages.update()
            .where(messages.c.id.in_(ids), moving([SENDING], "opted_out"))
            .values(state="opted_out", reason=reason, lease_owner=None, lease_expiry=None, update_time=now)
        )
    add_counts(conn, campaign_id, channel_id, {SENDING: -len(reasons), "opted_out": len(reasons)})
    return [m for m in leased if m.id not in reasons]


@functools.cache
def _suppressed_statement(dialect: str) -> sa.Select[Any]:
    """Built once per dialect: a lease checks every batch."""
    return sa.select(suppressions.c.address).where(
        among(suppressions.c.address, "addresses", dialect),
        suppressions.c.channel_type.in_(sa.bindparam("types", expanding=True)),
    )


@functools.cache
def _existing_statement(dialect: str) -> sa.Select[Any]:
    return sa.select(contacts.c.id).where(among(contacts.c.id, "ids", dialect))


def _owned(owner: str | sa.ColumnElement[str], live: bool) -> list[sa.ColumnElement[bool]]:
    """Leased by `owner`; with `live` (a cluster), only while its membership lease has not lapsed:
    a member that lapsed may have been taken for stopped, and its leases for someone else's."""
    owned = [messages.c.lease_owner == owner, messages.c.state == SENDING]
    return [*owned, live_owner(owner)] if live else owned


def mark_started(conn: Connection, *, owner: str, ids: Sequence[int], live: bool = False) -> set[int]:
    """Mark leased messages as started, before their send starts; returns those still leased by
    `owner` (only those may be sent: the others' lease expired and they went to another fate)."""
    if not ids:
        return set()
    statement = _mark_started_statement(live, conn.dialect.name)
    return set(conn.execute(statement, {"ids": list(ids), "owner": owner}).scalars())


@functools.cache
def _mark_started_statement(live: bool, dialect: str) -> sa.Update:
    """Built once per shape: a daemon marks its sends many times a second."""
    return (
        messages.update()
        .where(among(messages.c.id, "ids", dialect), *_owned(sa.bindparam("owner"), live))
        .values(started=True)
        .returning(messages.c.id)
    )


def renew(
    conn: Connection, *, owner: str, ids: Sequence[int], expiry: dt.datetime, live: bool = False
) -> None:
    """Extend the lease of messages still being sent."""
    for start in range(0, len(ids), 5000):
        conn.execute(
            messages.update()
            .where(messages.c.id.in_(ids[start : start + 5000]), *_owned(owner, live))
            .values(lease_expiry=expiry)
        )


# -- results --------------------------------------------------------------------------------------


def record(
    conn: Connection,
    campaign_id: str,
    channel_id: str,
    owner: str,
    outcomes: Sequence[Outcome],
    now: dt.datetime,
    *,
    live: bool = False,
) -> int:
    """Write the outcomes of leased messages that are still ours; returns how many were written.

    A message that another daemon's sweep failed as `ambiguous` while this one could not write
    (its lease ran out during a storage fault) takes the result this daemon kept for it. With
    `live` (a cluster), nothing is written for an owner whose membership lease lapsed: it rejoins
    under a new owner id, and what it leased before is refused.
    """
    ids = [o.id for o in outcomes]
    ours: dict[int, str] = {}
    dialect = conn.dialect.name
    query = _ours_statement(live, dialect)
    for start in range(0, len(ids), 5000):
        ours.update(
            (mid, state)
            for mid, state in conn.execute(query, {"ids": ids[start : start + 5000], "owner": owner})
        )
    # A kept result for an ambiguous message is written only if it is a real outcome.
    valid = [o for o in outcomes if o.id in ours and (ours[o.id] == SENDING or o.state != "queued")]
    if not valid:
        return 0
    check_moves((ours[o.id], o.state) for o in valid)
    started = [o for o in valid if o.state != "queued" and o.attempted]
    rows = [
        {
            "mid": o.id,
            "provider": o.provider_id or None,
            "new_state": o.state,
            "error": o.error or None,
            "why": o.reason or None,
            "next_at": o.next_attempt_time,
            "via": o.transport,
            # Only a send says how many parts it took; one part is the default and not stored.
            "n_parts": o.parts if o.state != "queued" and o.parts != 1 else None,
            "said": o.outcome or None,
            "talk": o.talk_time,
            # A message handed back unstarted was not attempted; an ambiguous one was counted.
            "tried": 0 if o.state == "queued" or not o.attempted or ours[o.id] != SENDING else 1,
        }
        for o in valid
    ]
    # Rows alike but for their id and provider id (a batch of SENT messages takes a few shapes)
    # are written with one statement per shape over their ids, or over (id, provider id) pairs:
    # per row, SQLAlchemy's handling of a dozen parameters cost more than the update itself. The
    # other rows are written one parameter set per row.
    shapes: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        shape = (row["provider"] is None, *[row[key] for key in _RECORD_SHAPE])
        shapes.setdefault(shape, []).append(row)
    singles = []
    for group in shapes.values():
        if len(group) < RECORD_ALIKE:
            singles += group
            continue
        values = {key: group[0][key] for key in _RECORD_SHAPE}
        for start in range(0, len(group), 2000):
            part = group[start : start + 2000]
            ids = [row["mid"] for row in part]
            if part[0]["provider"] is None:
                conn.execute(_record_alike(dialect), {**values, "now": now, "mids": ids})
            elif dialect == "postgresql":
                providers = [row["provider"] for row in part]
                conn.execute(_RECORD_GIVEN_PG, {**values, "now": now, "mids": ids, "providers": providers})
            else:
                given = json.dumps({row["mid"]: row["provider"] for row in part})
                conn.execute(_RECORD_GIVEN_SQLITE, {**values, "now": now, "given": given})
    if singles:
        conn.execute(_RECORD_ONE, [{**row, "now": now} for row in singles])
    in_parts = sorted(o.id for o in valid if o.state == "sent" and o.part_ids)
    if in_parts:
        # A message sent again (a retry of a failed one) starts over with its new parts.
        for start in range(0, len(in_parts), 2000):
            chunk = in_parts[start : start + 2000]
            conn.execute(message_parts.delete().where(message_parts.c.message_id.in_(chunk)))
        parts = [
            {"message_id": o.id, "part_id": part_id, "delivered": False}
            for o in valid
            if o.state == "sent"
            for part_id in o.part_ids
        ]
        insert_ignore(conn, message_parts, parts)
    deltas = Counter(o.state for o in valid)
    deltas.subtract(Counter(ours[o.id] for o in valid))
    add_counts(conn, campaign_id, channel_id, deltas)
    return len(started)


@functools.cache
def _ours_statement(live: bool, dialect: str) -> sa.Select[Any]:
    """The ids and states of the messages of `ids` whose results `owner` may write, built once
    per shape: results are written many times a second."""
    query = sa.select(messages.c.id, messages.c.state).where(
        among(messages.c.id, "ids", dialect),
        sa.or_(
            sa.and_(messages.c.state == SENDING, messages.c.lease_owner == sa.bindparam("owner")),
            sa.and_(messages.c.state == "failed", messages.c.reason == AMBIGUOUS),
        ),
    )
    if live:
        query = query.where(live_owner(sa.bindparam("owner")))
    return query.with_for_update() if dialect == "postgresql" else query


RECORD_ALIKE = 8  # rows of one shape that are written together
_RECORD_SHAPE = ("new_state", "error", "why", "next_at", "via", "n_parts", "said", "talk", "tried")


def _record_statement(provider: sa.ColumnElement[Any], where: sa.ColumnElement[bool]) -> sa.Update:
    return (
        messages.update()
        .where(where)
        .values(
            state=sa.bindparam("new_state"),
            provider_id=provider,
            last_error=sa.bindparam("error"),
            reason=sa.bindparam("why"),
            next_attempt_time=sa.bindparam("next_at"),
            transport=sa.func.coalesce(sa.bindparam("via", type_=sa.String), messages.c.transport),
            parts=sa.func.coalesce(sa.bindparam("n_parts", type_=sa.SmallInteger), messages.c.parts),
            outcome=sa.func.coalesce(sa.bindparam("said", type_=sa.String), messages.c.outcome),
            talk_time=sa.bindparam("talk", type_=sa.Float),
            attempts=messages.c.attempts + sa.bindparam("tried"),
            # NULL in the statement rather than a parameter of every row
            lease_owner=sa.null(),
            lease_expiry=sa.null(),
            started=sa.null(),
            update_time=sa.bindparam("now"),
        )
    )


# Built once: building them for every batch cost as much as executing them.
_RECORD_ONE = _record_statement(sa.bindparam("provider"), messages.c.id == sa.bindparam("mid"))


@functools.cache
def _record_alike(dialect: str) -> sa.Update:
    return _record_statement(sa.null(), among(messages.c.id, "mids", dialect))


# Rows alike but for their provider ids: one statement over (id, provider id) pairs, so that each
# message is written once (a second UPDATE for the provider ids wrote every row twice, and on
# PostgreSQL, where provider_id is indexed, each time with new entries in every index).
_GIVEN_PG = (
    sa.func.unnest(
        sa.bindparam("mids", type_=ARRAY(sa.BigInteger)),
        sa.bindparam("providers", type_=ARRAY(sa.String)),
    )
    .table_valued("mid", "provider")
    .render_derived(name="given")
)
_RECORD_GIVEN_PG = _record_statement(_GIVEN_PG.c.provider, messages.c.id == _GIVEN_PG.c.mid)
# SQLite: a JSON object of provider ids by message id.
_GIVEN_SQLITE = sa.func.json_each(sa.bindparam("given")).table_valued("key", "value").alias("given")
_RECORD_GIVEN_SQLITE = _record_statement(
    _GIVEN_SQLITE.c.value, messages.c.id == sa.cast(_GIVEN_SQLITE.c.key, sa.BigInteger)
)


# -- sweeps ---------------------------------------------------------------------------------------


def _move_matching(
    conn: Connection, where: Sequence[sa.ColumnElement[bool]], frm: str, to: str, values: Mapping[str, Any]
) -> dict[tuple[str, str], int]:
    """Move every message in state `frm` matching `where` to `to` in one statement, with the
    counters of each channel; returns how many moved per (campaign id, channel id)."""
    matching = [moving([frm], to), *where]
    found = conn.execute(
        sa.select(messages.c.campaign_id, messages.c.channel_id, sa.func.count())
        .where(*matching)
        .group_by(messages.c.campaign_id, messages.c.channel_id)
    ).all()
    if not found:
        return {}
    conn.execute(messages.update().where(*matching).values(state=to, **values))
    moved = {}
    for campaign_id, channel_id, n in found:
        add_counts(conn, campaign_id, channel_id, {frm: -int(n), to: int(n)})
        moved[(campaign_id, channel_id)] = int(n)
    return moved


def expire_leases(
    conn: Connection, now: dt.datetime, *, keep_owner: str = "", max_attempts: int = 3
) -> dict[tuple[str, str], dict[str, int]]:
    """Resolve SENDING messages whose lease ran out (their owner died), other than `keep_owner`'s:
    those whose send never started go back to QUEUED, unattempted; those whose send started fail
    as `ambiguous`, or, on a channel whose `ambiguous_sends` is "resend", wait as RETRYING, due
    now, while attempts remain. On a channel that was stopped or failed meanwhile, what would wait
    again is CANCELLED instead, as Stop or the failure cancelled the rest (reason `channel_failed`
    for a failed channel). Returns per (campaign id, channel id) how many went to each state."""
    expired = [messages.c.lease_expiry < now]
    if keep_owner:
        expired.append(messages.c.lease_owner != keep_owner)
    # Almost every tick finds nothing: ask the partial index of SENDING leases first (its WHERE
    # must appear literally for SQLite to use it), rather than run three grouped scans.
    probe = sa.select(messages.c.id).where(sa.text("messages.state = 'sending'"), *expired).limit(1)
    if conn.execute(probe).first() is None:
        return {}
    if conn.dialect.name == "postgresql":
        # Share-lock their campaigns, as a batch's results do, so that a Stop committing meanwhile
        # either is seen below or comes after and cancels what went back to QUEUED. (SQLite
        # writers already hold the database lock.) In the order of their ids: sweeps never wait
        # for each other in a cycle.
        conn.execute(
            sa.select(campaigns.c.id)
            .where(
                campaigns.c.id.in_(
                    sa.select(messages.c.campaign_id).where(messages.c.state == SENDING, *expired)
                )
            )
            .order_by(campaigns.c.id)
            .with_for_update(read=True)
        )

    def channels_where(*where: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
        return sa.tuple_(messages.c.campaign_id, messages.c.channel_id).in_(
            sa.select(channels.c.campaign_id, channels.c.channel_id).where(*where)
        )

    stopped = channels_where(channels.c.state == "stopped")
    failed = channels_where(channels.c.state == "failed")
    resend = channels_where(channels.c.ambiguous_sends == "resend")
    released = {"lease_owner": None, "lease_expiry": None, "started": None, "update_time": now}
    ambiguous = {
        "reason": AMBIGUOUS,
        "last_error": "the send started and its result was never recorded (the daemon stopped)",
        "attempts": messages.c.attempts + 1,
        **released,
    }
    unstarted = [*expired, sa.or_(messages.c.started.is_(None), messages.c.started.is_(False))]
    again = [*expired, messages.c.started.is_(True), resend, messages.c.attempts + 1 < max_attempts]
    # In order: each move takes what the ones before it left SENDING.
    moves: list[tuple[list[sa.ColumnElement[bool]], str, Mapping[str, Any]]] = [
        ([*unstarted, stopped], "cancelled", released),
        ([*unstarted, failed], "cancelled", {**released, "reason": "channel_failed"}),
        (unstarted, "queued", released),
        ([*again, stopped], "cancelled", ambiguous),
        ([*again, failed], "cancelled", {**ambiguous, "reason": "channel_failed"}),
        (again, "retrying", {**ambiguous, "next_attempt_time": now}),
        ([*expired, messages.c.started.is_(True)], "failed", ambiguous),
    ]
    moved: dict[tuple[str, str], dict[str, int]] = {}
    for where, to, values in moves:
        for key, n in _move_matching(conn, where, SENDING, to, values).items():
            counts = moved.setdefault(key, {})
            counts[to] = counts.get(to, 0) + n
    return moved


def ambiguous_failures(conn: Connection, campaign_id: str, channel_id: str) -> int:
    """FAILED messages of a channel whose send was ambiguous (the failure guard leaves them out)."""
    return int(
        conn.execute(
            sa.select(sa.func.count()).where(
                messages.c.campaign_id == campaign_id,
                messages.c.channel_id == channel_id,
                messages.c.state == "failed",
                messages.c.reason == AMBIGUOUS,
            )
        ).scalar_one()
    )


def assume_delivered(
    conn: Connection, cutoff: dt.datetime, channel_types: Sequence[str], now: dt.datetime
) -> dict[tuple[str, str], int]:
    """SENT messages of channels of these types with no receipt since `cutoff`: ASSUMED_DELIVERED."""
    if not channel_types:
        return {}
    of_types = sa.select(channels.c.campaign_id, channels.c.channel_id).where(
        channels.c.type.in_(list(channel_types))
    )
    stale = [
        messages.c.update_time < cutoff,
        sa.tuple_(messages.c.campaign_id, messages.c.channel_id).in_(of_types),
    ]
    return _move_matching(conn, stale, "sent", "assumed_delivered", {"update_time": now})


# -- operators ------------------------------------------------------------------------------------


def move_messages(
    conn: Connection,
    campaign_id: str,
    channel_id: str,
    frm: Sequence[str],
    to: str,
    now: dt.datetime,
    *,
    reason: str | None = None,
) -> int:
    """Move a channel's messages in states `frm` to `to` (stop, restart, retry, a failed channel),
    with `reason` when given; returns how many."""
    moved = 0
    for state in frm:
        n = conn.execute(
            messages.update()
            .where(
                messages.c.campaign_id == campaign_id,
                messages.c.channel_id == channel_id,
                moving([state], to),
            )
            .values(
                state=to,
                update_time=now,
                next_attempt_time=None,
                **({"reason": reason} if reason is not None else {}),
            )
        ).rowcount
        add_counts(conn, campaign_id, channel_id, {state: -n, to: n})
        moved += n
    return moved


def requeue_for_restart(
    conn: Connection, campaign_id: str, channel_id: str, channel_type: str, now: dt.datetime
) -> tuple[int, int]:
    """Restart a stopped channel: its CANCELLED messages that were never attempted queue again,
    except those whose address was suppressed since (for the type, or for every type), which
    become OPTED_OUT. Returns (queued, opted out)."""

    def mine(to: str) -> list[sa.ColumnElement[bool]]:
        return [
            messages.c.campaign_id == campaign_id,
            messages.c.channel_id == channel_id,
            moving(["cancelled"], to),
            messages.c.attempts == 0,
        ]

    suppressed = sa.exists().where(
        suppressions.c.address == messages.c.address,
        suppressions.c.channel_type.in_([channel_type, ""]),
    )
    opted_out = conn.execute(
        messages.update()
        .where(*mine("opted_out"), suppressed)
        .values(state="opted_out", reason="suppressed", update_time=now)
    ).rowcount
    queued = conn.execute(
        messages.update()
        .where(*mine("queued"))
        .values(state="queued", update_time=now, next_attempt_time=None)
    ).rowcount
    add_counts(
        conn,
        campaign_id,
        channel_id,
        {"cancelled": -(queued + opted_out), "queued": queued, "opted_out": opted_out},
    )
    return queued, opted_out


def delete_messages(conn: Connection, campaign_id: str) -> None:
    """Delete a campaign's messages, the parts kept of them, and their counters."""
    of_campaign = sa.select(messages.c.id).where(messages.c.campaign_id == campaign_id)
    conn.execute(message_parts.delete().where(message_parts.c.message_id.in_(of_campaign)))
    conn.execute(messages.delete().where(messages.c.campaign_id == campaign_id))
    conn.execute(channel_counts.delete().where(channel_counts.c.campaign_id == campaign_id))


# -- reads ----------------------------------------------------------------------------------------


def queued_zones(conn: Connection, campaign_id: str, channel_id: str) -> list[str | None]:
    """The distinct time zones of a channel's messages still waiting to be sent."""
    rows = conn.execute(
        sa.select(messages.c.time_zone)
        .where(
            messages.c.campaign_id == campaign_id,
            messages.c.channel_id == channel_id,
            messages.c.state.in_(["queued", "retrying"]),
        )
        .distinct()
    )
    return [r.time_zone for r in rows]


def sends_so_far(conn: Connection, campaign_id: str, channel_id: str, finished: Sequence[str]) -> int:
    """A channel's messages in the `finished` states plus its SENDING messages marked started
    (sends whose results are not written yet, a few batches' worth at most). One statement: on
    PostgreSQL each statement sees the database as it is when it starts, and a batch's results
    written between two would be counted in neither."""
    done = sa.select(sa.func.coalesce(sa.func.sum(channel_counts.c.n), 0)).where(
        channel_counts.c.campaign_id == campaign_id,
        channel_counts.c.channel_id == channel_id,
        channel_counts.c.state.in_(finished),
    )
    started = sa.select(sa.func.count()).where(
        messages.c.campaign_id == campaign_id,
        messages.c.channel_id == channel_id,
        messages.c.state == SENDING,
        messages.c.started.is_(True),
    )
    return int(conn.execute(sa.select(done.scalar_subquery() + started.scalar_subquery())).scalar_one())


def failure_reasons(conn: Connection, campaign_id: str) -> dict[tuple[str, str], int]:
    """FAILED messages per (channel id, reason)."""
    found: dict[tuple[str, str], int] = {}
    # One query per channel, so that (campaign, channel, state) leads the index to the failed
    # messages alone instead of a pass over the whole campaign.
    channel_ids = conn.execute(
        sa.select(channel_counts.c.channel_id)
        .where(channel_counts.c.campaign_id == campaign_id, channel_counts.c.state == "failed")
        .where(channel_counts.c.n > 0)
    ).scalars()
    for channel_id in list(channel_ids):
        rows = conn.execute(
            sa.select(messages.c.reason, sa.func.count())
            .where(
                messages.c.campaign_id == campaign_id,
                messages.c.channel_id == channel_id,
                messages.c.state == "failed",
            )
            .group_by(messages.c.reason)
        )
        found.update({(channel_id, r[0] or ""): int(r[1]) for r in rows})
    return found


_MESSAGE_COLUMNS = [f.name for f in dataclasses.fields(MessageRow) if f.name != "contact_id"]


def list_messages(
    conn: Connection,
    campaign_id: str,
    *,
    channel_ids: Sequence[str],
    states: Sequence[str],
    reason: str,
    after: int,
    limit: int,
) -> list[MessageRow]:
    """Messages of a campaign's channels `channel_ids` in row order after `after`, in `states`
    (every state when empty) and with `reason` (any when empty).

    Each (channel, state) is one range of the (campaign, channel, state, id) index: the page is
    the first `limit` ids of the first `limit` of each range, so it costs the same wherever it
    starts and however many messages the campaign has.
    """
    if not channel_ids:
        return []
    query = _listing(len(channel_ids), tuple(states or MessageState), bool(reason))
    values: dict[str, Any] = {"campaign_id": campaign_id, "after": after, "limit": limit, "reason": reason}
    values.update((f"channel_{n}", channel_id) for n, channel_id in enumerate(channel_ids))
    return [MessageRow(**r._mapping) for r in conn.execute(query, values)]


@functools.lru_cache(maxsize=64)
def _listing(channels: int, states: tuple[str, ...], reason: bool) -> sa.Select[Any]:
    """The statement of `list_messages` for a number of channels, states and whether a reason is
    given; built once, with the rest as bound parameters, since building its ranges costs more
    than running them."""
    shown = [messages.c[name] for name in _MESSAGE_COLUMNS]
    limit = sa.bindparam("limit", type_=sa.Integer)
    ranges = []
    for channel, state in itertools.product(range(channels), states):
        # The state as a range ordered by (state, id): with `state = ?` and an order by id alone,
        # PostgreSQL may walk the primary key and filter instead, reading every message of the
        # channels and states before this one while a launch's rows are new (no visibility map).
        where = [
            messages.c.campaign_id == sa.bindparam("campaign_id"),
            messages.c.channel_id == sa.bindparam(f"channel_{channel}"),
            sa.tuple_(messages.c.state, messages.c.id)
            > sa.tuple_(state, sa.bindparam("after", type_=messages.c.id.type)),
            messages.c.state <= state,
        ]
        if reason:
            where.append(messages.c.reason == sa.bindparam("reason"))
        ranges.append(
            sa.select(*shown, messages.c.contact)
            .where(*where)
            .order_by(messages.c.state, messages.c.id)
            .limit(limit)
        )
    # Each range reads its rows whole: joined back to messages by id, a page could be planned as
    # a merge join along the primary key while the table's statistics still say it is empty.
    # SQLite takes ORDER BY and LIMIT inside a compound SELECT only from subqueries.
    merged = sa.union_all(*(r.subquery().select() for r in ranges)).subquery()
    page = sa.select(merged).order_by(merged.c.id).limit(limit).subquery()
    return (
        sa.select(*(page.c[name] for name in _MESSAGE_COLUMNS), contacts.c.contact_id)
        .select_from(page.outerjoin(contacts, contacts.c.id == page.c.contact))
        .order_by(page.c.id)
    )


def transport_counts(conn: Connection, campaign_id: str) -> dict[tuple[str, str, str], int]:
    """Messages per (channel id, transport, state) of a campaign, for those sent through a transport."""
    rows = conn.execute(
        sa.select(messages.c.channel_id, messages.c.transport, messages.c.state, sa.func.count())
        .where(messages.c.campaign_id == campaign_id, messages.c.transport.is_not(None))
        .group_by(messages.c.channel_id, messages.c.transport, messages.c.state)
    )
    return {(r[0], r[1], r[2]): int(r[3]) for r in rows}


def part_counts(conn: Connection, campaign_id: str) -> dict[str, dict[str, int]]:
    """Provider messages (SMS parts) of the messages a provider accepted, per channel id and state."""
    rows = conn.execute(
        sa.select(messages.c.channel_id, messages.c.state, sa.func.sum(sa.func.coalesce(messages.c.parts, 1)))
        .where(messages.c.campaign_id == campaign_id, messages.c.provider_id.is_not(None))
        .group_by(messages.c.channel_id, messages.c.state)
    )
    counts: dict[str, dict[str, int]] = {}
    for channel_id, state, n in rows:
        counts.setdefault(channel_id, {})[state] = int(n)
    return counts


def outcome_counts(conn: Connection, campaign_id: str) -> dict[tuple[str, str], int]:
    """Messages per (channel id, outcome) of a campaign, for those with an outcome."""
    rows = conn.execute(
        sa.select(messages.c.channel_id, messages.c.outcome, sa.func.count())
        .where(messages.c.campaign_id == campaign_id, messages.c.outcome.is_not(None))
        .group_by(messages.c.channel_id, messages.c.outcome)
    )
    return {(r[0], r[1]): int(r[2]) for r in rows}


# -- inbound events -------------------------------------------------------------------------------


# Which states an event may move a message from, and to which state.
EVENT_MOVES: Mapping[str, tuple[tuple[str, ...], str]] = {
    "delivered": (("sent", "assumed_delivered"), "delivered"),
    "failed": (("sent", "assumed_delivered"), "failed"),
    # A bounce after a confirmed delivery suppresses the address but leaves the message DELIVERED.
    "bounced": (("sent", "assumed_delivered"), "failed"),
}


@dataclass(frozen=True)
class Event:
    """An inbound event about the messages a provider knows by `provider_id`."""

    provider_id: str
    kind: str
    detail: str = ""
    reason: str = ""


# Built once per dialect: receipts and engagement arrive many times a second.
@functools.cache
def _by_provider(dialect: str) -> sa.Select[Any]:
    return sa.select(
        messages.c.id,
        messages.c.campaign_id,
        messages.c.channel_id,
        messages.c.state,
        messages.c.provider_id,
    ).where(among(messages.c.provider_id, "providers", dialect))


@functools.cache
def _move(dialect: str) -> sa.Update:
    return (
        messages.update()
        .where(among(messages.c.id, "mids", dialect))
        .values(
            state=sa.bindparam("to"),
            reason=sa.bindparam("why"),
            last_error=sa.bindparam("error"),
            update_time=sa.bindparam("now"),
        )
    )


@functools.cache
def _engaged(dialect: str) -> sa.Update:
    return (
        messages.update()
        .where(among(messages.c.id, "mids", dialect))
        .values(outcome=sa.bindparam("kind"), update_time=sa.bindparam("now"))
    )


def apply_events(conn: Connection, events: Sequence[Event], now: dt.datetime) -> tuple[set[str], set[str]]:
    """Move the messages the events name as each event's kind says, in bulk; returns the campaign
    ids whose messages changed, and the provider ids no message has."""
    rows: dict[str, list[Any]] = {}
    ids = sorted({e.provider_id for e in events})
    dialect = conn.dialect.name
    for start in range(0, len(ids), 2000):
        found = conn.execute(_by_provider(dialect), {"providers": ids[start : start + 2000]})
        for row in found:
            rows.setdefault(row.provider_id, []).append(row)
    moves: dict[int, tuple[str, str | None, str | None]] = {}  # id -> (state, reason, last_error)
    steps: set[tuple[str, str]] = set()
    outcomes: dict[int, str] = {}
    states: dict[int, str] = {}
    deltas: dict[tuple[str, str], Counter[str]] = {}
    touched: set[str] = set()
    for event in events:
        frm, to = EVENT_MOVES.get(event.kind, ((), ""))
        for row in rows.get(event.provider_id, ()):
            state = states.get(row.id, row.state)
            if state in frm:
                moves[row.id] = (
                    to,
                    (event.reason or event.kind)[:LABEL_LENGTH] if to == "failed" else None,
                    event.detail or None,
                )
                states[row.id] = to
                steps.add((state, to))
                counter = deltas.setdefault((row.campaign_id, row.channel_id), Counter())
                counter[state] -= 1
                counter[to] += 1
            elif event.kind not in EVENT_MOVES:
                # Engagement (opened, clicked, complained, ...) is kept as the message's outcome.
                outcomes[row.id] = event.kind
            else:
                continue
            touched.add(row.campaign_id)
    check_moves(steps)
    # Moves alike (a batch of receipts: every one DELIVERED) are one statement over their ids,
    # rather than one set of parameters per message.
    alike: dict[tuple[str, str | None, str | None], list[int]] = {}
    for mid, move in moves.items():
        alike.setdefault(move, []).append(mid)
    for (to, why, error), mids in alike.items():
        for start in range(0, len(mids), 2000):
            conn.execute(
                _move(dialect),
                {"to": to, "why": why, "error": error, "now": now, "mids": mids[start : start + 2000]},
            )
    # Engagement alike (a batch of opens) likewise: one statement per kind.
    by_kind: dict[str, list[int]] = {}
    for mid, kind in outcomes.items():
        by_kind.setdefault(kind, []).append(mid)
    for kind, mids in by_kind.items():
        for start in range(0, len(mids), 2000):
            conn.execute(_engaged(dialect), {"kind": kind, "now": now, "mids": mids[start : start + 2000]})
    for (campaign_id, channel_id), counter in deltas.items():
        add_counts(conn, campaign_id, channel_id, counter)
    return touched, {e.provider_id for e in events if e.provider_id not in rows}


def part_receipts(conn: Connection, events: Sequence[Event]) -> tuple[list[Event], list[Event]]:
    """Receipts for single parts, each event's `provider_id` a part's id: the events about whole
    messages they make (DELIVERED once every kept part of a message is, its parts then
    forgotten; FAILED at a failed part), and the events whose part no message keeps, to apply as
    they are (a message of one part, or one sent before parts were kept)."""
    ids = sorted({e.provider_id for e in events})
    owner: dict[str, int] = {}  # part id -> the latest message that has it
    for start in range(0, len(ids), 2000):
        found = conn.execute(
            sa.select(message_parts.c.part_id, message_parts.c.message_id).where(
                message_parts.c.part_id.in_(ids[start : start + 2000])
            )
        )
        for part_id, message_id in found:
            owner[part_id] = max(message_id, owner.get(part_id, message_id))
    # The messages' provider ids, for the events about them. On PostgreSQL the messages are
    # locked as they are read: two members may take receipts for parts of one message at once,
    # and each would mark its part, see the other's still unmarked, and not deliver the message.
    # Locked first, as a write of results locks them before their parts, and in id order, the
    # second sees the first's mark once it may go on.
    mine = sorted(set(owner.values()))
    provider: dict[int, str] = {}
    for start in range(0, len(mine), 2000):
        query = (
            sa.select(messages.c.id, messages.c.provider_id)
            .where(messages.c.id.in_(mine[start : start + 2000]))
            .order_by(messages.c.id)
        )
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        provider.update((row.id, row.provider_id) for row in conn.execute(query))
    as_they_are: list[Event] = []
    delivered: list[dict[str, Any]] = []
    failed: dict[int, Event] = {}
    for event in events:
        message_id = owner.get(event.provider_id)
        if message_id is None:
            as_they_are.append(event)
        elif event.kind == "delivered":
            delivered.append({"mid": message_id, "pid": event.provider_id})
        elif event.kind in ("failed", "bounced"):
            failed.setdefault(message_id, event)
    if delivered:
        conn.execute(
            message_parts.update()
            .where(
                message_parts.c.message_id == sa.bindparam("mid"),
                message_parts.c.part_id == sa.bindparam("pid"),
            )
            .values(delivered=True),
            delivered,
        )
    waiting = sorted({d["mid"] for d in delivered} - set(failed))
    undelivered = sa.func.sum(sa.case((message_parts.c.delivered.is_(False), 1), else_=0))
    complete: list[int] = []
    for start in range(0, len(waiting), 2000):
        complete += conn.execute(
            sa.select(message_parts.c.message_id)
            .where(message_parts.c.message_id.in_(waiting[start : start + 2000]))
            .group_by(message_parts.c.message_id)
            .having(undelivered == 0)
        ).scalars()
    # A failed message's parts stay (until its campaign is deleted), so that the receipts of its
    # other parts still find it, and change nothing, rather than wait as unknown ones.
    for start in range(0, len(complete), 2000):
        chunk = complete[start : start + 2000]
        conn.execute(message_parts.delete().where(message_parts.c.message_id.in_(chunk)))
    whole = [Event(provider[m], "delivered") for m in complete if provider.get(m)]
    whole += [dataclasses.replace(e, provider_id=provider[m]) for m, e in failed.items() if provider.get(m)]
    return whole, as_they_are


# A reply that opts out answers the last message the number was sent on the channel type.
OPTED_OUT_FROM = ("sent", "delivered", "assumed_delivered")


def opt_out_latest(
    conn: Connection, address: str, channel_type: str, detail: str, now: dt.datetime
) -> tuple[str, str] | None:
    """Mark the latest SENT, DELIVERED or ASSUMED_DELIVERED message to `address` on a channel of
    `channel_type` in a campaign that is not archived OPTED_OUT; returns its (campaign id,
    channel id), or None when there is none."""
    of_type = sa.select(channels.c.campaign_id, channels.c.channel_id).where(channels.c.type == channel_type)
    live = sa.select(campaigns.c.id).where(campaigns.c.archived.is_(False))
    row = conn.execute(
        sa.select(messages.c.id, messages.c.campaign_id, messages.c.channel_id, messages.c.state)
        .where(
            messages.c.address == address,
            moving(OPTED_OUT_FROM, "opted_out"),
            # As the address index's condition is written (schema.py), for SQLite to use it.
            messages.c.state != "queued",
            sa.tuple_(messages.c.campaign_id, messages.c.channel_id).in_(of_type),
            messages.c.campaign_id.in_(live),
        )
        .order_by(messages.c.update_time.desc(), messages.c.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    conn.execute(
        messages.update()
        .where(messages.c.id == row.id, moving([row.state], "opted_out"))
        .values(state="opted_out", outcome="opted_out", last_error=detail or None, update_time=now)
    )
    add_counts(conn, row.campaign_id, row.channel_id, {row.state: -1, "opted_out": 1})
    return row.campaign_id, row.channel_id
