"""A render worker process: `python -m campaignd.rendering.worker PROGRESS_FD MEMORY_LIMIT`.

It reads jobs from stdin and writes replies to stdout, each a frame: an 8-byte big-endian length,
then a pickle. A job is `(key, sources or None, html fields, common variables, items, time limit,
output budget)`, each item `(address, contact, variables)`; the reply is `("done", results)`, one
result per item rendered (fewer than the items when the output budget ran out), each a dict of
field -> text or `(message, field, limit)`; or `("unknown",)` when the job names by key a set this
worker does not hold. Before each item the worker writes the time and the item's index into the
shared PROGRESS_FD, from which the pool sees a render that overruns and kills the worker.

Its address space is limited to MEMORY_LIMIT bytes (RLIMIT_AS), so a template that asks for more
gets a MemoryError here while the daemon is untouched. Each render is interrupted by SIGALRM at
the time limit; one stuck in a single C call, which no signal interrupts, is killed by the pool.
"""

from __future__ import annotations

import collections
import mmap
import os
import pickle
import resource
import signal
import struct
import sys
import time
from typing import Any

from campaignd.plugin.templates import (
    Part,
    TemplateError,
    TimeLimit,
    compile_set,
    contact_view,
    render_fields,
)

HEADER = struct.Struct(">Q")
PROGRESS = struct.Struct("=dq")  # when the item began (monotonic, 0: idle), its index
CACHE_SIZE = 64  # compiled sets kept; the pool assumes fewer, so it never counts on a dropped one


def _alarm(signum: int, frame: Any) -> None:
    raise TimeLimit


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
    view = memoryview(HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def run(
    job: tuple[Any, ...], cache: collections.OrderedDict[str, Any], progress: mmap.mmap
) -> tuple[Any, ...]:
    """The reply to one job."""
    key, sources, html, common, items, seconds, budget = job
    compiled: dict[str, Part] | TemplateError | None = cache.get(key)
    if compiled is None:
        if sources is None:
            return ("unknown",)
        try:
            compiled = compile_set(sources, html)
        except TemplateError as exc:
            compiled = exc
        cache[key] = compiled
        if len(cache) > CACHE_SIZE:
            cache.popitem(last=False)
    cache.move_to_end(key)
    if isinstance(compiled, TemplateError):
        return ("done", [(str(compiled), compiled.field, "")] * len(items))
    results: list[Any] = []
    used = 0
    for index, (address, contact, variables) in enumerate(items):
        context = {**common, **variables, "contact": contact_view(address, contact)}
        PROGRESS.pack_into(progress, 0, time.monotonic(), index)
        try:
            try:
                signal.setitimer(signal.ITIMER_REAL, seconds)
                out = render_fields(compiled, context)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except TemplateError as exc:
            results.append((str(exc), exc.field, exc.limit))
            continue
        except TimeLimit:
            results.append(("", "", "time"))
            continue
        except MemoryError:
            results.append(("", "", "memory"))
            continue
        results.append(out)
        used += sum(map(len, out.values()))
        if used > budget:
            break  # the pool sends the rest again: one reply stays small
    PROGRESS.pack_into(progress, 0, 0.0, -1)
    return ("done", results)


def main(argv: list[str]) -> int:
    """Serve jobs until stdin closes."""
    progress = mmap.mmap(int(argv[1]), PROGRESS.size)
    memory_limit = int(argv[2])
    # The daemon stops its workers by closing their stdin; a terminal's ^C is the daemon's to handle.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, _alarm)
    # Replies go to a private copy of stdout; anything printed by accident goes to stderr.
    out = os.dup(1)
    os.dup2(2, 1)
    if memory_limit:
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    cache: collections.OrderedDict[str, Any] = collections.OrderedDict()
    while True:
        header = _read(0, HEADER.size)
        if header is None:
            return 0
        frame = _read(0, HEADER.unpack(header)[0])
        if frame is None:
            return 0
        # Jobs come from the daemon that started this process, over its own pipe.
        reply = run(pickle.loads(frame), cache, progress)  # noqa: S301
        _write(out, pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
