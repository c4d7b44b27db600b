"""Named queries on contact lists and their members."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from campaignd.store.schema import contact_lists, contacts, list_members
from campaignd.store.sql import insert_ignore


def list_exists(conn: Connection, list_id: str) -> bool:
    """Whether the list exists."""
    return (
        conn.execute(sa.select(contact_lists.c.id).where(contact_lists.c.id == list_id)).first() is not None
    )


def insert_list(conn: Connection, list_id: str, display_name: str, now: dt.datetime) -> None:
    """Store a new list."""
    conn.execute(contact_lists.insert().values(id=list_id, display_name=display_name, create_time=now))


class ListRow(NamedTuple):
    """A stored list with its member count."""

    id: str
    display_name: str
    create_time: dt.datetime
    members: int


def list_lists(conn: Connection, *, after: str, limit: int) -> list[ListRow]:
    """Lists ordered by id after `after`, with their member counts."""
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
    return [ListRow(r.id, r.display_name, r.create_time, int(r.members)) for r in conn.execute(query)]


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
