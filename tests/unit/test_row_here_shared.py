"""`Database.row_here` on PostgreSQL: calls for one row that wait for the loop's connection share
one read, and that read starts after each of them was made (so none misses an earlier write)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from campaignd.store import db as db_module
from campaignd.store.db import Database, create_engine

metadata = sa.MetaData()
rows = sa.Table("rows", metadata, sa.Column("id", sa.Text, primary_key=True), sa.Column("n", sa.Integer))
ROW = sa.select(rows.c.n).where(rows.c.id == sa.bindparam("id"))


@pytest.fixture
def database(pg_url: str) -> Iterator[Database]:
    database = Database(create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1)))
    with database.engine.begin() as conn:
        metadata.create_all(conn)
        conn.execute(rows.insert(), [{"id": "a", "n": 1}, {"id": "b", "n": 10}])
    yield database
    database.close()


def _set(database: Database, row: str, n: int) -> None:
    with database.engine.begin() as conn:
        conn.execute(rows.update().where(rows.c.id == row).values(n=n))


class Held:
    """Counts the reads sent on the loop's connection; the first one, once answered, is held
    until `release` is set (a read in flight)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent = 0
        self.answered = asyncio.Event()
        self.release = asyncio.Event()
        fetch = db_module._fetch_one

        async def counting(conn: Any, sql: str, values: Any) -> Any:
            self.sent += 1
            row = await fetch(conn, sql, values)
            if self.sent == 1:
                self.answered.set()
                await self.release.wait()
            return row

        monkeypatch.setattr(db_module, "_fetch_one", counting)

    async def first_read(self, database: Database) -> asyncio.Future[tuple[object, ...] | None]:
        """A read of row "a" started, answered and held in flight."""
        first = asyncio.ensure_future(database.row_here(ROW, id="a"))
        await self.answered.wait()
        return first


def test_calls_waiting_for_the_connection_share_one_read_that_sees_earlier_writes(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        held = Held(monkeypatch)
        first = await held.first_read(database)
        # Committed after the first read ran, before the next calls: they must see it.
        await asyncio.to_thread(_set, database, "a", 2)
        waiting = [asyncio.ensure_future(database.row_here(ROW, id="a")) for _ in range(20)]
        other = asyncio.ensure_future(database.row_here(ROW, id="b"))
        await asyncio.sleep(0.05)
        held.release.set()
        assert await first == (1,)
        assert await asyncio.gather(*waiting) == [(2,)] * 20
        assert await other == (10,)
        # The first read, one for the twenty, one for the other row.
        assert held.sent == 3
        # Nothing left waiting to be joined: the next call reads again.
        await asyncio.to_thread(_set, database, "a", 3)
        assert await database.row_here(ROW, id="a") == (3,)
        assert held.sent == 4

    asyncio.run(scenario())


def test_a_cancelled_caller_leaves_the_shared_read_to_the_others(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        held = Held(monkeypatch)
        first = await held.first_read(database)
        joined = [asyncio.ensure_future(database.row_here(ROW, id="a")) for _ in range(3)]
        await asyncio.sleep(0.01)
        joined[0].cancel()
        held.release.set()
        assert await first == (1,)
        with pytest.raises(asyncio.CancelledError):
            await joined[0]
        assert await asyncio.gather(*joined[1:]) == [(1,), (1,)]
        assert held.sent == 2

    asyncio.run(scenario())


def test_a_row_asked_by_a_list_is_read_alone(database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Values that cannot key a shared read (a list) still read, each call on its own."""
    statement = sa.select(sa.func.sum(rows.c.n)).where(rows.c.id == sa.func.any(sa.bindparam("ids")))

    async def scenario() -> None:
        held = Held(monkeypatch)
        held.release.set()
        answers = await asyncio.gather(*(database.row_here(statement, ids=["a", "b"]) for _ in range(3)))
        assert answers == [(11,)] * 3
        assert held.sent == 3

    asyncio.run(scenario())
