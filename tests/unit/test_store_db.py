"""The database layer: transactions on SQLite, and the storage faults it recognises."""

from __future__ import annotations

import asyncio
import pathlib
import sqlite3
import threading
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from campaignd.store import db
from campaignd.store.db import Database, create_engine, storage_fault


def _short_busy_timeout(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute("PRAGMA busy_timeout=50")


def test_a_begin_that_finds_the_database_locked_is_a_storage_fault(tmp_path: pathlib.Path) -> None:
    """A write whose BEGIN IMMEDIATE cannot take the lock fails as SQLAlchemy's OperationalError
    that storage_fault names "database is locked", as a failing statement would."""
    path = tmp_path / "locked.db"
    engine = create_engine(f"sqlite:///{path}")
    event.listen(engine, "connect", _short_busy_timeout)
    database = Database(engine)
    database.write_sync(lambda conn: None)  # connected (and in WAL mode) before the lock is taken
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(sa.exc.OperationalError) as raised:
            database.write_sync(lambda conn: None)
        assert storage_fault(raised.value) == "database is locked"
        holder.execute("ROLLBACK")
        assert database.write_sync(lambda conn: conn.exec_driver_sql("SELECT 1").scalar_one()) == 1
    finally:
        holder.close()
        database.close()


def test_a_read_sees_one_snapshot_while_a_write_commits(tmp_path: pathlib.Path) -> None:
    """Two queries of one read transaction see the same rows even when a write commits between
    them (the read's BEGIN really opened a transaction)."""
    engine = create_engine(f"sqlite:///{tmp_path / 'snapshot.db'}")
    database = Database(engine)
    try:
        database.write_sync(lambda conn: conn.exec_driver_sql("CREATE TABLE t (n INTEGER)"))
        database.write_sync(lambda conn: conn.exec_driver_sql("INSERT INTO t VALUES (1)"))

        def read(conn: sa.Connection) -> tuple[int, int]:
            first = conn.exec_driver_sql("SELECT count(*) FROM t").scalar_one()
            database.write_sync(lambda other: other.exec_driver_sql("INSERT INTO t VALUES (2)"))
            return first, conn.exec_driver_sql("SELECT count(*) FROM t").scalar_one()

        assert database.read_sync(read) == (1, 1)
        assert (
            database.read_sync(lambda conn: conn.exec_driver_sql("SELECT count(*) FROM t").scalar_one()) == 2
        )
    finally:
        database.close()


def test_read_here_runs_on_the_calling_thread_and_sees_committed_writes(tmp_path: pathlib.Path) -> None:
    """On SQLite, read_here runs the read on the caller's thread (no worker thread), on a
    connection it keeps, and each read is a transaction of its own that sees what was committed."""
    database = Database(create_engine(f"sqlite:///{tmp_path / 'here.db'}"))
    try:
        database.write_sync(lambda conn: conn.exec_driver_sql("CREATE TABLE t (n INTEGER)"))

        def count(conn: sa.Connection) -> tuple[int, int]:
            return threading.get_ident(), conn.exec_driver_sql("SELECT count(*) FROM t").scalar_one()

        async def reads() -> list[tuple[int, int]]:
            first = await database.read_here(count)
            database.write_sync(lambda conn: conn.exec_driver_sql("INSERT INTO t VALUES (1)"))
            return [first, await database.read_here(count)]

        assert asyncio.run(reads()) == [(threading.get_ident(), 0), (threading.get_ident(), 1)]
        assert len(database._kept) == 1
    finally:
        database.close()


def test_read_here_hands_a_busy_read_to_a_worker_thread(tmp_path: pathlib.Path) -> None:
    """A read_here that finds SQLite busy is run again by a worker thread, and is no storage
    fault; another error is raised as it is."""
    database = Database(create_engine(f"sqlite:///{tmp_path / 'busy.db'}"))
    caller = threading.get_ident()

    def busy_here(conn: sa.Connection) -> int:
        if threading.get_ident() == caller:
            locked = sqlite3.OperationalError("database is locked")
            locked.sqlite_errorname = "SQLITE_BUSY"
            raise sa.exc.OperationalError("SELECT 1", None, locked)
        return threading.get_ident()

    def broken(conn: sa.Connection) -> int:
        raise ValueError("not a storage fault")

    try:
        assert asyncio.run(database.read_here(busy_here)) != caller
        assert database.fault is None
        with pytest.raises(ValueError, match="not a storage fault"):
            asyncio.run(database.read_here(broken))
    finally:
        database.close()


def test_an_sqlite_library_without_json_functions_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The JSON functions (segment filters, result writes) are checked at start, not at first use."""

    class NoJson:  # stands in for a library built without JSON1
        def execute(self, sql: str) -> NoJson:
            raise sqlite3.OperationalError("no such function: json_type")

        def close(self) -> None:
            pass

    monkeypatch.setattr(sqlite3, "connect", lambda *_: NoJson())
    with pytest.raises(db.UnsupportedSqliteError, match="without the JSON functions"):
        db.create_engine("sqlite:///unused.db")
    monkeypatch.undo()
    db.check_sqlite_library()  # this machine's library passes


def test_row_here_on_sqlite_sees_each_commit_of_another_process(tmp_path: pathlib.Path) -> None:
    """On SQLite, row_here reads outside any transaction: each read sees what another connection
    (a daemon beside its front process) committed before it, and leaves no transaction open
    that would pin an old snapshot or hold up a checkpoint."""
    path = tmp_path / "rows.db"
    database = Database(create_engine(f"sqlite:///{path}"))
    table = sa.table("t", sa.column("id"), sa.column("n"))
    statement = sa.select(table.c.n).where(table.c.id == sa.bindparam("id"))
    other = sqlite3.connect(path, isolation_level=None)
    try:
        database.write_sync(lambda conn: conn.exec_driver_sql("CREATE TABLE t (id TEXT, n INTEGER)"))

        async def reads() -> list[tuple[Any, ...] | None]:
            seen = [await database.row_here(statement, id="a")]
            for n in (1, 2):
                other.execute("DELETE FROM t")
                other.execute("INSERT INTO t VALUES ('a', ?)", (n,))
                seen.append(await database.row_here(statement, id="a"))
            return seen

        assert asyncio.run(reads()) == [None, (1,), (2,)]
        assert not database._kept[0].connection.driver_connection.in_transaction  # type: ignore[union-attr]
        # A writer elsewhere is not held up by a reader here.
        other.execute("BEGIN IMMEDIATE")
        other.execute("UPDATE t SET n = 3")
        other.execute("COMMIT")
        assert asyncio.run(database.row_here(statement, id="a")) == (3,)
    finally:
        other.close()
        database.close()
