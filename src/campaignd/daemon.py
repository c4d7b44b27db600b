"""`campaignd`: the daemon (serve), its schema migrations (migrate), and check-config."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import pathlib
import signal
import sys
from collections.abc import Iterator, Sequence
from types import FrameType

# Exit status after a second SIGTERM cut the graceful shutdown short (128 + SIGTERM).
EXIT_INTERRUPTED = 128 + signal.SIGTERM


class StartingSignals:
    """SIGTERM and SIGINT that come while `serve` starts, before its event loop handles them: the
    first is noted, for the start to stop at its next step, and a second exits at once."""

    def __init__(self) -> None:
        self.requested = False
        self.caught = False

    def catch(self) -> None:
        """Note SIGTERM and SIGINT from now on."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._noted)
        self.caught = True

    def _noted(self, _signum: int, _frame: FrameType | None) -> None:
        if self.requested:
            os._exit(EXIT_INTERRUPTED)
        self.requested = True


STARTING = StartingSignals()
if (__name__ == "__main__" or pathlib.Path(sys.argv[0]).name == "campaignd") and sys.argv[1:2] == ["serve"]:
    # The imports below take a second or more; a SIGTERM meanwhile would otherwise end the
    # process silently with 143, the status of a stop cut short.
    STARTING.catch()

import sqlalchemy as sa
from alembic.util import CommandError

from campaignd import __version__, logs, loops, metrics
from campaignd.api.auth import Authenticator
from campaignd.api.front_process import FrontError, FrontProcess, private_socket
from campaignd.api.server import ApiServer, SocketInUseError
from campaignd.config import ConfigError, Problem, Settings, load
from campaignd.http import HttpListener, MountError
from campaignd.plugin.manager import PluginError, Plugins
from campaignd.sdnotify import Notifier, watchdog_interval
from campaignd.store import claim, migrate
from campaignd.store.db import Database, Fault, UnsupportedSqliteError, create_engine
from campaignd.wiring import Components

log = logs.get("campaignd.daemon")

# Allocations between the garbage collector's young passes once serving (Python's default: 700).
YOUNG_COLLECTION = 20_000


class Daemon:
    """One running campaignd process: settings that reload can change, the database, the API."""

    def __init__(self, settings: Settings, config_path: pathlib.Path | None) -> None:
        self.settings = settings
        self.config_path = config_path
        self.notifier = Notifier()
        self.authenticator = Authenticator(settings.auth.tokens)
        self._stop = asyncio.Event()
        self._stopping = False

    async def run(self) -> int:
        """Serve until SIGTERM or SIGINT; returns the exit status."""
        if _stopped_starting():
            return 0
        # Every config problem, the plugins' options included, stops the start before the
        # state directory or the database is touched.
        plugins = load_plugins(self.settings)
        if _stopped_starting():
            return 0
        with exclusive(self.settings):
            return await self._serve(plugins)

    async def _serve(self, plugins: Plugins) -> int:
        database = open_database(self.settings, migrate_schema=self.settings.daemon.migrate_on_start)
        if _stopped_starting():
            database.close()
            return 0
        front = FrontProcess(self.settings, self.config_path) if self.settings.grpc.front_process else None
        api = ApiServer(
            self.settings, self.authenticator, private_socket(self.settings) if front is not None else None
        )
        components = Components(api, database, lambda: self.settings, plugins)
        try:
            # A cluster member joins before it answers: a Pause must reach it from the start.
            await components.node.start()
        except Exception as exc:
            database.close()
            raise StartupError(f"cannot join the cluster: {str(exc).strip()}", EXIT_TRANSIENT) from None

        async def abandon(message: str, status: int) -> StartupError:
            await components.node.stop()
            database.close()
            return StartupError(message, status)

        try:
            await api.start()
        except (SocketInUseError, RuntimeError, OSError) as exc:
            raise await abandon(*_listen_problem(self.settings, exc)) from None
        if front is not None:
            try:
                await front.start()
            except (FrontError, SocketInUseError, RuntimeError, OSError) as exc:
                await api.stop(0)
                raise await abandon(*_listen_problem(self.settings, exc)) from None
        tcp_port = front.tcp_port if front is not None else api.tcp_port
        http = None
        if self.settings.http.address:
            http = HttpListener(self.settings.http, plugins, components.recorder)
            try:
                await http.start()
            except OSError as exc:
                await _stop_api(front, api)
                raise await abandon(f"cannot listen on [http] address: {exc}", EXIT_TRANSIENT) from None
            except MountError as exc:
                await http.stop()
                await _stop_api(front, api)
                raise await abandon(f"cannot start the http routes: {exc}", EXIT_TRANSIENT) from None
        metrics_port = None
        if self.settings.metrics.address:
            try:
                metrics_port = metrics.serve(self.settings.metrics.address)
            except OSError as exc:
                if http is not None:
                    await http.stop()
                await _stop_api(front, api)
                raise await abandon(f"cannot listen on [metrics] address: {exc}", EXIT_TRANSIENT) from None
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._on_terminate)
        loop.add_signal_handler(signal.SIGINT, self._on_terminate)
        loop.add_signal_handler(
            signal.SIGHUP, lambda: asyncio.ensure_future(self._reload(components, http, front))
        )
        if STARTING.requested:
            # A signal came while the listeners started: they close again, without serving.
            self._on_terminate()
        else:
            await api.set_serving(True)

        health_updates: set[asyncio.Future[None]] = set()

        def storage_changed(fault: Fault | None, _ended: Fault | None) -> None:
            # Probes and load balancers see a daemon that cannot write as not serving.
            if not self._stopping:
                update = asyncio.ensure_future(api.set_serving(fault is None))
                health_updates.add(update)
                update.add_done_callback(health_updates.discard)

        database.on_fault(storage_changed)
        # What the start built lives as long as the process: out of the collector's full passes,
        # which otherwise walk it every few seconds while a campaign sends, holding the GIL.
        gc.freeze()
        # What a send holds for a moment (a batch, its results, the futures of its window) outlived
        # the default 700 allocations between young collections, was promoted, and was walked again
        # by the older generations' passes (a full pass held the GIL for 15-19 ms). With young
        # passes every YOUNG_COLLECTION allocations it dies young: the collector's time over a
        # 40,000-message SMS benchmark fell from about 0.5 s to 0.15 s, with no full pass once
        # serving (the two left come before, during the start).
        gc.set_threshold(YOUNG_COLLECTION, 10, 100)
        engine = components.engine
        watchdog: asyncio.Future[None] | None = None
        engine_task: asyncio.Future[None] | None = None
        rates_task: asyncio.Future[None] | None = None
        if not self._stopping:
            log.info(
                "serving",
                metrics_port=metrics_port,
                socket=str(self.settings.socket_path),
                tcp_port=tcp_port,
                database=database.dialect,
                version=__version__,
            )
            self.notifier.ready(f"serving on {self.settings.socket_path}")
            watchdog = asyncio.ensure_future(self._watchdog(api))
            engine_task = asyncio.ensure_future(engine.run()) if engine is not None else None
            rates_task = asyncio.ensure_future(components.rates.run())
        await self._stop.wait()

        self.notifier.stopping()
        log.info("stopping", grace_seconds=self.settings.daemon.shutdown_timeout)
        await api.set_serving(False)
        await loops.call_on(api.loop, components.close)
        grace = self.settings.daemon.shutdown_timeout
        # No new calls and no new leases; sends in flight finish and are recorded within the bound.
        await asyncio.gather(
            _stop_api(front, api, grace), engine.stop(grace) if engine is not None else asyncio.sleep(0)
        )
        if engine_task is not None:
            engine_task.cancel()
        if rates_task is not None:
            rates_task.cancel()
        if http is not None:
            await http.stop()
        await components.transports.close()
        await components.node.stop()
        await asyncio.get_running_loop().run_in_executor(None, components.renderer.close)
        if watchdog is not None:
            watchdog.cancel()
        await asyncio.get_running_loop().run_in_executor(None, database.close)
        self.notifier.close()
        log.info("stopped")
        return 0

    def _on_terminate(self) -> None:
        if self._stopping:
            log.warning("second termination signal: exiting at once")
            os._exit(EXIT_INTERRUPTED)
        self._stopping = True
        self._stop.set()

    async def _reload(
        self, components: Components, http: HttpListener | None, front: FrontProcess | None
    ) -> None:
        self.notifier.reloading()
        try:
            new = load(self.config_path)
            if new.plugins == self.settings.plugins:
                await components.reconfigure(new)
                if http is not None:
                    # The plugins' routes take the reloaded options (a rotated secret, say).
                    http.reconfigure()
            self.authenticator.set_tokens(new.auth.tokens)
            if front is not None:
                await front.reload()
        except ConfigError as exc:
            log.error("reload failed; keeping the running settings", problems=[str(p) for p in exc.problems])
            self.notifier.ready("reload failed; see the log")
            return
        fixed = _restart_only_changes(self.settings, new)
        if fixed:
            log.warning("these settings take effect only after a restart", sections=fixed)
        logs.configure(new.log.level, new.log.format)
        # Only what can change live is taken; the rest keeps its running value until a restart.
        self.settings = new.model_copy(
            update={section: getattr(self.settings, section) for section in RESTART_ONLY}
        )
        log.info("reloaded", log_level=new.log.level)
        self.notifier.ready(f"serving on {self.settings.socket_path}")

    async def _watchdog(self, api: ApiServer) -> None:
        interval = watchdog_interval()
        if interval is None:
            return
        # Pinging from the main event loop, once the API's has answered too, means that either
        # loop blocked stops the pings, and systemd restarts us.
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            if await api.alive(interval / 2):
                self.notifier.watchdog()
            await asyncio.sleep(max(0.0, interval - (loop.time() - started)))


async def _stop_api(front: FrontProcess | None, api: ApiServer, grace: float = 0.0) -> None:
    """The front first (its calls under way go on through the daemon's socket), then the API."""
    if front is not None:
        await front.stop(grace)
    await api.stop(grace)


def _listen_problem(settings: Settings, exc: Exception) -> tuple[str, int]:
    """The start's error, and exit status, for listeners that could not be bound, the daemon's own
    or its front process's."""
    if isinstance(exc, RuntimeError):
        # grpc cannot bind the TCP address (in use, or not an address of this host).
        return f"cannot listen: {exc}", EXIT_TRANSIENT
    if isinstance(exc, OSError):
        return _os_problem(f"the runtime directory {settings.socket_path.parent}", exc), EXIT_CONFIG
    # The socket in use, or a front that could not start: either may pass.
    return str(exc), EXIT_TRANSIENT


RESTART_ONLY = ("daemon", "database", "grpc", "plugins", "metrics", "templates", "http", "cluster")


def _restart_only_changes(old: Settings, new: Settings) -> list[str]:
    changed = [section for section in RESTART_ONLY if getattr(old, section) != getattr(new, section)]
    if old.engine.enabled != new.engine.enabled:
        changed.append("engine.enabled")
    return changed


# Exit statuses: a problem a restart cannot fix (config, permissions, a database that cannot be
# opened) is 2, so that systemd's RestartPreventExitStatus=2 stops the restart loop; what may
# pass by itself (a database server not up yet, a socket still in use) is 1.
EXIT_TRANSIENT = 1
EXIT_CONFIG = 2


class StartupError(Exception):
    """The daemon cannot start: one line for the operator, and the exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _stopped_starting() -> bool:
    """Whether a signal came while the daemon started (before it serves): then what the start
    made so far is undone, and it exits 0 as a graceful stop does."""
    if not STARTING.requested:
        return False
    log.info("stopping", grace_seconds=0.0, starting=True)
    log.info("stopped")
    return True


def load_plugins(settings: Settings) -> Plugins:
    """The plugins, loaded and given their options; ConfigError for any problem."""
    try:
        plugins = Plugins(settings.plugins.load)
    except PluginError as exc:
        raise ConfigError([Problem("plugins", str(exc))]) from None
    plugins.configure(settings)
    return plugins


def open_database(settings: Settings, *, migrate_schema: bool) -> Database:
    """Open the configured database, migrating it first when asked; refuse an outdated schema.
    StartupError naming the path (or server) and the cause when it cannot be opened or written."""
    url = settings.database_url
    engine = _engine(settings, pool_size=settings.database.pool_size, serving=True)
    try:
        if migrate_schema:
            migrate.upgrade(engine)
        else:
            current, head = migrate.current_revision(engine), migrate.head_revision()
            if current != head:
                raise ConfigError([_schema_problem(current, head)])
        database = Database(engine)
        # A database that can be read but not written (a read-only directory or file) would
        # otherwise fail at the first write, long after the start was reported good.
        database.write_sync(lambda conn: None)
    except sa.exc.DBAPIError as exc:
        engine.dispose()
        raise _database_problem(url, exc) from None
    return database


@contextlib.contextmanager
def exclusive(settings: Settings) -> Iterator[None]:
    """This process alone on its SQLite database for the block (store/claim.py), the state
    directory made first; StartupError (transient) while another daemon holds it."""
    if settings.database_url.startswith("sqlite:///"):
        try:
            settings.state_directory.mkdir(parents=True, exist_ok=True, mode=0o750)
        except OSError as exc:
            raise StartupError(
                _os_problem(f"the state directory {settings.state_directory}", exc), EXIT_CONFIG
            ) from None
    try:
        with claim.exclusive(settings.database_url):
            yield
    except claim.InUseError as exc:
        raise StartupError(str(exc), EXIT_TRANSIENT) from None
    except claim.LockFileError as exc:
        raise StartupError(str(exc), EXIT_CONFIG) from None


def _engine(settings: Settings, *, pool_size: int = 10, serving: bool = False) -> sa.Engine:
    """The database engine, inside `exclusive` (which made the state directory for SQLite). A
    serving daemon's sessions end when idle in a transaction for a heartbeat lease: by then the
    daemon has lost its membership anyway, and its locks must not outlive it."""
    url = settings.database_url
    lease = settings.cluster.heartbeat_lease if serving else None
    try:
        return create_engine(url, pool_size=pool_size, idle_in_transaction=lease)
    except UnsupportedSqliteError as exc:
        raise StartupError(
            f"cannot use the database {url.removeprefix('sqlite:///')}: {exc}", EXIT_CONFIG
        ) from None


def _os_problem(what: str, exc: OSError) -> str:
    return f"cannot use {what}: {exc.strerror or exc}"


def _database_problem(url: str, exc: sa.exc.DBAPIError) -> StartupError:
    """One line naming the database (a SQLite file's path; a server URL without its password)."""
    cause = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
    if url.startswith("sqlite:///"):
        return StartupError(
            f"cannot open the database {url.removeprefix('sqlite:///')}: {cause}", EXIT_CONFIG
        )
    # A server that refuses or drops the connection, or is starting up, may be fine soon; one
    # that answered that the login or the database is wrong will not change by waiting. libpq
    # gives no SQLSTATE for errors while connecting, so those are told by their text.
    permanent = getattr(exc.orig, "sqlstate", None) is not None or any(
        text in cause for text in _PERMANENT_CONNECT_ERRORS
    )
    return StartupError(
        f"cannot open the database {_without_password(url).replace('+psycopg://', '://', 1)}: {cause}",
        EXIT_CONFIG if permanent else EXIT_TRANSIENT,
    )


_PERMANENT_CONNECT_ERRORS = (
    "does not exist",
    "authentication failed",
    "no pg_hba.conf entry",
    "permission denied",
    "password authentication",
    "certificate",
)


def _without_password(url: str) -> str:
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


def _schema_problem(current: str | None, head: str) -> Problem:
    return Problem(
        "database",
        f"schema is at {current or 'nothing'}, this campaignd needs {head}: run `campaignd migrate`",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="campaignd", description=__doc__)
    parser.add_argument("--version", action="version", version=f"campaignd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the daemon in the foreground")
    serve.add_argument(
        "--config",
        type=pathlib.Path,
        help="config file (default: $CAMPAIGND_CONFIG, /etc/campaignd/config.toml, or none)",
    )
    mig = sub.add_parser("migrate", help="bring the database schema up to date and exit")
    mig.add_argument("--config", type=pathlib.Path, help="config file")
    mig.add_argument("--revision", default="head", help="target revision (default: head)")
    check = sub.add_parser("check-config", help="validate a config file; exit 2 listing every problem")
    check.add_argument("file", type=pathlib.Path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `campaignd` command."""
    args = _parser().parse_args(argv)
    if args.command == "serve" and not STARTING.caught:
        # Called as a function rather than run as the program: signals are noted from here.
        STARTING.catch()
    try:
        if args.command == "check-config":
            # Its output is the verdict alone (scripts read it); warnings still show.
            logs.configure("warning")
            load_plugins(load(args.file))
            print(f"{args.file}: ok")
            return 0
        settings = load(args.config)
        logs.configure(settings.log.level, settings.log.format)
        if args.command == "migrate":
            with exclusive(settings):
                engine = _engine(settings)
                try:
                    before = migrate.current_revision(engine)
                    migrate.upgrade(engine, args.revision)
                    after = migrate.current_revision(engine)
                except sa.exc.DBAPIError as exc:
                    raise _database_problem(settings.database_url, exc) from None
                except CommandError as exc:
                    # A revision that does not exist (or is not ahead of the database's) is bad input.
                    raise StartupError(f"--revision {args.revision}: {exc}", EXIT_CONFIG) from None
                finally:
                    engine.dispose()
            print(f"schema: {before or 'empty'} -> {after}")
            return 0
        return asyncio.run(Daemon(settings, args.config).run())
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"campaignd: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except StartupError as exc:
        print(f"campaignd: {exc.message}", file=sys.stderr)
        return exc.status


if __name__ == "__main__":
    sys.exit(main())
