"""Named queries on contacts: one at a time, in bulk for an import, and by row id or address for
rendering."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from campaignd.store.filters import Filter, compile
from campaignd.store.schema import contacts, list_members
from campaignd.store.sql import among


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
    conn: Connection, where: Filter | None, list_id: str, *, after: int, limit: int
) -> list[ContactRecord]:
    """Contacts in creation order after row id `after`, matching `where` and in `list_id` when given."""
    query = sa.select(contacts).where(contacts.c.id > after)
    if where is not None:
        query = query.where(compile(where, contacts))
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


def contact_fields(conn: Connection, pks: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Contacts by row id, as dicts for rendering."""
    found: dict[int, dict[str, Any]] = {}
    for start in range(0, len(pks), 5000):
        rows = conn.execute(_fields_statement(conn.dialect.name), {"pks": pks[start : start + 5000]})
        for pk, contact_id, email, phone, time_zone, attributes in rows:
            found[pk] = {
                "contact_id": contact_id,
                "email": email,
                "phone": phone,
                "time_zone": time_zone,
                "attributes": attributes,
            }
    return found


# Built once per dialect, and only the columns rendering uses: the engine reads a batch's
# contacts before every send, and converting the two timestamps of each row cost more than the
# rest of it.
@functools.cache
def _fields_statement(dialect: str) -> sa.Select[Any]:
    return sa.select(
        contacts.c.id,
        contacts.c.contact_id,
        contacts.c.email,
        contacts.c.phone,
        contacts.c.time_zone,
        contacts.c.attributes,
    ).where(among(contacts.c.id, "pks", dialect))


def contacts_by_address(conn: Connection, kind: str, addresses: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Contacts by their email address or phone number (`kind`), as dicts for rendering."""
    column = contacts.c.email if kind == "email" else contacts.c.phone
    rows = conn.execute(sa.select(contacts.c.id, column.label("key")).where(column.in_(list(addresses))))
    by_pk = {r.id: r.key for r in rows}
    return {by_pk[pk]: fields for pk, fields in contact_fields(conn, list(by_pk)).items()}
