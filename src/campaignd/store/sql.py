"""Small SQL helpers the named queries share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection


def dialect_insert(conn: Connection, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT on `table` with the connection's dialect's ON CONFLICT clauses."""
    return insert_for(conn.dialect.name, table)


def insert_for(dialect: str, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT on `table` with the ON CONFLICT clauses of `dialect` (its name), for statements
    built once per dialect."""
    if dialect == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def insert_ignore(conn: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert rows, skipping those that collide with a unique key."""
    if not rows:
        return
    # rowcount is not reliable for an executemany with ON CONFLICT on every driver, so callers
    # count what existed before instead.
    conn.execute(dialect_insert(conn, table).on_conflict_do_nothing(), list(rows))


def among(column: sa.ColumnElement[Any], name: str, dialect: str) -> sa.ColumnElement[bool]:
    """`column` is one of the values of the list parameter `name`. On PostgreSQL the list is one
    array parameter (`= ANY`): the statement's text is the same whatever the list's length, and
    the driver binds one value instead of one per element, which for the hundreds of ids of a
    batch cost more than the query. Elsewhere an expanding IN."""
    if dialect == "postgresql":
        return column == sa.any_(sa.bindparam(name, type_=postgresql.ARRAY(column.type)))
    return column.in_(sa.bindparam(name, expanding=True))
