"""Database engine: SQLite (WAL) or PostgreSQL, and the thread pool that runs blocking SQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.pool import ConnectionPoolEntry

T = TypeVar("T")


class UTCDateTime(sa.TypeDecorator[dt.datetime]):
    """Timezone-aware UTC timestamps on both backends (SQLite stores them naive)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def create_engine(url: str, *, pool_size: int = 10) -> Engine:
    """An engine for `url`; SQLite gets WAL, foreign keys, a busy timeout and explicit BEGINs."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, pool_size=pool_size, max_overflow=pool_size)
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    return sa.create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def _sqlite_on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN itself, so writers can take the lock up front.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    # Temporary tables and the sorter's spill go to (unsynced, usually page-cached) temporary
    # files behind a bounded cache. Held in memory instead, recipient resolution's table of
    # contact ids and the sort of a million addresses would grow the daemon's RSS with the
    # audience, and measured no faster.
    cursor.execute("PRAGMA temp_store=FILE")
    cursor.close()


def _sqlite_on_begin(connection: Connection) -> None:
    # BEGIN IMMEDIATE for writers: a deferred transaction that later writes can fail with
    # "database is locked" instead of waiting, which would turn a race into an error.
    mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")


class Database:
    """Runs blocking SQL in worker threads so the event loop never waits on the database."""

    def __init__(self, engine: Engine, *, threads: int = 8) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._writer = (
            engine.execution_options(sqlite_begin="IMMEDIATE") if self.dialect == "sqlite" else engine
        )
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="campaignd-db")

    def write_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(connection, *args) in one write transaction, committed on return."""
        with self._writer.begin() as conn:
            return fn(conn, *args)

    def read_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(connection, *args) in one read transaction."""
        with self.engine.begin() as conn:
            return fn(conn, *args)

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """write_sync in a worker thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(self.write_sync, fn, *args))

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """read_sync in a worker thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(self.read_sync, fn, *args))

    def close(self) -> None:
        """Wait for running queries, then release every connection."""
        self._pool.shutdown(wait=True)
        self.engine.dispose()
