"""`campaignd`: the daemon (serve), its schema migrations (migrate), and check-config."""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import signal
import sys
from collections.abc import Sequence

from campaignd import __version__, logs, metrics
from campaignd.api.auth import Authenticator
from campaignd.api.server import ApiServer, SocketInUseError
from campaignd.api.services import Services
from campaignd.config import ConfigError, Problem, Settings, load
from campaignd.plugin.manager import PluginError, Plugins
from campaignd.sdnotify import Notifier, watchdog_interval
from campaignd.store import migrate
from campaignd.store.db import Database, Fault, create_engine

log = logs.get("campaignd.daemon")

# Exit status after a second SIGTERM cut the graceful shutdown short (128 + SIGTERM).
EXIT_INTERRUPTED = 128 + signal.SIGTERM


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
        database = open_database(self.settings, migrate_schema=self.settings.daemon.migrate_on_start)
        api = ApiServer(self.settings, self.authenticator)
        try:
            services = Services(api, database, lambda: self.settings)
        except PluginError as exc:
            database.close()
            log.error("cannot load plugins", error=str(exc))
            return 1
        except ConfigError:
            database.close()
            raise
        try:
            await api.start()
        except (SocketInUseError, RuntimeError) as exc:
            database.close()
            log.error("cannot listen", error=str(exc))
            return 1
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._on_terminate)
        loop.add_signal_handler(signal.SIGINT, self._on_terminate)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self._reload(services)))
        metrics_port = metrics.serve(self.settings.metrics.address) if self.settings.metrics.address else None
        await api.set_serving(True)

        health_updates: set[asyncio.Future[None]] = set()

        def storage_changed(fault: Fault | None, _ended: Fault | None) -> None:
            # Probes and load balancers see a daemon that cannot write as not serving.
            if not self._stopping:
                update = asyncio.ensure_future(api.set_serving(fault is None))
                health_updates.add(update)
                update.add_done_callback(health_updates.discard)

        database.on_fault(storage_changed)
        log.info(
            "serving",
            metrics_port=metrics_port,
            socket=str(self.settings.socket_path),
            tcp_port=api.tcp_port,
            database=database.dialect,
            version=__version__,
        )
        self.notifier.ready(f"serving on {self.settings.socket_path}")
        watchdog = asyncio.ensure_future(self._watchdog())
        engine = services.engine
        engine_task = asyncio.ensure_future(engine.run()) if engine is not None else None
        await self._stop.wait()

        self.notifier.stopping()
        log.info("stopping", grace_seconds=self.settings.daemon.shutdown_timeout)
        await api.set_serving(False)
        services.close()
        grace = self.settings.daemon.shutdown_timeout
        # No new calls and no new leases; sends in flight finish and are recorded within the bound.
        await asyncio.gather(api.stop(grace), engine.stop(grace) if engine is not None else asyncio.sleep(0))
        if engine_task is not None:
            engine_task.cancel()
        await services.transports.close()
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

    async def _reload(self, services: Services) -> None:
        self.notifier.reloading()
        try:
            new = load(self.config_path)
            if new.plugins == self.settings.plugins:
                await services.reconfigure(new)
            self.authenticator.set_tokens(new.auth.tokens)
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

    async def _watchdog(self) -> None:
        interval = watchdog_interval()
        if interval is None:
            return
        # Pinging from the event loop means a blocked loop stops the pings, and systemd restarts us.
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)


RESTART_ONLY = ("daemon", "database", "grpc", "plugins", "metrics")


def _restart_only_changes(old: Settings, new: Settings) -> list[str]:
    changed = [section for section in RESTART_ONLY if getattr(old, section) != getattr(new, section)]
    if old.engine.enabled != new.engine.enabled:
        changed.append("engine.enabled")
    return changed


def open_database(settings: Settings, *, migrate_schema: bool) -> Database:
    """Open the configured database, migrating it first when asked; refuse an outdated schema."""
    url = settings.database_url
    if url.startswith("sqlite:///"):
        settings.state_directory.mkdir(parents=True, exist_ok=True, mode=0o750)
    engine = create_engine(url, pool_size=settings.database.pool_size)
    if migrate_schema:
        migrate.upgrade(engine)
    else:
        current, head = migrate.current_revision(engine), migrate.head_revision()
        if current != head:
            raise ConfigError([_schema_problem(current, head)])
    return Database(engine)


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
    try:
        if args.command == "check-config":
            settings = load(args.file)
            try:
                Plugins(settings.plugins.load).check_config(settings)
            except PluginError as exc:
                raise ConfigError([Problem("plugins", str(exc))]) from None
            print(f"{args.file}: ok")
            return 0
        settings = load(args.config)
        logs.configure(settings.log.level, settings.log.format)
        if args.command == "migrate":
            engine = create_engine(settings.database_url)
            if settings.database_url.startswith("sqlite:///"):
                settings.state_directory.mkdir(parents=True, exist_ok=True, mode=0o750)
            before = migrate.current_revision(engine)
            migrate.upgrade(engine, args.revision)
            after = migrate.current_revision(engine)
            engine.dispose()
            print(f"schema: {before or 'empty'} -> {after}")
            return 0
        return asyncio.run(Daemon(settings, args.config).run())
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"campaignd: {problem}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
