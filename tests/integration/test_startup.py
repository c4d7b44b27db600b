"""`campaignd serve` and `campaignd migrate` as systemd starts them: what each start-up problem exits with."""

from __future__ import annotations

import contextlib
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

from tests.conftest import DEFAULT_PG_URL, PG_URL_ENV

CAMPAIGND = str(pathlib.Path(sys.executable).parent / "campaignd")


def _run(
    tmp_path: pathlib.Path, config: str, *command: str, runtime: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run `campaignd <command> --config` with `config` (runtime directory in a fresh /tmp dir)."""
    runtime = runtime or tempfile.mkdtemp(prefix="cd-", dir="/tmp")
    path = tmp_path / "config.toml"
    path.write_text(f'[daemon]\nruntime_directory = "{runtime}"\nshutdown_timeout = 2.0\n' + config)
    return subprocess.run(
        [CAMPAIGND, *(command or ("serve",)), "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _one_clean_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a refused start, checked to be one line without a traceback."""
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("campaignd: ")
    return lines[0]


@contextlib.contextmanager
def _read_only_mount(path: pathlib.Path) -> Iterator[pathlib.Path]:
    """A read-only file system at `path` (a tmpfs remounted read-only), as systemd's sandbox gives."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def _remount(path: pathlib.Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


def test_invalid_plugin_options_exit_2_before_anything_is_created(tmp_path: pathlib.Path) -> None:
    """A bad channel-type option stops the start with exit 2, and no state directory or database exists."""
    state = tmp_path / "state"
    result = _run(
        tmp_path,
        f'state_directory = "{state}"\n[channel_types.email]\nunsubscribe_url = "not a url"\n',
    )
    assert result.returncode == 2
    assert _one_clean_line(result).startswith("campaignd: channel_types.email.unsubscribe_url: ")
    assert not state.exists()


def test_a_plugin_that_cannot_be_loaded_exits_2_before_anything_is_created(tmp_path: pathlib.Path) -> None:
    """A module in `[plugins] load` that does not exist is a config problem: exit 2, nothing created."""
    state = tmp_path / "state"
    result = _run(tmp_path, f'state_directory = "{state}"\n[plugins]\nload = ["no_such_plugin_module"]\n')
    assert result.returncode == 2
    assert "no_such_plugin_module" in _one_clean_line(result)
    assert not state.exists()


def test_check_config_reports_a_plugin_that_cannot_be_loaded_with_exit_2(tmp_path: pathlib.Path) -> None:
    """`campaignd check-config` lists an unloadable plugin module as a problem and exits 2."""
    path = tmp_path / "config.toml"
    path.write_text('[plugins]\nload = ["no_such_plugin_module"]\n')
    result = subprocess.run(
        [CAMPAIGND, "check-config", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert _one_clean_line(result).startswith("campaignd: plugins: ")


def test_a_state_directory_that_cannot_be_made_exits_2_naming_it(tmp_path: pathlib.Path) -> None:
    """A state directory under a regular file exits 2 with one line naming the path and the cause."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = _run(tmp_path, f'state_directory = "{blocker / "state"}"\n')
    assert result.returncode == 2
    line = _one_clean_line(result)
    assert str(blocker / "state") in line
    assert "Not a directory" in line


def test_a_read_only_state_directory_exits_2_naming_the_database(tmp_path: pathlib.Path) -> None:
    """On a read-only file system the daemon exits 2 with one line naming the database and the cause."""
    with _read_only_mount(tmp_path / "ro") as mount:
        _remount(mount, "ro")
        for command in ("serve", "migrate"):
            result = _run(tmp_path, f'state_directory = "{mount}"\n', command)
            assert result.returncode == 2, result.stderr
            line = _one_clean_line(result)
            assert str(mount / "campaignd.db") in line
            assert "unable to open database file" in line or "readonly" in line, line
        result = _run(tmp_path, f'state_directory = "{mount / "state"}"\n')
        assert result.returncode == 2
        assert _one_clean_line(result) == (
            f"campaignd: cannot use the state directory {mount / 'state'}: Read-only file system"
        )


def test_a_database_that_became_read_only_exits_2(tmp_path: pathlib.Path) -> None:
    """A migrated database whose directory turned read-only is refused at start, not at the first write."""
    with _read_only_mount(tmp_path / "ro") as mount:
        assert _run(tmp_path, f'state_directory = "{mount}"\n', "migrate").returncode == 0
        _remount(mount, "ro")
        result = _run(tmp_path, f'state_directory = "{mount}"\n')
        assert result.returncode == 2, result.stderr
        assert str(mount / "campaignd.db") in _one_clean_line(result)


def test_a_file_that_is_not_a_database_exits_2(tmp_path: pathlib.Path) -> None:
    """A state directory whose campaignd.db is not an SQLite file exits 2 naming it."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "campaignd.db").write_bytes(b"this is not a database" * 100)
    result = _run(tmp_path, f'state_directory = "{state}"\n')
    assert result.returncode == 2
    line = _one_clean_line(result)
    assert str(state / "campaignd.db") in line
    assert "not a database" in line


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_an_unreachable_postgresql_exits_1(tmp_path: pathlib.Path) -> None:
    """A PostgreSQL server that refuses connections may come up: exit 1 with one line naming it."""
    url = f"postgresql://campaignd@127.0.0.1:{_free_port()}/campaignd"
    result = _run(tmp_path, f'state_directory = "{tmp_path / "state"}"\n[database]\nurl = "{url}"\n')
    assert result.returncode == 1
    line = _one_clean_line(result)
    assert line.startswith(f"campaignd: cannot open the database {url}: ")
    assert "refused" in line


def test_a_postgresql_database_that_does_not_exist_exits_2(tmp_path: pathlib.Path) -> None:
    """A server that answers that the database does not exist will not change by restarting: exit 2."""
    base = os.environ.get(PG_URL_ENV, DEFAULT_PG_URL).rsplit("/", 1)[0]
    url = f"{base}/campaignd_no_such_database"
    result = _run(tmp_path, f'state_directory = "{tmp_path / "state"}"\n[database]\nurl = "{url}"\n')
    assert result.returncode == 2
    assert "campaignd_no_such_database" in _one_clean_line(result)


def test_a_runtime_directory_that_cannot_be_made_exits_2_naming_it(tmp_path: pathlib.Path) -> None:
    """A runtime directory (for the socket) under a regular file exits 2 with one line, no traceback."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = _run(tmp_path, f'state_directory = "{tmp_path / "state"}"\n', runtime=str(blocker / "run"))
    assert result.returncode == 2
    line = _one_clean_line(result)
    assert str(blocker / "run") in line
    assert "Not a directory" in line


def test_an_http_address_in_use_exits_1_naming_it(tmp_path: pathlib.Path) -> None:
    """[http] address taken by another process may free up: exit 1 with one line naming it."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = f'state_directory = "{tmp_path / "state"}"\n[http]\naddress = "127.0.0.1:{port}"\n'
        result = _run(tmp_path, config)
    assert result.returncode == 1
    assert _one_clean_line(result).startswith("campaignd: cannot listen on [http] address: ")


def test_a_metrics_address_in_use_exits_1_naming_it(tmp_path: pathlib.Path) -> None:
    """[metrics] address taken by another process exits 1 with one line naming it, like [http],
    and leaves no socket behind."""
    runtime = tempfile.mkdtemp(prefix="cd-", dir="/tmp")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = f'state_directory = "{tmp_path / "state"}"\n[metrics]\naddress = "127.0.0.1:{port}"\n'
        result = _run(tmp_path, config, runtime=runtime)
    assert result.returncode == 1
    assert _one_clean_line(result).startswith("campaignd: cannot listen on [metrics] address: ")
    assert not pathlib.Path(runtime, "campaignd.sock").exists()


def test_migrate_to_an_unknown_revision_exits_2_with_one_line(tmp_path: pathlib.Path) -> None:
    """`campaignd migrate --revision R` with a revision that does not exist is bad input: exit 2,
    one line naming it, no traceback."""
    state = tmp_path / "state"
    result = _run(tmp_path, f'state_directory = "{state}"\n', "migrate", "--revision", "0099")
    assert result.returncode == 2, result.stderr
    line = _one_clean_line(result)
    assert line.startswith("campaignd: --revision 0099: ")
    assert "0099" in line.removeprefix("campaignd: --revision 0099: ")


def test_a_second_daemon_on_one_sqlite_database_is_refused_until_the_first_dies(
    tmp_path: pathlib.Path,
) -> None:
    """SQLite has no cluster: a second `serve` or a `migrate` on the file a daemon serves exits 1
    naming the database and the daemon's pid, while the daemon goes on serving; once it is killed
    (kill -9, no clean-up) the database can be used again."""
    state = tmp_path / "state"
    config = f'state_directory = "{state}"\n'
    runtime = tempfile.mkdtemp(prefix="cd-", dir="/tmp")
    path = tmp_path / "first.toml"
    path.write_text(f'[daemon]\nruntime_directory = "{runtime}"\nshutdown_timeout = 2.0\n' + config)
    serving = subprocess.Popen([CAMPAIGND, "serve", "--config", str(path)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not pathlib.Path(runtime, "campaignd.sock").exists():
            assert serving.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for command in ("serve", "migrate"):
            result = _run(tmp_path, config, command)
            assert result.returncode == 1, result.stderr
            assert _one_clean_line(result) == (
                f"campaignd: the database {state / 'campaignd.db'} is in use by another campaignd "
                f"(pid {serving.pid}): only one daemon may use an SQLite database"
            )
        assert serving.poll() is None
        serving.kill()
        serving.wait(10)
        result = _run(tmp_path, config, "migrate")
        assert result.returncode == 0, result.stderr
    finally:
        if serving.poll() is None:
            serving.kill()
            serving.wait(10)


def test_a_lock_file_that_cannot_be_opened_exits_2_naming_it(tmp_path: pathlib.Path) -> None:
    """A lock file beside the database that cannot be opened is a problem waiting will not fix."""
    state = tmp_path / "state"
    state.mkdir()
    lock = state / "campaignd.db.lock"
    lock.symlink_to(lock.name)
    result = _run(tmp_path, f'state_directory = "{state}"\n')
    assert result.returncode == 2, result.stderr
    assert _one_clean_line(result) == (
        f"campaignd: cannot use the lock file {lock}: Too many levels of symbolic links"
    )


# Stands in for an SQLite library older than 3.35 (this machine's is newer): the version the
# sqlite3 module reports is set before campaignd starts.
_OLD_SQLITE = (
    "import sqlite3, sys\n"
    "sqlite3.sqlite_version_info, sqlite3.sqlite_version = (3, 31, 1), '3.31.1'\n"
    "from campaignd.daemon import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def test_an_sqlite_library_too_old_exits_2_naming_the_version_needed(tmp_path: pathlib.Path) -> None:
    """serve and migrate refuse an SQLite library without UPDATE … RETURNING before they touch
    the database, instead of failing at the first lease."""
    state = tmp_path / "state"
    config = tmp_path / "config.toml"
    runtime = tempfile.mkdtemp(prefix="cd-", dir="/tmp")
    config.write_text(f'[daemon]\nruntime_directory = "{runtime}"\nstate_directory = "{state}"\n')
    for command in ("serve", "migrate"):
        result = subprocess.run(
            [sys.executable, "-c", _OLD_SQLITE, command, "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2, result.stderr
        line = _one_clean_line(result)
        assert "SQLite library is 3.31.1" in line, line
        assert "3.35.0 or newer" in line, line
        assert not (state / "campaignd.db").exists()
