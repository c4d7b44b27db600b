"""The ImportContacts pipeline: rows decoded and normalised in a worker process, applied in
stream order, one transaction per chunk of about 1,000 rows.

Normalising a row (email syntax, phone numbers) costs more than storing it, so it runs in a
separate process and overlaps with the database writes of the chunks before it. Every chunk is
applied in order and counted in the same step, so at any moment the rows applied are a prefix
of the stream, and `ImportSession.applied_rows` says how long it is.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from campaignd import logs
from campaignd.audience import contacts as fields_
from campaignd.audience.contacts import ContactFieldError

log = logs.get("campaignd.audience")

# Rows per transaction: big enough that per-statement costs vanish, small enough that a chunk
# holds the SQLite write lock for well under a second.
CHUNK_ROWS = 1000
# Chunks handed to the workers ahead of the one being written.
AHEAD = 4


@dataclasses.dataclass(frozen=True)
class Row:
    """One contact row as given: to create or update."""

    index: int
    contact_id: str
    email: str
    phone: str
    time_zone: str
    attributes: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Rejection:
    """A row that was not applied."""

    index: int
    field: str
    reason: str


# A row whose fields passed normalisation: (index, contact_id, email, phone, time_zone,
# attributes), None where not given. A plain tuple, because it crosses back from the worker
# process and unpickling a tuple costs a tenth of unpickling a dataclass.
NormalRow = tuple[int, str, str | None, str | None, str | None, dict[str, Any]]


@dataclasses.dataclass
class Prepared:
    """A chunk after normalisation: its good rows, its rejected ones, and how many rows it had."""

    rows: list[NormalRow]
    rejected: list[Rejection]
    count: int


@dataclasses.dataclass
class ImportResult:
    """What an import did."""

    created: int = 0
    updated: int = 0
    rejected: list[Rejection] = dataclasses.field(default_factory=list)


# Turns one stream message (serialised, so that it crosses to a worker process cheaply) into its
# rows; `first` is the stream index of its first row. Must be a module-level function.
Decode = Callable[[bytes, int], list[Row | Rejection]]


def prepare(decode: Decode, messages: list[tuple[bytes, int]], default_region: str) -> Prepared:
    """Decode and normalise the rows of some stream messages (runs in a worker process)."""
    rows: list[NormalRow] = []
    rejected: list[Rejection] = []
    count = 0
    for data, first in messages:
        for item in decode(data, first):
            count += 1
            if isinstance(item, Rejection):
                rejected.append(item)
                continue
            try:
                normal = fields_.normalise(
                    email=item.email,
                    phone=item.phone,
                    time_zone=item.time_zone,
                    attributes=item.attributes,
                    default_region=default_region,
                )
            except ContactFieldError as exc:
                rejected.append(Rejection(item.index, exc.field, exc.reason))
                continue
            except Exception as exc:  # one unreadable row must not end the import
                rejected.append(Rejection(item.index, "", f"cannot be read ({type(exc).__name__})"))
                continue
            email, phone, zone = normal.email, normal.phone, normal.time_zone
            rows.append((item.index, item.contact_id, email, phone, zone, normal.attributes))
    return Prepared(rows, rejected, count)


# How often a worker looks whether the daemon is still there.
PARENT_CHECK_SECONDS = 1.0


def _started() -> None:
    """Run once in a new worker process: it has started and imported what it needs."""


def _worker_init(daemon: int) -> None:
    # Ctrl-C in a terminal reaches the whole process group; the daemon stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The daemon names itself: it may already be gone by the time this worker has started.
    threading.Thread(target=_exit_with_parent, args=(daemon,), name="parent-watch", daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """End this worker once the daemon that started it is gone (killed, or crashed): nobody else
    would stop it, and an idle worker waits for work for ever."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(0)


class WorkerPool:
    """Worker processes for normalisation, shared by imports, started when first needed and
    stopped after IDLE_SECONDS without work.

    Until a worker has started (a second or so: a new interpreter imports the daemon's modules),
    and whenever one cannot be started or has died, the work runs in a thread of the daemon
    instead: slower, but a small import never waits for a process, and a large one goes on.
    """

    IDLE_SECONDS = 60.0

    def __init__(self, workers: int | None = None) -> None:
        # One core stays with the event loop and the database writes.
        self.workers = workers if workers is not None else max(1, min(4, (os.cpu_count() or 2) - 1))
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._ready = False
        self._closed = False
        self._idle: asyncio.TimerHandle | None = None

    def run(self, fn: Callable[..., Prepared], *args: Any) -> Awaitable[Prepared]:
        """fn(*args) in a worker process, or in a thread while none is ready."""
        loop = asyncio.get_running_loop()
        if self._idle is not None:
            self._idle.cancel()
        self._idle = loop.call_later(self.IDLE_SECONDS, self._discard)
        if self._ready and self._pool is not None:
            try:
                return asyncio.wrap_future(self._pool.submit(fn, *args), loop=loop)
            except (RuntimeError, BrokenProcessPool) as exc:
                log.warning("import worker process unavailable", error=str(exc))
                self._discard()
        self._start()
        return loop.run_in_executor(None, fn, *args)

    def _start(self) -> None:
        if self._closed or self._pool is not None:
            return
        try:
            # spawn, not fork: the daemon has threads (database, gRPC) that a fork would copy mid-work.
            pool = concurrent.futures.ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init,
                initargs=(os.getpid(),),
            )
            probe = pool.submit(_started)
        except (OSError, RuntimeError) as exc:
            log.warning("cannot start an import worker process", error=str(exc))
            return
        self._pool = pool

        def started(future: concurrent.futures.Future[None]) -> None:
            # Runs in the pool's own thread; a plain assignment is safe there.
            if self._pool is pool and not future.cancelled() and future.exception() is None:
                self._ready = True

        probe.add_done_callback(started)

    def broken(self) -> None:
        """Forget a pool whose worker died; a new one is started when next needed."""
        self._discard()

    def _discard(self) -> None:
        self._ready = False
        if self._pool is not None:
            self._pool.shutdown(wait=False)  # work already handed over still finishes
            self._pool = None

    def close(self) -> None:
        """Stop the workers; later work runs in threads."""
        self._closed = True
        if self._idle is not None:
            self._idle.cancel()
        self._discard()


ApplyChunk = Callable[[list[NormalRow]], Awaitable[tuple[int, int, list[Rejection]]]]


class ImportSession:
    """One ImportContacts stream: messages go in as they arrive, chunks come out applied in order.

    `add` hands a message's rows to the workers and applies the chunks that are ready, keeping
    at most AHEAD chunks in the workers; `finish` applies the rest; `stop` ends a failed stream,
    waiting for a chunk whose transaction is already running so that it is counted.
    """

    def __init__(self, pool: WorkerPool, decode: Decode, default_region: str, apply: ApplyChunk) -> None:
        self.pool = pool
        self.decode = decode
        self.default_region = default_region
        self.apply = apply
        self.result = ImportResult()
        self.applied_rows = 0
        self.received_rows = 0
        self._buffer: list[tuple[bytes, int]] = []
        self._buffered = 0
        self._pending: collections.deque[tuple[list[tuple[bytes, int]], asyncio.Future[Prepared]]] = (
            collections.deque()
        )
        self._writing: asyncio.Task[None] | None = None

    async def add(self, data: bytes, rows: int) -> None:
        """Take one stream message of `rows` rows, serialised."""
        if not rows:
            return
        self._buffer.append((data, self.received_rows))
        self._buffered += rows
        self.received_rows += rows
        if self._buffered >= CHUNK_ROWS:
            self._submit()
        while len(self._pending) > AHEAD:
            await self._apply_next()

    async def finish(self) -> ImportResult:
        """Apply every row received; the result of the whole stream."""
        if self._buffer:
            self._submit()
        while self._pending:
            await self._apply_next()
        return self.result

    async def stop(self) -> None:
        """End a failed stream: rows not yet written are dropped; a chunk being written is counted."""
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()
        if self._writing is not None and not self._writing.done():
            # The transaction runs in a thread and commits whatever happens to this coroutine.
            await asyncio.wait([self._writing])

    def _submit(self) -> None:
        batch, self._buffer, self._buffered = self._buffer, [], 0
        future = asyncio.ensure_future(self.pool.run(prepare, self.decode, batch, self.default_region))
        self._pending.append((batch, future))

    async def _apply_next(self) -> None:
        batch, future = self._pending[0]
        try:
            prepared = await future
        except BrokenProcessPool:
            # A worker died (killed, out of memory): this chunk again, in a thread.
            log.warning("an import worker process died; normalising in a thread")
            self.pool.broken()
            prepared = await asyncio.get_running_loop().run_in_executor(
                None, prepare, self.decode, batch, self.default_region
            )
        self._pending.popleft()
        # Shielded: once the transaction has started it commits, and is then counted, even when
        # the call is cancelled meanwhile.
        self._writing = asyncio.ensure_future(self._write(prepared))
        await asyncio.shield(self._writing)

    async def _write(self, prepared: Prepared) -> None:
        created, updated, rejected = (0, 0, []) if not prepared.rows else await self.apply(prepared.rows)
        self.result.created += created
        self.result.updated += updated
        self.result.rejected.extend(prepared.rejected)
        self.result.rejected.extend(rejected)
        self.applied_rows += prepared.count
