"""Named queries on contacts, lists, segments, suppressions, and recipient resolution.

Resolution is set-based: one INSERT … SELECT freezes a channel's recipients into message rows,
whatever the audience's size; no Python loop walks the contacts.
"""

from __future__ import annotations

import datetime as dt
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Transaction
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.selectable import Join

from campaignd.audience import filters
from campaignd.store.engine import add_counts, read_counts
from campaignd.store.schema import (
    channel_counts,
    contact_lists,
    contacts,
    list_members,
    messages,
    segments,
    suppressions,
)


@dataclass
class ContactRecord:
    """A stored contact."""

    pk: int
    contact_id: str
    email: str | None
    phone: str | None
    time_zone: str | None
    attributes: dict[str, Any]
    create_time: dt.datetime
    update_time: dt.datetime


def _contact(row: sa.Row[Any]) -> ContactRecord:
    return ContactRecord(
        pk=row.id,
        contact_id=row.contact_id,
        email=row.email,
        phone=row.phone,
        time_zone=row.time_zone,
        attributes=row.attributes,
        create_time=row.create_time,
        update_time=row.update_time,
    )


def insert_ignore(conn: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert rows, skipping those that collide with a unique key."""
    if not rows:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    # rowcount is not reliable for an executemany with ON CONFLICT on every driver, so callers
    # count what existed before instead.
    conn.execute(dialect.insert(table).on_conflict_do_nothing(), list(rows))


# -- contacts -----------------------------------------------------------------------------------


def get_contact(conn: Connection, contact_id: str) -> ContactRecord | None:
    """The contact with this id."""
    row = conn.execute(sa.select(contacts).where(contacts.c.contact_id == contact_id)).one_or_none()
    return None if row is None else _contact(row)


def contact_by_email(conn: Connection, email: str) -> ContactRecord | None:
    """The contact with this (normalised) email address."""
    row = conn.execute(sa.select(contacts).where(contacts.c.email == email)).one_or_none()
    return None if row is None else _contact(row)


def insert_contact(conn: Connection, values: Mapping[str, Any]) -> ContactRecord:
    """Store a new contact."""
    pk = conn.execute(contacts.insert().values(**values).returning(contacts.c.id)).scalar_one()
    return ContactRecord(pk=pk, **{k: values[k] for k in _CONTACT_FIELDS})


_CONTACT_FIELDS = ("contact_id", "email", "phone", "time_zone", "attributes", "create_time", "update_time")


def update_contact(conn: Connection, pk: int, values: Mapping[str, Any]) -> None:
    """Change a contact's fields."""
    conn.execute(contacts.update().where(contacts.c.id == pk).values(**values))


def delete_contact(conn: Connection, pk: int) -> None:
    """Delete a contact and its list memberships (frozen messages keep their copy of the address)."""
    conn.execute(list_members.delete().where(list_members.c.contact == pk))
    conn.execute(contacts.delete().where(contacts.c.id == pk))


def list_contacts(
    conn: Connection, where: sa.ColumnElement[bool] | None, list_id: str, *, after: int, limit: int
) -> list[ContactRecord]:
    """Contacts in creation order after row id `after`, matching `where` and in `list_id` when given."""
    query = sa.select(contacts).where(contacts.c.id > after)
    if where is not None:
        query = query.where(where)
    if list_id:
        query = query.where(
            contacts.c.id.in_(sa.select(list_members.c.contact).where(list_members.c.list_id == list_id))
        )
    return [_contact(r) for r in conn.execute(query.order_by(contacts.c.id).limit(limit))]


def existing_contacts(conn: Connection, column: str, keys: Iterable[str]) -> dict[str, ContactRecord]:
    """Contacts whose `column` (email or contact_id) is one of `keys`, by that key."""
    wanted = list(set(keys))
    found: dict[str, ContactRecord] = {}
    for start in range(0, len(wanted), 5000):
        chunk = wanted[start : start + 5000]
        for row in conn.execute(sa.select(contacts).where(contacts.c[column].in_(chunk))):
            record = _contact(row)
            found[getattr(record, column)] = record
    return found


def insert_contacts(conn: Connection, rows: Sequence[Mapping[str, Any]], now: dt.datetime) -> None:
    """Store new contacts created at `now`; each row has contact_id, email, phone, time_zone and
    attributes."""
    if not rows:
        return
    # One executemany without RETURNING: on SQLite an INSERT … RETURNING that keeps the rows'
    # order runs one statement per row, at three times the cost. The shared timestamp is
    # converted once rather than twice per row.
    stamp = _bound_once(conn, contacts.c.create_time, now)
    conn.execute(contacts.insert().values(create_time=stamp, update_time=stamp), list(rows))


def add_created_to_list(conn: Connection, list_id: str, contact_ids: Sequence[str]) -> None:
    """Add contacts created in this transaction to a list: they cannot be members yet."""
    for start in range(0, len(contact_ids), 5000):
        chunk = list(contact_ids[start : start + 5000])
        conn.execute(
            list_members.insert().from_select(
                ["list_id", "contact"],
                sa.select(sa.literal(list_id), contacts.c.id).where(contacts.c.contact_id.in_(chunk)),
            )
        )


class _Converted(sa.types.UserDefinedType[Any]):
    """A value already converted for the driver (a NullType would take the column's type back)."""

    cache_ok = True


def _bound_once(conn: Connection, column: sa.Column[Any], value: Any) -> sa.BindParameter[Any]:
    """`value` as the database driver takes it for `column`, bound without a per-row conversion."""
    process = column.type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
    return sa.bindparam(None, process(value) if process else value, type_=_Converted())


def clear_emails(conn: Connection, pks: Sequence[int]) -> None:
    """Unset the emails of some contacts (before they take others)."""
    conn.execute(contacts.update().where(contacts.c.id.in_(list(pks))).values(email=None))


def update_contacts(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Change many contacts; each row has `pk` and the new values of every field."""
    if rows:
        conn.execute(
            contacts.update()
            .where(contacts.c.id == sa.bindparam("pk"))
            .values(
                email=sa.bindparam("email"),
                phone=sa.bindparam("phone"),
                time_zone=sa.bindparam("time_zone"),
                attributes=sa.bindparam("attributes"),
                update_time=sa.bindparam("update_time"),
            ),
            list(rows),
        )


# -- lists --------------------------------------------------------------------------------------


def list_exists(conn: Connection, list_id: str) -> bool:
    """Whether the list exists."""
    return (
        conn.execute(sa.select(contact_lists.c.id).where(contact_lists.c.id == list_id)).first() is not None
    )


def insert_list(conn: Connection, list_id: str, display_name: str, now: dt.datetime) -> None:
    """Store a new list."""
    conn.execute(contact_lists.insert().values(id=list_id, display_name=display_name, create_time=now))


def list_lists(conn: Connection, *, after: str, limit: int) -> list[tuple[str, str, dt.datetime, int]]:
    """(id, display name, create time, member count) of lists ordered by id after `after`."""
    counts = (
        sa.select(list_members.c.list_id, sa.func.count().label("n"))
        .group_by(list_members.c.list_id)
        .subquery()
    )
    query = (
        sa.select(contact_lists, sa.func.coalesce(counts.c.n, 0).label("members"))
        .outerjoin(counts, counts.c.list_id == contact_lists.c.id)
        .where(contact_lists.c.id > after)
        .order_by(contact_lists.c.id)
        .limit(limit)
    )
    return [(r.id, r.display_name, r.create_time, r.members) for r in conn.execute(query)]


def delete_list(conn: Connection, list_id: str) -> bool:
    """Delete a list and its memberships; False when there was none."""
    conn.execute(list_members.delete().where(list_members.c.list_id == list_id))
    return conn.execute(contact_lists.delete().where(contact_lists.c.id == list_id)).rowcount == 1


def add_members(conn: Connection, list_id: str, contact_pks: Sequence[int]) -> int:
    """Add contacts to a list; returns how many were not members yet."""
    already = 0
    for start in range(0, len(contact_pks), 5000):
        chunk = list(contact_pks[start : start + 5000])
        already += int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(list_members)
                .where(list_members.c.list_id == list_id, list_members.c.contact.in_(chunk))
            ).scalar_one()
        )
    insert_ignore(conn, list_members, [{"list_id": list_id, "contact": pk} for pk in contact_pks])
    return len(contact_pks) - already


def remove_members(conn: Connection, list_id: str, contact_pks: Sequence[int]) -> int:
    """Remove contacts from a list; returns how many were members."""
    result = conn.execute(
        list_members.delete().where(
            list_members.c.list_id == list_id, list_members.c.contact.in_(contact_pks)
        )
    )
    return result.rowcount


# -- segments -----------------------------------------------------------------------------------


def get_segment(conn: Connection, segment_id: str) -> sa.Row[Any] | None:
    """The segment row."""
    return conn.execute(sa.select(segments).where(segments.c.id == segment_id)).one_or_none()


def insert_segment(conn: Connection, segment_id: str, display_name: str, text: str, now: dt.datetime) -> None:
    """Store a new segment."""
    conn.execute(
        segments.insert().values(id=segment_id, display_name=display_name, filter=text, create_time=now)
    )


def list_segments(conn: Connection, *, after: str, limit: int) -> list[sa.Row[Any]]:
    """Segments ordered by id after `after`."""
    return list(
        conn.execute(sa.select(segments).where(segments.c.id > after).order_by(segments.c.id).limit(limit))
    )


def delete_segment(conn: Connection, segment_id: str) -> bool:
    """Delete a segment; False when there was none."""
    return conn.execute(segments.delete().where(segments.c.id == segment_id)).rowcount == 1


# -- suppressions -------------------------------------------------------------------------------


def add_suppressions(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> int:
    """Add suppressions, leaving existing (address, channel type) pairs alone; returns how many were new."""
    pairs = [(r["address"], r["channel_type"]) for r in rows]
    already = 0
    for start in range(0, len(pairs), 2000):
        chunk = pairs[start : start + 2000]
        already += int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(suppressions)
                .where(sa.tuple_(suppressions.c.address, suppressions.c.channel_type).in_(chunk))
            ).scalar_one()
        )
    insert_ignore(conn, suppressions, rows)
    return len(pairs) - already


def remove_opt_out(conn: Connection, address: str, channel_type: str) -> int:
    """Remove the opt-out suppression of `address` on `channel_type` (an opt-in reply); other
    suppressions (a bounce, a manual one) stay. Returns how many were removed."""
    return conn.execute(
        suppressions.delete().where(
            suppressions.c.address == address,
            suppressions.c.channel_type == channel_type,
            suppressions.c.reason == "opted_out",
        )
    ).rowcount


def remove_suppression(conn: Connection, suppression_id: int) -> bool:
    """Remove one suppression; False when there was none."""
    return conn.execute(suppressions.delete().where(suppressions.c.id == suppression_id)).rowcount == 1


def list_suppressions(
    conn: Connection, *, address: str, channel_type: str | None, reason: str, before: int | None, limit: int
) -> list[sa.Row[Any]]:
    """Suppressions newest first, before row id `before`, with the given filters."""
    query = sa.select(suppressions)
    if address:
        query = query.where(suppressions.c.address == address)
    if channel_type is not None:
        query = query.where(suppressions.c.channel_type == channel_type)
    if reason:
        query = query.where(suppressions.c.reason == reason)
    if before is not None:
        query = query.where(suppressions.c.id < before)
    return list(conn.execute(query.order_by(suppressions.c.id.desc()).limit(limit)))


def suppressions_for(conn: Connection, address: str, channel_type: str) -> list[sa.Row[Any]]:
    """The suppressions that keep `address` from being contacted on `channel_type`."""
    return list(
        conn.execute(
            sa.select(suppressions)
            .where(suppressions.c.address == address, suppressions.c.channel_type.in_(["", channel_type]))
            .order_by(suppressions.c.id)
        )
    )


# -- recipient resolution -----------------------------------------------------------------------


@dataclass(frozen=True)
class Audience:
    """Who a channel targets: lists and segment filters to include and to exclude, or a
    remarketing source (an earlier channel's recipients with given outcomes)."""

    target_lists: Sequence[str] = ()
    target_filters: Sequence[filters.Filter] = ()
    exclude_lists: Sequence[str] = ()
    exclude_filters: Sequence[filters.Filter] = ()
    remarketing: tuple[str, str, Sequence[str]] | None = None


@dataclass(frozen=True)
class AudienceCounts:
    """How an audience resolves for one channel."""

    targeted: int
    excluded: int
    suppressed: int
    skipped: int
    queued: int


def _members(list_ids: Sequence[str], compiled: Sequence[sa.ColumnElement[bool]]) -> sa.Select[Any] | None:
    parts: list[sa.Select[Any]] = []
    if list_ids:
        parts.append(
            sa.select(list_members.c.contact.label("id")).where(list_members.c.list_id.in_(list_ids))
        )
    parts.extend(sa.select(contacts.c.id.label("id")).where(where) for where in compiled)
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    union = sa.union(*parts).subquery()
    return sa.select(union.c.id)


def _targets(audience: Audience) -> sa.Select[Any] | None:
    if audience.remarketing is not None:
        campaign_id, channel_id, outcomes = audience.remarketing
        return sa.select(messages.c.contact.label("id")).where(
            messages.c.campaign_id == campaign_id,
            messages.c.channel_id == channel_id,
            messages.c.contact.is_not(None),
            sa.or_(messages.c.state.in_(list(outcomes)), messages.c.outcome.in_(list(outcomes))),
        )
    return _members(audience.target_lists, [filters.compile(f, contacts) for f in audience.target_filters])


class _ScanFirst(Join):
    """An inner join whose left side SQLite must scan, looking up the right side by its key.

    Left to itself, SQLite's planner prefers to walk an index of the right side in the order a
    GROUP BY or ORDER BY asks for, which costs a random row lookup per contact; reading the
    temporary table in order and sorting what survives is about twice as fast at a million
    contacts. CROSS JOIN is SQLite's documented way to fix the order of the loops; other
    databases get a plain JOIN.
    """

    inherit_cache = True


@compiles(_ScanFirst, "sqlite")
def _compile_scan_first(element: _ScanFirst, compiler: SQLCompiler, **kw: Any) -> str:
    # The usual rendering, `<left> JOIN <right> ON <condition>`, with its bookkeeping; the left
    # side is a table, so the first JOIN is this one.
    rendered = compiler.visit_join(element, **kw)  # type: ignore[no-untyped-call]  # untyped in SQLAlchemy
    left, rest = str(rendered).split(" JOIN ", 1)
    return f"{left} CROSS JOIN {rest}"


# The contacts an audience resolves to: a per-connection temporary table, made anew for each
# resolution. A launch resolves its channels one by one in one transaction, usually for the same
# audience: the table is then filled once, and conn.info remembers for which transaction and
# audience.
_resolved = sa.Table("campaignd_resolved", sa.MetaData(), sa.Column("id", sa.BigInteger, primary_key=True))
_FILLED = "campaignd_resolved"


@dataclass(frozen=True)
class _Filled:
    """What the temporary table holds: an audience, as resolved in a transaction."""

    transaction: weakref.ref[Transaction]
    audience: Audience
    targeted: int
    excluded: int


def _resolve_into_temp(conn: Connection, audience: Audience) -> tuple[int, int]:
    """Fill the temporary table with targets minus exclusions; returns (targeted, excluded)."""
    transaction = conn.get_transaction()
    filled = conn.info.get(_FILLED)
    # A remarketing audience reads messages, which an earlier channel of the same launch may
    # have just written: it is evaluated every time.
    if (
        isinstance(filled, _Filled)
        and transaction is not None
        and filled.transaction() is transaction
        and filled.audience == audience
        and audience.remarketing is None
    ):
        return filled.targeted, filled.excluded
    conn.info.pop(_FILLED, None)
    # A new table rather than an emptied one: SQLite would first copy each page of the old
    # contents into the temporary database's rollback journal.
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("DROP TABLE IF EXISTS pg_temp.campaignd_resolved")
        # No primary key: the rows are distinct by construction, every later use is a hash
        # join, and an index would cost more to fill than it saves.
        conn.exec_driver_sql("CREATE TEMP TABLE campaignd_resolved (id bigint NOT NULL) ON COMMIT DROP")
    else:
        # The contact id is the table's rowid: the joins to contacts look rows up by it.
        conn.exec_driver_sql("DROP TABLE IF EXISTS temp.campaignd_resolved")
        conn.exec_driver_sql("CREATE TEMP TABLE campaignd_resolved (id INTEGER PRIMARY KEY)")
    targets = _targets(audience)
    if targets is None:
        return 0, 0
    # A contact can be in several target lists and segments: keep it once.
    targeted = _changed(
        conn, _resolved.insert().from_select(["id"], sa.select(targets.subquery().c[0]).distinct())
    )
    excluded_ids = _members(
        audience.exclude_lists, [filters.compile(f, contacts) for f in audience.exclude_filters]
    )
    excluded = 0
    if targeted and excluded_ids is not None:
        excluded = _changed(conn, _resolved.delete().where(_resolved.c.id.in_(excluded_ids)))
    if conn.dialect.name == "postgresql":
        # Planner statistics for the joins that follow; a new table has none.
        conn.exec_driver_sql("ANALYZE campaignd_resolved")
    if transaction is not None and audience.remarketing is None:
        conn.info[_FILLED] = _Filled(weakref.ref(transaction), audience, targeted, excluded)
    return targeted, excluded


def _changed(conn: Connection, statement: sa.Executable) -> int:
    """Run an INSERT or DELETE; returns how many rows it inserted or deleted."""
    # Exact for one statement on both sqlite3 and psycopg, INSERT … SELECT included. SQLAlchemy
    # keeps it for UPDATE and DELETE only unless asked: psycopg forgets it when the cursor closes.
    count = conn.execute(statement, execution_options={"preserve_rowcount": True}).rowcount
    if count < 0:
        raise RuntimeError("the database driver reported no row count")
    return count


def _not_suppressed(
    conn: Connection, address: sa.ColumnElement[Any], channel_type: str
) -> sa.ColumnElement[bool]:
    """`address` (not NULL) is not suppressed for `channel_type`."""
    applies = suppressions.c.channel_type.in_(["", channel_type])
    if conn.dialect.name == "postgresql":
        # An anti-join; NOT IN would fall back to a scan of the suppressions per contact once
        # they outgrow work_mem.
        return ~sa.exists().where(suppressions.c.address == address, applies)
    # SQLite builds the subquery's set once and probes it per contact, which is cheaper than
    # the two index searches per contact of a correlated NOT EXISTS.
    return address.not_in(sa.select(suppressions.c.address).where(applies))


def resolve(
    conn: Connection,
    audience: Audience,
    *,
    address: str,
    channel_type: str,
    freeze: tuple[str, str, dt.datetime] | None = None,
) -> AudienceCounts:
    """Count (and with `freeze` = (campaign id, channel id, now), write as QUEUED messages) the
    recipients of one channel: targets minus exclusions minus suppressions, one per address.

    The audience (lists and segment filters) is evaluated once per transaction, into a
    temporary table; the skipped and suppressed contacts are counted from the narrow side of
    each question, and the messages come from one INSERT … SELECT.
    """
    targeted, excluded = _resolve_into_temp(conn, audience)
    if targeted == excluded:
        return AudienceCounts(targeted, excluded, 0, 0, 0)
    column = contacts.c.email if address == "email" else contacts.c.phone
    skipped = int(
        conn.execute(
            sa.select(sa.func.count())
            .select_from(_resolved.join(contacts, contacts.c.id == _resolved.c.id))
            .where(column.is_(None))
        ).scalar_one()
    )
    # From the suppressions to the contacts with those addresses to the audience: a few
    # index searches per suppression, rather than a test per contact.
    suppressed_contacts = sa.select(contacts.c.id).where(
        column.in_(
            sa.select(suppressions.c.address).where(suppressions.c.channel_type.in_(["", channel_type]))
        )
    )
    suppressed = int(
        conn.execute(
            sa.select(sa.func.count()).select_from(_resolved).where(_resolved.c.id.in_(suppressed_contacts))
        ).scalar_one()
    )
    remaining = targeted - excluded
    sendable = sa.and_(column.is_not(None), _not_suppressed(conn, column, channel_type))
    joined = _ScanFirst(_resolved, contacts, contacts.c.id == _resolved.c.id)
    if freeze is None:
        if address == "email":
            # Email addresses are unique among contacts: every sendable contact is its own recipient.
            queued = remaining - skipped - suppressed
        else:
            numbers = sa.select(column).select_from(joined).where(sendable).group_by(column).subquery()
            queued = int(conn.execute(sa.select(sa.func.count()).select_from(numbers)).scalar_one())
        return AudienceCounts(targeted, excluded, suppressed, skipped, queued)
    campaign_id, channel_id, now = freeze
    fixed = (
        sa.literal(campaign_id),
        sa.literal(channel_id),
        sa.literal("queued"),
        sa.literal(0),
        sa.literal(now, messages.c.create_time.type),
        sa.literal(now, messages.c.update_time.type),
    )
    # Rows go in in address order, so that the unique (campaign, channel, address) index grows at
    # one end instead of at a random place per row, which at a million rows no longer fits the
    # page cache. Message ids, and so the order of sending, follow the address.
    rows: sa.Select[Any]
    if address == "email":
        # Email addresses are unique among contacts: every sendable contact is its own recipient.
        rows = sa.select(contacts.c.id, column, contacts.c.time_zone, *fixed).order_by(column)
    elif conn.dialect.name == "postgresql":
        # One message per number: the contact with the lowest row id stands for the others.
        rows = (
            sa.select(contacts.c.id, column, contacts.c.time_zone, *fixed)
            .distinct(column)
            .order_by(column, contacts.c.id)
        )
    else:
        # SQLite takes the other columns of a min() aggregate from the row that holds the minimum.
        rows = (
            sa.select(sa.func.min(contacts.c.id), column, contacts.c.time_zone, *fixed)
            .group_by(column)
            .order_by(column)
        )
    columns = ["contact", "address", "time_zone", "campaign_id", "channel_id", "state", "attempts"]
    queued = _changed(
        conn,
        messages.insert().from_select(
            [*columns, "create_time", "update_time"], rows.select_from(joined).where(sendable)
        ),
    )
    add_counts(conn, campaign_id, channel_id, {"queued": queued})
    return AudienceCounts(targeted, excluded, suppressed, skipped, queued)


# -- messages -----------------------------------------------------------------------------------


def message_counts(conn: Connection, campaign_id: str) -> dict[tuple[str, str], int]:
    """Messages per (channel id, state) of a campaign."""
    return read_counts(conn, campaign_id)


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


def list_messages(
    conn: Connection,
    campaign_id: str,
    *,
    channel_id: str,
    states: Sequence[str],
    reason: str,
    after: int,
    limit: int,
) -> list[sa.Row[Any]]:
    """Messages of a campaign in row order after `after`, with the given filters."""
    query = sa.select(messages, contacts.c.contact_id).outerjoin(
        contacts, contacts.c.id == messages.c.contact
    )
    query = query.where(messages.c.campaign_id == campaign_id, messages.c.id > after)
    if channel_id:
        query = query.where(messages.c.channel_id == channel_id)
    if states:
        query = query.where(messages.c.state.in_(list(states)))
    if reason:
        query = query.where(messages.c.reason == reason)
    return list(conn.execute(query.order_by(messages.c.id).limit(limit)))


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
                messages.c.state == state,
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
    mine = [
        messages.c.campaign_id == campaign_id,
        messages.c.channel_id == channel_id,
        messages.c.state == "cancelled",
        messages.c.attempts == 0,
    ]
    suppressed = sa.exists().where(
        suppressions.c.address == messages.c.address,
        suppressions.c.channel_type.in_([channel_type, ""]),
    )
    opted_out = conn.execute(
        messages.update()
        .where(*mine, suppressed)
        .values(state="opted_out", reason="suppressed", update_time=now)
    ).rowcount
    queued = conn.execute(
        messages.update().where(*mine).values(state="queued", update_time=now, next_attempt_time=None)
    ).rowcount
    add_counts(
        conn,
        campaign_id,
        channel_id,
        {"cancelled": -(queued + opted_out), "queued": queued, "opted_out": opted_out},
    )
    return queued, opted_out


def delete_messages(conn: Connection, campaign_id: str) -> None:
    """Delete a campaign's messages and their counters."""
    conn.execute(messages.delete().where(messages.c.campaign_id == campaign_id))
    conn.execute(channel_counts.delete().where(channel_counts.c.campaign_id == campaign_id))
