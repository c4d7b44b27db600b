"""One daemon per SQLite database: the lock beside the file (store/claim.py)."""

from __future__ import annotations

import pathlib

import pytest

from campaignd.store import claim


def test_only_sqlite_files_are_locked() -> None:
    assert claim.sqlite_file("sqlite:////var/lib/campaignd/campaignd.db") == pathlib.Path(
        "/var/lib/campaignd/campaignd.db"
    )
    for url in ("sqlite://", "sqlite:///:memory:", "postgresql+psycopg://u@h/db", "not a url"):
        assert claim.sqlite_file(url) is None


def test_a_held_database_is_refused_naming_the_holder_and_freed_after(tmp_path: pathlib.Path) -> None:
    url = f"sqlite:///{tmp_path / 'campaignd.db'}"
    with claim.exclusive(url):
        lock = claim.lock_path(tmp_path / "campaignd.db")
        holder = lock.read_text().strip()
        assert holder.isdigit()
        refused = pytest.raises(claim.InUseError, match=rf"in use by another campaignd \(pid {holder}\)")
        with refused, claim.exclusive(url):
            pass
    with claim.exclusive(url):
        pass


def test_a_directory_where_no_lock_can_be_made_is_left_to_the_database(tmp_path: pathlib.Path) -> None:
    entered = False
    with claim.exclusive(f"sqlite:///{tmp_path / 'missing' / 'campaignd.db'}"):
        entered = True
    assert entered


def test_a_lock_file_that_cannot_be_opened_is_refused_naming_it(tmp_path: pathlib.Path) -> None:
    lock = claim.lock_path(tmp_path / "campaignd.db")
    lock.symlink_to(lock.name)  # a loop: no open can follow it
    refused = pytest.raises(claim.LockFileError, match=rf"cannot use the lock file {lock}: ")
    with refused, claim.exclusive(f"sqlite:///{tmp_path / 'campaignd.db'}"):
        pass


def test_the_lock_file_is_readable_by_every_user(tmp_path: pathlib.Path) -> None:
    """Another user (root running `campaignd migrate`, say) may have made it: the daemon's user
    can still open it to lock it."""
    with claim.exclusive(f"sqlite:///{tmp_path / 'campaignd.db'}"):
        pass
    assert claim.lock_path(tmp_path / "campaignd.db").stat().st_mode & 0o777 == 0o644
