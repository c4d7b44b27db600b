"""Database engine: SQLite (WAL) or PostgreSQL, the thread pool that runs blocking SQL, and the
storage faults (disk full, I/O errors, a lost connection) it notices."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import datetime as dt
import functools
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.pool import ConnectionPoolEntry

from campaignd import logs, loops

T = TypeVar("T")
log = logs.get("campaignd.store")
PROBE_INTERVAL = (0.25, 5.0)  # seconds between probes of a faulty database: first, at most
# How long `read_here` lets SQLite wait for a lock before it hands the read to a worker thread.
HERE_BUSY_MS = 50
# Seconds `row_here` waits for PostgreSQL on the event loop's own connection (to connect, to
# answer) before it hands the read to a worker thread.
HERE_CONNECT_TIMEOUT = 2.0
HERE_TIMEOUT = 1.0


@dataclasses.dataclass(frozen=True)
class Fault:
    """The database cannot be used: why (a few words a client may see), and since when."""

    cause: str
    since: float  # time.monotonic()
    detail: str = ""  # the driver's message, for the log only


Listener = Callable[[Fault | None, Fault | None], None]


def storage_fault(exc: BaseException) -> str | None:
    """The cause in a few words when `exc` says the database cannot be used now (disk full, an
    I/O error, a lost connection, ...), which waiting may cure; None for any other error."""
    if not isinstance(exc, sa.exc.DBAPIError):
        return None
    orig = exc.orig
    sqlite_name = getattr(orig, "sqlite_errorname", None)
    if isinstance(sqlite_name, str):
        if sqlite_name.startswith("SQLITE_FULL"):
            return "database or disk is full"
        if sqlite_name.startswith("SQLITE_IOERR"):
            return "disk I/O error"
        if sqlite_name.startswith("SQLITE_READONLY"):
            return "the database is read-only"
        if sqlite_name.startswith("SQLITE_CANTOPEN"):
            return "unable to open database file"
        if sqlite_name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return "database is locked"
        return None
    state = getattr(orig, "sqlstate", None)
    if isinstance(state, str):
        if state == "53100":
            return "the database server's disk is full"
        if state.startswith("53"):
            return "the database server is out of resources"
        if state.startswith("58"):
            return "disk I/O error on the database server"
        if state == "25006":
            return "the database is read-only"
        # 25P03: the server ended a session left idle in a transaction (a frozen daemon's).
        if state.startswith(("08", "57P")) or state == "25P03":
            return "the database connection was lost"
        return None
    if exc.connection_invalidated or isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError)):
        # psycopg without an SQLSTATE: the server could not be reached or went away.
        return "the database connection was lost"
    return None


def _probe(conn: Connection) -> None:
    # A write that really writes a page (one row, always there), so a full disk shows.
    conn.execute(sa.text("UPDATE alembic_version SET version_num = version_num"))


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


def create_engine(url: str, *, pool_size: int = 10, idle_in_transaction: float | None = None) -> Engine:
    """An engine for `url`; SQLite gets WAL, foreign keys, a busy timeout and explicit BEGINs.

    On PostgreSQL, `idle_in_transaction` (seconds) has the server end a session that sits in an
    open transaction that long: the session of a process that froze mid-transaction, whose row
    locks would otherwise hold every other daemon that touches those rows until it wakes."""
    if url.startswith("sqlite"):
        check_sqlite_library()
        engine = sa.create_engine(url, pool_size=pool_size, max_overflow=pool_size)
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    connect_args = {}
    if idle_in_transaction is not None:
        milliseconds = max(1000, round(idle_in_transaction * 1000))
        connect_args["options"] = f"-c idle_in_transaction_session_timeout={milliseconds}"
    return sa.create_engine(
        url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, connect_args=connect_args
    )


# UPDATE … RETURNING (leases, marks) came in SQLite 3.35; segment filters and result writes use
# the JSON functions.
SQLITE_MINIMUM = (3, 35, 0)


class UnsupportedSqliteError(RuntimeError):
    """The SQLite library Python was built with lacks what the daemon's queries use."""


def check_sqlite_library() -> None:
    """Raise UnsupportedSqliteError, saying what is missing, unless Python's SQLite library is
    recent enough and has the JSON functions; better at start than at the first lease."""
    found = sqlite3.sqlite_version_info
    if found < SQLITE_MINIMUM:
        wanted = ".".join(map(str, SQLITE_MINIMUM))
        raise UnsupportedSqliteError(
            f"Python's SQLite library is {sqlite3.sqlite_version}; campaignd needs {wanted} or newer "
            "(or use PostgreSQL)"
        )
    try:
        with contextlib.closing(sqlite3.connect(":memory:")) as probe:
            probe.execute("SELECT json_type('[]')")
    except sqlite3.OperationalError:
        raise UnsupportedSqliteError(
            f"Python's SQLite library ({sqlite3.sqlite_version}) was built without the JSON functions, "
            "which campaignd needs (or use PostgreSQL)"
        ) from None


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
    statement = f"BEGIN {connection.get_execution_options().get('sqlite_begin', 'DEFERRED')}"
    # On the driver's connection: through exec_driver_sql, the BEGIN of a one-query read cost
    # about as much as the query. Its errors are wrapped as SQLAlchemy's own, for storage_fault.
    try:
        connection.connection.driver_connection.execute(statement)  # type: ignore[union-attr]
    except sqlite3.Error as exc:
        raise sa.exc.DBAPIError.instance(statement, None, exc, sqlite3.Error) from exc


# Statements compiled for `driver_row`, by the statement's id and the dialect; the statement is
# kept in the value, so that its id is not reused.
_COMPILED: dict[tuple[int, str], tuple[Any, str, tuple[str, ...] | None]] = {}


def connect_args(url: sa.URL) -> dict[str, Any]:
    """psycopg's connection arguments for a SQLAlchemy PostgreSQL URL (host, port, sslmode, ...)."""
    engine = sa.create_engine(url)
    try:
        _, kwargs = engine.dialect.create_connect_args(engine.url)
    finally:
        engine.dispose()
    kwargs.pop("context", None)
    return dict(kwargs)


def _driver_sql(statement: sa.Select[Any], dialect: Dialect, params: dict[str, Any]) -> tuple[str, Any]:
    """`statement` (a constant of its module) as the driver's SQL, compiled once, and its values."""
    key = (id(statement), dialect.name)
    found = _COMPILED.get(key)
    if found is None:
        compiled = statement.compile(dialect=dialect)
        positions = tuple(compiled.positiontup) if compiled.positiontup is not None else None
        found = _COMPILED[key] = (statement, compiled.string, positions)
    _, sql, positions = found
    # Named parameters for psycopg, in their order for SQLite's question marks.
    return sql, params if positions is None else tuple(params[name] for name in positions)


def driver_row(conn: Connection, statement: sa.Select[Any], **params: Any) -> tuple[Any, ...] | None:
    """The first row of `statement` (a constant of its module), run on the driver's own
    connection in `conn`'s transaction: for a tiny query on a hot path, where SQLAlchemy's
    execution costs many times what the database does. The values are the driver's, unconverted;
    errors are SQLAlchemy's, as storage_fault expects."""
    sql, values = _driver_sql(statement, conn.dialect, params)
    dbapi = conn.dialect.loaded_dbapi
    try:
        row = conn.connection.driver_connection.execute(sql, values).fetchone()  # type: ignore[union-attr]
    except dbapi.Error as exc:
        raise sa.exc.DBAPIError.instance(sql, values, exc, dbapi.Error) from exc
    return tuple(row) if row is not None else None


def _retrieved(task: asyncio.Task[Any]) -> None:
    # Its callers may all have been cancelled: its outcome is taken here, so that nothing is
    # reported as never retrieved.
    if not task.cancelled():
        task.exception()


async def _fetch_one(conn: psycopg.AsyncConnection[Any], sql: str, values: Any) -> tuple[Any, ...] | None:
    cursor = await conn.execute(sql, values)
    return await cursor.fetchone()


class Database:
    """Runs blocking SQL in worker threads so the event loop never waits on the database."""

    def __init__(self, engine: Engine, *, threads: int = 8) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._writer = (
            engine.execution_options(sqlite_begin="IMMEDIATE") if self.dialect == "sqlite" else engine
        )
        # SQLite has one writer at a time. The daemon's own writers take turns here rather than
        # in SQLite's busy handler, which sleeps 1, 2, 5, 10 … 100 ms between tries: a write
        # queued behind another waited several times as long as the other took.
        self._write_turn = threading.Lock() if self.dialect == "sqlite" else contextlib.nullcontext()
        self._pool = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="campaignd-db", initializer=loops.serve_as_the_process
        )
        self.fault: Fault | None = None
        self._listeners: list[tuple[Listener, asyncio.AbstractEventLoop | None]] = []
        self._prober: asyncio.Task[None] | None = None
        # Both event loops (the API's and the main one) use the database and may notice a fault;
        # the probe runs on the one the database was opened on.
        self._fault_lock = threading.Lock()
        self._home = loops.current()
        # The connections of `read_here`, one per thread that uses it, closed by `close`.
        self._here = threading.local()
        self._kept: list[Connection] = []
        self._kept_lock = threading.Lock()
        # The connections of `row_here` on PostgreSQL, one per event loop that uses it.
        self._async_here: dict[asyncio.AbstractEventLoop, psycopg.AsyncConnection[Any]] = {}
        self._here_locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}
        # The reads of `row_here` not yet started, which later calls for the same row join.
        self._unstarted: dict[tuple[Any, ...], asyncio.Task[tuple[Any, ...] | None]] = {}

    def on_fault(self, listener: Listener) -> None:
        """Call `listener(fault, None)` when a storage fault begins and `listener(None, ended)`
        when the database can be written again, on the event loop it was registered from."""
        self._listeners.append((listener, loops.current()))

    def _tell(self, fault: Fault | None, ended: Fault | None) -> None:
        for listener, loop in self._listeners:
            loops.soon_on(loop, functools.partial(listener, fault, ended))

    def _noticed(self, exc: BaseException) -> None:
        cause = storage_fault(exc)
        if cause is None:
            return
        with self._fault_lock:
            if self.fault is not None:
                return
            detail = str(getattr(exc, "orig", exc)).strip().splitlines()[0:1]
            self.fault = Fault(cause, time.monotonic(), detail[0] if detail else "")
        log.error("the database cannot be used", cause=cause, error=self.fault.detail)
        self._tell(self.fault, None)
        loops.soon_on(self._home, self._start_probing)

    def _start_probing(self) -> None:
        self._prober = asyncio.ensure_future(self._probe_until_writable())

    def _probe_sync(self) -> None:
        self.write_sync(_probe)
        if self.dialect == "sqlite":
            # The row fits in the room the WAL already has while the database file cannot grow:
            # copying the WAL into the file (without waiting for readers) shows whether it can.
            raw = self.engine.raw_connection()
            try:
                raw.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            finally:
                raw.close()

    async def _probe_until_writable(self) -> None:
        delay, longest = PROBE_INTERVAL
        loop = asyncio.get_running_loop()
        while self.fault is not None:
            await asyncio.sleep(delay)
            delay = min(delay * 2, longest)
            try:
                await loop.run_in_executor(self._pool, self._probe_sync)
            except Exception as exc:  # any failure means: not yet
                log.debug("the database is still unavailable", error=str(exc).splitlines()[0])
                continue
            with self._fault_lock:
                ended, self.fault = self.fault, None
            log.warning(
                "the database can be written again",
                cause=ended.cause,
                seconds=round(time.monotonic() - ended.since, 1),
            )
            self._tell(None, ended)

    def write_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(connection, *args) in one write transaction, committed on return."""
        with self._write_turn, self._writer.begin() as conn:
            return fn(conn, *args)

    def read_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(connection, *args) in one read transaction."""
        with self.engine.begin() as conn:
            return fn(conn, *args)

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """write_sync in a worker thread; a storage fault it raises starts `fault`."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, functools.partial(self.write_sync, fn, *args))
        except Exception as exc:
            self._noticed(exc)
            raise

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """read_sync in a worker thread; a storage fault it raises starts `fault`."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, functools.partial(self.read_sync, fn, *args))
        except Exception as exc:
            self._noticed(exc)
            raise

    async def read_here(self, fn: Callable[..., T], *args: Any) -> T:
        """A short read (a row or a few, by key) run on this thread, without a worker thread's
        round trip: on SQLite, where a reader in WAL mode does not wait for writers, in a read
        transaction on a connection this thread keeps; on a database server, `read`.

        It spares the caller's event loop two thread hand-offs, each a wait for the GIL while
        other threads send. SQLite still busy after HERE_BUSY_MS (a rare WAL recovery) hands the
        read to `read`; a disk that stalls holds up this thread, as it would every writer."""
        if self.dialect != "sqlite":
            return await self.read(fn, *args)
        return await self._on_this_thread(fn, args, transaction=True)

    async def _on_this_thread(self, fn: Callable[..., T], args: tuple[Any, ...], *, transaction: bool) -> T:
        # SQLite, on this thread's kept connection; busy, on a worker thread (`read`).
        try:
            conn = self._here_connection()
            if not transaction:
                return fn(conn, *args)
            with conn.begin():
                return fn(conn, *args)
        except sa.exc.OperationalError as exc:
            if storage_fault(exc) != "database is locked":
                self._noticed(exc)
                raise
        except Exception as exc:
            self._noticed(exc)
            raise
        return await self.read(fn, *args)

    async def row_here(self, statement: sa.Select[Any], **params: Any) -> tuple[Any, ...] | None:
        """`driver_row` of `statement` run on this thread, without a worker thread's round trip:
        on SQLite as `read_here` does, but outside a transaction; on PostgreSQL on this event
        loop's own connection, in autocommit (one round trip, the latest committed row). That
        connection failing or slow (HERE_TIMEOUT), or a storage fault, sends the read to a worker
        thread (`read`).

        On PostgreSQL, calls for the same row that wait for the connection share one read, which
        starts after every one of them was made: each still sees every write committed before
        it was called, and twenty callers cost a round trip or two instead of twenty in a row."""
        if self.dialect != "postgresql":
            # One SELECT outside any transaction (the driver's connection is in autocommit) reads
            # one snapshot all the same, and spares the BEGIN and COMMIT around it.
            read = functools.partial(driver_row, statement=statement, **params)
            return await self._on_this_thread(read, (), transaction=False)
        if self.fault is not None:
            return await self.read(functools.partial(driver_row, statement=statement, **params))
        loop = asyncio.get_running_loop()
        sql, values = _driver_sql(statement, self.engine.dialect, params)
        key: tuple[Any, ...] = (loop, sql, tuple(values.items()) if isinstance(values, dict) else values)
        try:
            shared = self._unstarted.get(key)
        except TypeError:
            # A value that cannot be a key (a list): this call reads alone.
            key, shared = (loop, object()), None
        if shared is None:
            # A task of its own, in a context of its own: one caller's cancellation or identity
            # must not reach the others.
            shared = loop.create_task(
                self._row_on_loop(key, statement, params, sql, values), context=contextvars.Context()
            )
            shared.add_done_callback(_retrieved)
            self._unstarted[key] = shared
        return await asyncio.shield(shared)

    async def _row_on_loop(
        self, key: tuple[Any, ...], statement: sa.Select[Any], params: dict[str, Any], sql: str, values: Any
    ) -> tuple[Any, ...] | None:
        loop = asyncio.get_running_loop()
        lock = self._here_locks.get(loop)
        if lock is None:
            lock = self._here_locks[loop] = asyncio.Lock()
        try:
            async with lock:
                # From here on a new call for this row starts a read of its own.
                del self._unstarted[key]
                try:
                    conn = self._async_here.get(loop)
                    if conn is None or conn.closed:
                        conn = await asyncio.wait_for(
                            psycopg.AsyncConnection.connect(autocommit=True, **connect_args(self.engine.url)),
                            HERE_CONNECT_TIMEOUT,
                        )
                        self._async_here[loop] = conn
                    row = await asyncio.wait_for(_fetch_one(conn, sql, values), HERE_TIMEOUT)
                    return tuple(row) if row is not None else None
                except (psycopg.Error, OSError, TimeoutError) as exc:
                    # Connected anew by the next call; this one goes the long way round.
                    log.debug("a read on the event loop's connection failed", error=str(exc).strip())
                    dropped = self._async_here.pop(loop, None)
                    if dropped is not None:
                        with contextlib.suppress(Exception):
                            await dropped.close()
        finally:
            if self._unstarted.get(key) is asyncio.current_task():
                del self._unstarted[key]
        return await self.read(functools.partial(driver_row, statement=statement, **params))

    def _here_connection(self) -> Connection:
        conn: Connection | None = getattr(self._here, "conn", None)
        if conn is None or conn.invalidated or conn.closed:
            conn = self.engine.connect()
            conn.exec_driver_sql(f"PRAGMA busy_timeout={HERE_BUSY_MS}")
            # Not left in a transaction by the PRAGMA: each read opens its own.
            conn.commit()
            with self._kept_lock:
                self._kept.append(conn)
            self._here.conn = conn
        return conn

    def close(self) -> None:
        """Wait for running queries, then release every connection."""
        if self._prober is not None and not self._prober.done():
            # close() may run in a worker thread: cancel the probe from its own loop, if it runs.
            with contextlib.suppress(RuntimeError):
                self._prober.get_loop().call_soon_threadsafe(self._prober.cancel)
        self._pool.shutdown(wait=True)
        with self._kept_lock:
            kept, self._kept = self._kept, []
        for conn in kept:
            # Not back to the pool: their busy timeout is `read_here`'s own.
            with contextlib.suppress(Exception):
                conn.invalidate()
                conn.close()
        # Their loops may have ended: the socket is closed without them.
        for async_conn in self._async_here.values():
            with contextlib.suppress(Exception):
                async_conn.pgconn.finish()
        self._async_here.clear()
        self.engine.dispose()
