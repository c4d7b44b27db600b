"""The named queries on the keys the daemons of one database share."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from campaignd.store.schema import server_keys

PAGE_TOKENS = "page_tokens"


def get(conn: Connection, name: str) -> bytes:
    """The key called `name`, made by the migration that created the table."""
    value = conn.execute(sa.select(server_keys.c.value).where(server_keys.c.name == name)).scalar_one()
    return bytes.fromhex(value)
