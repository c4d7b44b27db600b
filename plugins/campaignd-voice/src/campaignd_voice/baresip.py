"""baresip under campaignd's control: its process, its ctrl_tcp connection, and the calls it places.

ctrl_tcp speaks netstrings (`<length>:<bytes>,`) holding JSON: commands
`{"command": ..., "params": ..., "token": ...}`, answered by `{"response": true, "ok": ...,
"data": ..., "token": ...}`, and events `{"event": true, "type": "CALL_RINGING", "accountaor":
..., "param": ...}`. Each call goes through a user agent of its own, created for it, whose
`audio_source` is the call's prompt: baresip takes a call's audio source from its account, and
the account's address tells the events of one call from another's.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import logging
import os
import pathlib
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from campaignd_voice.settings import SipSettings

CONNECT_TIMEOUT = 10.0  # seconds a started baresip has to open its ctrl_tcp port
COMMAND_TIMEOUT = 10.0  # seconds baresip has to answer one command
MAX_FRAME = 1_000_000  # the longest netstring accepted from baresip
# Times baresip is started on new ports when it exits at start with EADDRINUSE (98), which is
# what its main() returns when a port chosen free was bound by another process meanwhile.
PORT_ATTEMPTS = 3
EADDRINUSE = errno.EADDRINUSE
SETPRIV = shutil.which("setpriv")  # util-linux: sets the parent-death signal, then runs the program


log = logging.getLogger("campaignd_voice.baresip")


class _PortTakenError(Exception):
    """baresip could not bind a port it was given."""


class BaresipError(Exception):
    """baresip cannot be used: it cannot be reached or started (`fatal`: retrying will not mend
    it, e.g. it refused to start again or the trunk refused registration)."""

    def __init__(self, message: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.fatal = fatal


class CommandError(Exception):
    """baresip answered a command with ok false."""


@dataclass(frozen=True)
class Event:
    """One event baresip reported about a call or a registration."""

    type: str
    param: str
    time: float  # monotonic seconds when it arrived


def netstring(payload: Mapping[str, Any]) -> bytes:
    """`payload` as one ctrl_tcp frame."""
    data = json.dumps(payload).encode()
    return str(len(data)).encode() + b":" + data + b","


class Control:
    """One ctrl_tcp connection: commands with their answers, events routed by account address."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._tokens = itertools.count(1)
        self._answers: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._watchers: dict[str, asyncio.Queue[Event | None]] = {}
        # Commands that must follow one another with no other command between them (choose a user
        # agent, then dial through it) run under this lock.
        self.sequence = asyncio.Lock()
        self.closed = asyncio.Event()
        self._reading = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, host: str, port: int, within: float) -> Control:
        """Connect to ctrl_tcp at host:port, trying until `within` seconds have passed."""
        deadline = time.monotonic() + within
        while True:
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError as exc:
                if time.monotonic() >= deadline:
                    raise BaresipError(f"cannot reach baresip's ctrl_tcp at {host}:{port}: {exc}") from exc
                await asyncio.sleep(0.05)
                continue
            return cls(reader, writer)

    def watch(self, aor: str) -> asyncio.Queue[Event | None]:
        """The events of account `aor` from now on; None once the connection is lost."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        if self.closed.is_set():
            queue.put_nowait(None)
        self._watchers[aor] = queue
        return queue

    def unwatch(self, aor: str) -> None:
        """Stop routing the events of `aor`."""
        self._watchers.pop(aor, None)

    async def command(self, name: str, params: str = "") -> str:
        """Run one command; its answer's text. CommandError when baresip says it failed,
        BaresipError when the connection is lost."""
        if self.closed.is_set():
            raise BaresipError("the connection to baresip is lost")
        token = f"t{next(self._tokens)}"
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._answers[token] = answer
        try:
            self._writer.write(netstring({"command": name, "params": params, "token": token}))
            await self._writer.drain()
            reply = await asyncio.wait_for(asyncio.shield(answer), COMMAND_TIMEOUT)
        except (OSError, ConnectionError) as exc:
            raise BaresipError(f"the connection to baresip is lost: {exc}") from exc
        except TimeoutError:
            raise BaresipError(f"baresip did not answer {name!r} within {COMMAND_TIMEOUT:g} s") from None
        finally:
            self._answers.pop(token, None)
        data = str(reply.get("data") or "")
        if not reply.get("ok"):
            raise CommandError(f"{name}: {data.strip() or 'failed'}")
        return data

    async def close(self) -> None:
        """Close the connection."""
        self._reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reading
        self._lost()
        self._writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self._writer.wait_closed()

    async def _read(self) -> None:
        try:
            while True:
                frame = await self._frame()
                if frame is None:
                    break
                self._dispatch(frame)
        except (OSError, ConnectionError, ValueError):
            pass
        finally:
            self._lost()

    async def _frame(self) -> dict[str, Any] | None:
        try:
            head = await self._reader.readuntil(b":")
        except asyncio.IncompleteReadError:
            return None
        size = int(head[:-1])
        if not 0 <= size <= MAX_FRAME:
            raise ValueError(f"netstring of {size} bytes")
        body = await self._reader.readexactly(size + 1)
        if body[-1:] != b",":
            raise ValueError("netstring without its comma")
        value = json.loads(body[:-1])
        return value if isinstance(value, dict) else {}

    def _dispatch(self, frame: dict[str, Any]) -> None:
        if frame.get("response"):
            answer = self._answers.get(str(frame.get("token")))
            if answer is not None and not answer.done():
                answer.set_result(frame)
        elif frame.get("event"):
            queue = self._watchers.get(str(frame.get("accountaor", "")))
            if queue is not None:
                queue.put_nowait(
                    Event(str(frame.get("type", "")), str(frame.get("param", "")), time.monotonic())
                )

    def _lost(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for answer in self._answers.values():
            if not answer.done():
                answer.set_exception(BaresipError("the connection to baresip is lost"))
        for queue in self._watchers.values():
            queue.put_nowait(None)


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    """A port on `host` that nothing is bound to now."""
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
    return port


def free_sip_port(host: str) -> int:
    """A port on `host` free for SIP over UDP and over TCP now: baresip listens on both."""
    while True:
        port = free_port(host, socket.SOCK_DGRAM)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
        return port


def sweep_homes() -> None:
    """Remove the configuration directories of baresips whose daemon is gone: a daemon that was
    killed could not remove its own."""
    for home in pathlib.Path(tempfile.gettempdir()).glob("campaignd-baresip-*-*"):
        pid = home.name.split("-")[2]
        try:
            if not pid.isdigit() or home.stat().st_uid != os.getuid():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(home, ignore_errors=True)
        except OSError:
            continue


def write_config(directory: pathlib.Path, settings: SipSettings, ctrl_port: int, sip_port: int) -> None:
    """baresip's config and (empty) accounts in `directory`: accounts are added over ctrl_tcp."""
    rtp_low = settings.rtp_ports[0]
    rtp_high = settings.rtp_ports[1]
    lines = [
        ("poll_method", "epoll"),
        ("sip_listen", f"{settings.local_address}:{sip_port}"),
        ("module_path", settings.module_path),
        # A called party's audio is not listened to: the bridge drops it.
        ("audio_player", "aubridge,sink"),
        ("audio_source", "aufile,/dev/null"),
        ("audio_alert", "aufile,/dev/null"),
        ("rtp_ports", f"{rtp_low}-{rtp_high}"),
        ("module", "g711.so"),
        ("module", "aufile.so"),
        ("module", "aubridge.so"),
        ("module_app", "account.so"),
        ("module_app", "menu.so"),
        ("module_app", "ctrl_tcp.so"),
        ("ctrl_tcp_listen", f"127.0.0.1:{ctrl_port}"),
        ("dns_server", settings.dns_server),
    ]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config").write_text("".join(f"{k}\t\t{v}\n" for k, v in lines), encoding="utf-8")
    (directory / "accounts").write_text("", encoding="utf-8")


class Baresip:
    """The open form of a `sip` transport: a baresip it started and supervises, or one it attaches
    to, and the state of the trunk registration.

    A started baresip that dies is started again when the next call needs it, up to
    `settings.restarts` times; after that, or when it does not come up, it is fatal.
    """

    def __init__(self, name: str, settings: SipSettings, rate: float = 0.0) -> None:
        self.name = name
        self.settings = settings
        self.rate = rate
        self.slots = asyncio.Semaphore(settings.concurrency)
        self._next_call = 0.0  # monotonic time the next dial may be sent, when paced
        self._pacing = asyncio.Lock()
        self.fatal = ""  # why the transport is unusable for good, once it is
        self.restarts = 0
        self.silent_calls = 0  # calls in a row the trunk gave no answer to
        self.closed = False
        self._serial = itertools.count(1)
        self._control: Control | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._starting = asyncio.Lock()
        self._home: tempfile.TemporaryDirectory[str] | None = None
        self._log: Any = None

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """One call's turn to dial, held from its admission until baresip acknowledged its dial:
        with a rate, it begins 1/rate after the previous dial went to baresip (see `dialling`).
        The gate's limit allows `rate` calls in any second, and so a burst of them at the start
        of each second; a trunk that counts calls per second may refuse such a burst, so calls
        are spread evenly instead, and measured where they leave, not where they are admitted."""
        async with self._pacing:
            wait = self._next_call - time.monotonic()
            if self.rate > 0 and wait > 0:
                await asyncio.sleep(wait)
            yield

    def dialling(self) -> None:
        """A dial is being sent to baresip now: the next may go 1/rate later."""
        if self.rate > 0:
            self._next_call = time.monotonic() + 1 / self.rate

    def next_aor(self) -> str:
        """A fresh account address for one call."""
        return f"sip:cd{os.getpid()}x{next(self._serial)}@{self.settings.account_host}"

    async def control(self) -> Control:
        """The ctrl_tcp connection, starting or restarting baresip when needed; BaresipError when
        it cannot be had."""
        if self.fatal:
            raise BaresipError(self.fatal, fatal=True)
        control = self._control
        if control is not None and not control.closed.is_set():
            return control
        async with self._starting:
            if self.fatal:
                raise BaresipError(self.fatal, fatal=True)
            if self._control is not None and not self._control.closed.is_set():
                return self._control
            if self.closed:
                raise BaresipError("the transport is closed")
            if self._control is not None:
                await self._control.close()  # the connection to a baresip that went away
                self._control = None
            try:
                self._control = await self._open()
            except BaresipError as exc:
                if exc.fatal:
                    self.fatal = str(exc)
                raise
            return self._control

    async def _open(self) -> Control:
        settings = self.settings
        if settings.attach:
            host, _, port = settings.attach.rpartition(":")
            control = await Control.connect(host, int(port), settings.connect_timeout)
        else:
            control = await self._start()
        try:
            await self._register(control)
        except BaresipError:
            await control.close()
            raise
        return control

    async def _start(self) -> Control:
        if self._process is not None:
            if self.restarts >= self.settings.restarts:
                raise BaresipError(
                    f"baresip died and was restarted {self.restarts} times already; not again", fatal=True
                )
            self.restarts += 1
            await self._reap()
        if self._home is None:
            sweep_homes()
            self._home = tempfile.TemporaryDirectory(prefix=f"campaignd-baresip-{os.getpid()}-{self.name}-")
        home = pathlib.Path(self._home.name)
        if self._log is None:
            self._log = (home / "baresip.log").open("ab")
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                return await self._launch(home)
            except _PortTakenError:
                # Another process bound a port between the probe and baresip's bind.
                log.warning("baresip found a port taken at start (attempt %d); trying others", attempt)
        raise BaresipError(
            f"baresip exited at start {PORT_ATTEMPTS} times with a port in use (status {EADDRINUSE})",
            fatal=True,
        )

    async def _launch(self, home: pathlib.Path) -> Control:
        ctrl_port = free_port()
        sip_port = self.settings.sip_port or free_sip_port(self.settings.local_address)
        write_config(home, self.settings, ctrl_port, sip_port)
        program = [self.settings.baresip, "-f", str(home)]
        if SETPRIV is not None:
            # baresip goes when the daemon goes, even when the daemon is killed.
            program = [SETPRIV, "--pdeathsig", "TERM", "--", *program]
        try:
            self._process = await asyncio.create_subprocess_exec(
                *program,
                stdin=asyncio.subprocess.DEVNULL,
                # Its own directory, not the daemon's: whatever baresip writes stays there.
                cwd=str(home),
                stdout=self._log,
                stderr=self._log,
                start_new_session=True,
            )
        except OSError as exc:
            raise BaresipError(f"cannot start {self.settings.baresip}: {exc}", fatal=True) from exc
        process = self._process
        connecting = asyncio.create_task(Control.connect("127.0.0.1", ctrl_port, CONNECT_TIMEOUT))
        exited = asyncio.create_task(process.wait())
        done, _ = await asyncio.wait({connecting, exited}, return_when=asyncio.FIRST_COMPLETED)
        if exited in done:
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, BaresipError):
                await connecting
            if process.returncode == EADDRINUSE and not self.settings.sip_port:
                raise _PortTakenError
            raise BaresipError(f"baresip exited at start with status {process.returncode}", fatal=True)
        exited.cancel()
        try:
            return connecting.result()
        except BaresipError as exc:
            await self._reap()
            raise BaresipError(f"baresip started but {exc}", fatal=True) from exc

    async def _register(self, control: Control) -> None:
        """Register with the trunk, when it takes registrations; BaresipError(fatal) when refused."""
        settings = self.settings
        if not settings.registers:
            return
        aor = f"sip:{settings.username}@{settings.account_host}"
        events = control.watch(aor)
        try:
            with contextlib.suppress(CommandError):
                await control.command("uadel", aor)
            await control.command("uanew", settings.account(aor, register=True))
            deadline = time.monotonic() + settings.register_timeout
            while True:
                try:
                    event = await asyncio.wait_for(events.get(), max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    raise BaresipError(
                        f"the trunk {settings.trunk} did not answer the registration within"
                        f" {settings.register_timeout:g} s",
                        fatal=True,
                    ) from None
                if event is None:
                    raise BaresipError("baresip was lost while registering")
                if event.type == "REGISTER_OK":
                    return
                if event.type == "REGISTER_FAIL":
                    raise BaresipError(
                        f"the trunk {settings.trunk} refused registration: {event.param}", fatal=True
                    )
        finally:
            control.unwatch(aor)

    async def _reap(self) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    async def close(self) -> None:
        """Hang up, disconnect, and stop the baresip this transport started."""
        self.closed = True
        control = self._control
        if control is not None:
            if not control.closed.is_set():
                with contextlib.suppress(BaresipError, CommandError):
                    await control.command("hangup")
                    if self.settings.registers and self.settings.attach:
                        # An attached baresip outlives the transport: take our account off it.
                        await control.command(
                            "uadel", f"sip:{self.settings.username}@{self.settings.account_host}"
                        )
            await control.close()
        await self._reap()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._home is not None:
            self._home.cleanup()
            self._home = None
