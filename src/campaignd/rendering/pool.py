"""The render pool: worker processes that render templates away from the event loop, each render
bounded in time and memory, a worker that overruns killed and replaced.

A call to `render` is split into jobs of at most `CHUNK` recipients, queued for the workers and
awaited together: one round trip per job, not per message. Each worker process has a thread in
the daemon that writes its jobs, waits for the reply (releasing the GIL), and watches the
worker's progress page: a render still running `GRACE` seconds past the time limit (stuck in a C
call that the worker's own SIGALRM cannot interrupt) gets the worker killed, that recipient's
render fails, and the rest of the job goes to a new worker. Workers compile a channel's templates
once and keep them; a job names them by key after the first time.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import io
import itertools
import mmap
import os
import pickle
import queue
import select
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from campaignd import logs
from campaignd.plugin import Recipient
from campaignd.plugin.templates import Rendering, TemplateError, TemplateSet
from campaignd.rendering.worker import HEADER, PROGRESS

log = logs.get("campaignd.rendering")

CHUNK = 100  # recipients per job at most
URGENT = 10  # calls this small (previews, test sends) go before batches waiting in the queue
GRACE = 0.25  # seconds past the time limit before a render stuck in C gets its worker killed
POLL = 0.05  # how often a waiting thread looks at its worker's progress
START = 10.0  # seconds a worker may take to begin a job (read it, compile its templates)
BUDGET = 8_000_000  # characters of output per reply; past it the worker returns early
KNOWN = 32  # compiled sets the pool counts on a worker keeping (it keeps more)
# What a worker inherits of the daemon's environment: enough to run Python, no secrets.
_ENVIRONMENT = ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")


class _StuckError(Exception):
    def __init__(self, index: int | None) -> None:
        self.index = index


class _DiedError(Exception):
    def __init__(self, index: int | None) -> None:
        self.index = index


@dataclass
class _Job:
    templates: TemplateSet
    sources: dict[str, str]
    static: dict[str, str]
    common: dict[str, Any]
    items: list[tuple[str, dict[str, Any], dict[str, Any]]]
    future: concurrent.futures.Future[list[Rendering]] = field(default_factory=concurrent.futures.Future)


class _Worker:
    """One worker process, its pipes and its progress page."""

    def __init__(self, memory_limit: int) -> None:
        fd = os.memfd_create("campaignd-render-progress")
        try:
            os.ftruncate(fd, PROGRESS.size)
            self.progress = mmap.mmap(fd, PROGRESS.size)
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "campaignd.rendering.worker", str(fd), str(memory_limit)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                pass_fds=(fd,),
                env={name: os.environ[name] for name in _ENVIRONMENT if name in os.environ},
            )
        finally:
            os.close(fd)
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.stdin = self.proc.stdin.fileno()
        self.stdout = self.proc.stdout.fileno()
        self.known: collections.OrderedDict[str, None] = collections.OrderedDict()

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.proc.pid

    def call(self, job: tuple[Any, ...], seconds: float) -> tuple[Any, ...]:
        """Send a job and wait for its reply; _StuckError (the worker killed) when a render overran,
        _DiedError when the worker ended."""
        data = pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            _write(self.stdin, HEADER.pack(len(data)) + data)
        except OSError:
            raise _DiedError(None) from None
        sent = time.monotonic()
        while not select.select([self.stdout], [], [], POLL)[0]:
            started, index = PROGRESS.unpack_from(self.progress)
            if self.proc.poll() is not None:
                raise _DiedError(index if started else None)
            now = time.monotonic()
            if started and now - started > seconds + GRACE:
                self.kill()
                raise _StuckError(index)
            if not started and now - sent > max(START, seconds + GRACE):
                # Not rendering, and not answering either: compiling or reading the job took
                # far too long, or the worker hangs.
                self.kill()
                raise _StuckError(None)
        header = _read(self.stdout, HEADER.size)
        frame = _read(self.stdout, HEADER.unpack(header)[0]) if header is not None else None
        if frame is None:
            started, index = PROGRESS.unpack_from(self.progress)
            self.kill()
            raise _DiedError(index if started else None)
        reply: tuple[Any, ...] = _Replies(frame).load()
        return reply

    def remember(self, key: str) -> None:
        """Note that the worker holds the compiled set `key`."""
        self.known[key] = None
        self.known.move_to_end(key)
        if len(self.known) > KNOWN:
            self.known.popitem(last=False)

    def kill(self) -> None:
        """End the worker now."""
        self.proc.kill()
        self.proc.wait()
        self._release()

    def close(self, seconds: float = 2.0) -> None:
        """Let the worker finish and exit (its stdin closed), killing it after `seconds`."""
        with contextlib.suppress(OSError):
            os.close(self.stdin)
        try:
            self.proc.wait(seconds)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._release()

    def _release(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if not self.progress.closed:
            self.progress.close()


class _Replies(pickle.Unpickler):
    """Reads a worker's reply, which holds only strings, numbers, tuples, lists and dicts: no
    class may be named in it, so a worker that went wrong cannot make the daemon run code."""

    def __init__(self, frame: bytes) -> None:
        super().__init__(io.BytesIO(frame))

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"a render worker's reply named {module}.{name}")


def _read(fd: int, size: int) -> bytes | None:
    chunks = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class RenderPool:
    """Worker processes rendering templates: the daemon's `Renderer`.

    `workers` processes, each render limited to `timeout` seconds and each process to
    `memory_limit` bytes of address space. Usable from any thread and any event loop.
    """

    def __init__(self, *, workers: int = 2, timeout: float = 1.0, memory_limit: int = 256 << 20) -> None:
        self.timeout = timeout
        self.memory_limit = memory_limit
        self._queue: queue.PriorityQueue[tuple[int, int, _Job | None]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._live: set[_Worker] = set()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._serve, name=f"render-{n}", daemon=True) for n in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def pids(self) -> list[int]:
        """The process ids of the workers running now."""
        with self._lock:
            return sorted(w.pid for w in self._live)

    async def render(
        self,
        templates: TemplateSet,
        recipients: Sequence[Recipient],
        variables: Sequence[Mapping[str, Any]] | None = None,
        common: Mapping[str, Any] | None = None,
    ) -> list[Rendering]:
        """See `campaignd.plugin.templates.Renderer.render`."""
        jobs = self._submit(templates, recipients, variables, common)
        parts = await asyncio.gather(*(asyncio.wrap_future(job.future) for job in jobs))
        return [rendering for part in parts for rendering in part]

    def render_now(
        self,
        templates: TemplateSet,
        recipients: Sequence[Recipient],
        variables: Sequence[Mapping[str, Any]] | None = None,
        common: Mapping[str, Any] | None = None,
    ) -> list[Rendering]:
        """`render` for a caller outside any event loop (tests, tools): blocks until done."""
        jobs = self._submit(templates, recipients, variables, common)
        return [rendering for job in jobs for rendering in job.future.result()]

    def _submit(
        self,
        templates: TemplateSet,
        recipients: Sequence[Recipient],
        variables: Sequence[Mapping[str, Any]] | None,
        common: Mapping[str, Any] | None,
    ) -> list[_Job]:
        if variables is not None and len(variables) != len(recipients):
            raise ValueError(f"{len(variables)} variables for {len(recipients)} recipients")
        static = templates.static()
        sources = templates.dynamic()
        if not sources:
            done: concurrent.futures.Future[list[Rendering]] = concurrent.futures.Future()
            done.set_result([dict(static) for _ in recipients])
            return [_Job(templates, sources, static, {}, [], done)]
        if self._closed:
            raise RuntimeError("the render pool is closed")
        items = [
            (r.address, dict(r.contact), dict(variables[n]) if variables is not None else {})
            for n, r in enumerate(recipients)
        ]
        # As many jobs as workers, so that they share a batch, but no job larger than CHUNK.
        size = min(CHUNK, max(1, -(-len(items) // len(self._threads))))
        priority = 0 if len(items) <= URGENT else 1
        jobs = []
        for start in range(0, len(items), size):
            job = _Job(templates, sources, static, dict(common or {}), items[start : start + size])
            self._queue.put((priority, next(self._order), job))
            jobs.append(job)
        return jobs

    def close(self) -> None:
        """Stop the workers; renders in progress fail."""
        self._closed = True
        for _ in self._threads:
            self._queue.put((2, next(self._order), None))
        with self._lock:
            live = list(self._live)
        for worker in live:
            # Its thread sees it end, and fails what it was rendering.
            worker.proc.kill()
        for thread in self._threads:
            thread.join(5)

    # -- in each pool thread ------------------------------------------------------------------

    def _serve(self) -> None:
        worker: _Worker | None = None
        try:
            worker = self._spawn()
        except OSError:
            log.exception("a render worker could not be started; trying again at the next render")
        while True:
            _, _, job = self._queue.get()
            if job is None:
                break
            if not job.future.set_running_or_notify_cancel():
                continue
            try:
                results, worker = self._run(job, worker)
            except BaseException as exc:
                job.future.set_exception(exc)
            else:
                job.future.set_result(results)
        if worker is not None:
            self._forget(worker)
            worker.close()

    def _spawn(self) -> _Worker:
        worker = _Worker(self.memory_limit)
        with self._lock:
            self._live.add(worker)
        if self._closed:
            worker.kill()
        return worker

    def _forget(self, worker: _Worker) -> None:
        with self._lock:
            self._live.discard(worker)

    def _run(self, job: _Job, worker: _Worker | None) -> tuple[list[Rendering], _Worker | None]:
        """Render a job on this thread's worker, replacing it as often as it dies or is killed."""
        results: list[Rendering | None] = [None] * len(job.items)
        pending = list(range(len(job.items)))
        key = job.templates.key
        html = job.templates.html
        unexplained = 0
        while pending:
            if self._closed:
                raise RuntimeError("the render pool is closed")
            if worker is None or worker.proc.poll() is not None:
                if worker is not None:
                    self._forget(worker)
                worker = self._spawn()
            sources = None if key in worker.known else job.sources
            message = (key, sources, html, job.common, [job.items[n] for n in pending], self.timeout, BUDGET)
            try:
                reply = worker.call(message, self.timeout)
            except (_StuckError, _DiedError) as exc:
                self._forget(worker)
                stuck = isinstance(exc, _StuckError)
                log.warning(
                    "render worker killed: a render overran its time limit"
                    if stuck
                    else "render worker ended unexpectedly",
                    pid=worker.pid,
                    code=worker.proc.returncode,
                )
                worker = None
                if exc.index is None or not 0 <= exc.index < len(pending):
                    # It died between renders: the job is tried once more before it fails.
                    unexplained += 1
                    if unexplained < 2:
                        continue
                    for n in pending:
                        results[n] = TemplateError("the renderer stopped while rendering this message")
                    break
                failed = pending.pop(exc.index)
                results[failed] = (
                    TemplateError(
                        f"the template took longer than the limit of {self.timeout:g} s and was stopped",
                        limit="time",
                    )
                    if stuck
                    else TemplateError("the renderer stopped while rendering this message")
                )
                continue
            if reply[0] == "unknown":
                worker.known.pop(key, None)
                continue
            worker.remember(key)
            rendered = reply[1]
            for n, value in zip(pending, rendered, strict=False):
                results[n] = self._result(value, job.static)
            pending = pending[len(rendered) :]
        return [r if r is not None else TemplateError("not rendered") for r in results], worker

    def _result(self, value: Any, static: dict[str, str]) -> Rendering:
        if isinstance(value, dict):
            return static | value if static else value
        message, name, limit = value
        where = f"the {name} template" if name else "the template"
        if limit == "time":
            message = f"{where} took longer than the limit of {self.timeout:g} s"
        elif limit == "memory":
            message = f"{where} needed more memory than the limit of {self.memory_limit >> 20} MiB"
        return TemplateError(message, field=name, limit=limit)
