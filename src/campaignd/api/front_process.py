"""The daemon's side of its front process (`api/front.py`): start it, wait until it listens,
start it again if it dies, tell it to reload, stop it first when the daemon stops."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import signal
import subprocess
import sys
from typing import BinaryIO

from campaignd import logs
from campaignd.api.server import SocketInUseError
from campaignd.config import Settings

log = logs.get("campaignd.daemon")

# How long a front may take to import and listen before the start is given up.
START_TIMEOUT = 60.0
# How long a reload waits for the front to confirm it.
RELOAD_TIMEOUT = 5.0
# Seconds before a front that died is started again, doubling up to the last.
RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
# A front that served this long before it died starts again after the first delay.
STEADY_SECONDS = 60.0


class FrontError(Exception):
    """The front could not start (timed out, exited, refused its config)."""


# What the front says it could not listen for, as the errors of the daemon's own listeners.
_LISTEN_ERRORS: dict[str, type[Exception]] = {
    "in-use": SocketInUseError,
    "cannot-listen": RuntimeError,
    "os-error": OSError,
}


def private_socket(settings: Settings) -> pathlib.Path:
    """The daemon's own socket behind its front, beside the configured one."""
    path = settings.socket_path
    return path.with_name(f"{path.stem}-core{path.suffix or '.sock'}")


class FrontProcess:
    """One front process at a time, watched from the daemon's event loop."""

    def __init__(self, settings: Settings, config_path: pathlib.Path | None) -> None:
        self.settings = settings
        self.config_path = config_path
        self.tcp_port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._replies: asyncio.Future[None] | None = None
        self._reloaded = asyncio.Event()
        self._stopping = False

    async def start(self) -> None:
        """Start the front and return once it listens; FrontError, or the error of the listener it
        could not bind (SocketInUseError, RuntimeError, OSError), as ApiServer.start raises."""
        await self._spawn()
        self._watch = asyncio.ensure_future(self._restart_when_dead())

    async def _spawn(self) -> None:
        read_end, write_end = os.pipe()
        command = [
            sys.executable,
            "-m",
            "campaignd.api.front",
            "--upstream",
            str(private_socket(self.settings)),
            "--ready-fd",
            str(write_end),
            "--parent",
            str(os.getpid()),
        ]
        if self.config_path is not None:
            command += ["--config", str(self.config_path)]
        # The service manager hears from the daemon alone.
        env = {
            k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC")
        }
        try:
            # Forked from this (the main) thread, not a worker's: the front's death signal follows
            # the thread that forked it, which lives as long as the daemon.
            self._proc = subprocess.Popen(command, pass_fds=(write_end,), env=env)  # noqa: ASYNC220
        finally:
            os.close(write_end)
        replies = os.fdopen(read_end, "rb")
        try:
            line = await asyncio.wait_for(asyncio.to_thread(_read_line, replies), START_TIMEOUT)
        except TimeoutError:
            self._proc.kill()
            replies.close()
            raise FrontError(f"the API's front process did not listen within {START_TIMEOUT:.0f} s") from None
        kind, _, detail = line.partition(" ")
        if kind == "ok":
            self.tcp_port = int(detail) or None
            self._replies = asyncio.ensure_future(self._read_replies(replies))
            return
        replies.close()
        await asyncio.to_thread(self._proc.wait)
        if not kind:
            raise FrontError(f"the API's front process exited with status {self._proc.returncode}")
        raise _LISTEN_ERRORS.get(kind, FrontError)(detail)

    async def _restart_when_dead(self) -> None:
        attempt = 0
        while True:
            proc = self._proc
            assert proc is not None
            started = asyncio.get_running_loop().time()
            status = await asyncio.to_thread(proc.wait)
            if self._stopping:
                return
            if asyncio.get_running_loop().time() - started > STEADY_SECONDS:
                attempt = 0
            delay = RESTART_DELAYS[min(attempt, len(RESTART_DELAYS) - 1)]
            log.error("the API's front process exited; starting it again", status=status, delay_seconds=delay)
            await asyncio.sleep(delay)
            attempt += 1
            try:
                await self._spawn()
            except (FrontError, SocketInUseError, RuntimeError, OSError) as exc:
                log.error("the API's front process cannot start", reason=str(exc))
            else:
                log.info("the API's front process serves again", pid=self._proc.pid if self._proc else None)

    async def _read_replies(self, replies: BinaryIO) -> None:
        # Until the front exits (end of file): each reload it finished.
        try:
            while line := await asyncio.to_thread(_read_line, replies):
                if line == "reloaded":
                    self._reloaded.set()
        finally:
            replies.close()

    async def reload(self) -> None:
        """Have the front take the reloaded tokens, limits and log level, and return once it has
        (or after RELOAD_TIMEOUT): a token added works through it once the reload is reported."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._reloaded.clear()
        self._proc.send_signal(signal.SIGHUP)
        try:
            await asyncio.wait_for(self._reloaded.wait(), RELOAD_TIMEOUT)
        except TimeoutError:
            log.warning("the API's front process did not confirm the reload", seconds=RELOAD_TIMEOUT)

    async def stop(self, grace: float) -> None:
        """Stop the front: no new calls, `grace` seconds for those under way, then killed."""
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, grace + 5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(proc.wait, 5.0)


def _read_line(replies: BinaryIO) -> str:
    return replies.readline().decode(errors="replace").strip()
