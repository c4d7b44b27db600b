"""One daemon per SQLite database: a lock on a file beside it, held while the daemon runs.

On SQLite a daemon takes itself for the only one: its Pause and Stop close its own gates, its
sweeps and schedules assume no other sender. A second daemon on the same file (another config
naming it, or `campaignd migrate` run while the service serves) would send after a Pause
returned, so it is refused at start. PostgreSQL has the cluster (see cluster/) instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
from collections.abc import Iterator

import sqlalchemy as sa


class InUseError(Exception):
    """Another process holds the database's lock."""

    def __init__(self, database: pathlib.Path, holder: str) -> None:
        who = f"another campaignd (pid {holder})" if holder.isdigit() else "another campaignd"
        super().__init__(
            f"the database {database} is in use by {who}: only one daemon may use an SQLite database"
        )


class LockFileError(Exception):
    """The lock file is there but cannot be opened (its owner or mode, for one)."""

    def __init__(self, path: pathlib.Path, error: OSError) -> None:
        super().__init__(f"cannot use the lock file {path}: {error.strerror or error}")


def lock_path(database: pathlib.Path) -> pathlib.Path:
    """The lock file of an SQLite database file."""
    return database.with_name(database.name + ".lock")


def sqlite_file(url: str) -> pathlib.Path | None:
    """The file of an SQLite URL; None for PostgreSQL and in-memory databases."""
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        return None
    name = parsed.database
    if parsed.get_backend_name() != "sqlite" or not name or name == ":memory:" or name.startswith("file:"):
        return None
    return pathlib.Path(name)


@contextlib.contextmanager
def exclusive(url: str) -> Iterator[None]:
    """Hold the lock of the SQLite database at `url` for the block; InUseError when another process
    holds it, LockFileError when the lock file is there but cannot be opened. The kernel drops the
    lock when the process ends, however it ends. Where the lock file cannot be made (a read-only
    directory), the block runs without it: opening the database for writing fails there anyway,
    with its own message."""
    database = sqlite_file(url)
    if database is None:
        yield
        return
    path = lock_path(database)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        writable = True
    except OSError:
        try:
            # Locking needs only a descriptor to read: a file another user made will do.
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            writable = False
        except FileNotFoundError:
            yield
            return
        except OSError as exc:
            raise LockFileError(path, exc) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InUseError(database, _holder(fd)) from None
        if writable:
            # Readable by every user that may run campaignd here (root running `campaignd
            # migrate` included), whatever the umask; only its owner may change that.
            with contextlib.suppress(OSError):
                os.fchmod(fd, 0o644)
            # Who holds it, for the message another start prints.
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
