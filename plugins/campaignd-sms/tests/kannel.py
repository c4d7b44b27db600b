"""Real Kannel for the tests: bearerbox, smsbox and fakesmsc on loopback, with free ports and a
config of their own in a temporary directory."""

from __future__ import annotations

import os
import pathlib
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

FAKESMSC = "/usr/lib/kannel/test/fakesmsc"
USER, PASSWORD = "tester", "foobar"
_RECEIVED = re.compile(r"Got message \d+: <(\S+) (\S+) text")


def free_port() -> int:
    """A port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Kannel:
    """The running boxes."""

    directory: pathlib.Path
    sendsms_port: int
    fifo: pathlib.Path
    _fifo_writer: int = -1

    @property
    def sendsms_url(self) -> str:
        """smsbox's sendsms URL."""
        return f"http://127.0.0.1:{self.sendsms_port}/cgi-bin/sendsms"

    def received(self) -> list[tuple[str, str]]:
        """(sender, receiver) of every message fakesmsc got."""
        text = (self.directory / "fakesmsc.out").read_text(errors="replace")
        return _RECEIVED.findall(text)

    def reply(self, number: str, text: str) -> None:
        """Type an inbound message into fakesmsc: from `number` to the short code."""
        os.write(self._fifo_writer, f"{number.lstrip('+')} 12345 text {text}\n".encode())


CONFIG = """\
group = core
admin-port = {admin}
admin-interface = 127.0.0.1
admin-password = adminpw
status-password = statuspw
admin-allow-ip = "127.0.0.1"
smsbox-port = {box}
smsbox-interface = 127.0.0.1
box-deny-ip = "*.*.*.*"
box-allow-ip = "127.0.0.1"
log-file = "{dir}/bearerbox.log"
log-level = 1
dlr-storage = internal

group = smsc
smsc = fake
smsc-id = fake1
port = {fake}
our-host = 127.0.0.1
connect-allow-ip = 127.0.0.1

group = smsbox
bearerbox-host = 127.0.0.1
bearerbox-port = {box}
sendsms-port = {sendsms}
sendsms-interface = 127.0.0.1
global-sender = 12345
log-file = "{dir}/smsbox.log"
log-level = 1

group = sendsms-user
username = {user}
password = {password}
user-allow-ip = "127.0.0.1"
max-messages = 6
concatenation = true

group = sms-service
keyword = default
get-url = "{mo_url}"
max-messages = 0
catch-all = true
"""


def _wait_port(port: int, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


@contextmanager
def running_kannel(directory: pathlib.Path, mo_url: str) -> Iterator[Kannel]:
    """bearerbox, fakesmsc and smsbox; inbound messages go to `mo_url` (Kannel's escapes
    allowed, e.g. %p for the sender and %a for the text)."""
    ports = {name: free_port() for name in ("admin", "box", "fake", "sendsms")}
    conf = directory / "kannel.conf"
    conf.write_text(
        CONFIG.format(dir=directory, user=USER, password=PASSWORD, mo_url=mo_url, **ports), encoding="utf-8"
    )
    fifo = directory / "fakesmsc.in"
    os.mkfifo(fifo)
    kannel = Kannel(directory, ports["sendsms"], fifo)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with (directory / "bearerbox.out").open("wb") as out:
            processes.append(subprocess.Popen(["bearerbox", "-v", "1", str(conf)], stdout=out, stderr=out))
        _wait_port(ports["fake"])
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        kannel._fifo_writer = os.open(fifo, os.O_WRONLY)
        os.set_blocking(reader, True)
        with (directory / "fakesmsc.out").open("wb") as out:
            processes.append(
                subprocess.Popen(
                    [FAKESMSC, "-H", "127.0.0.1", "-r", str(ports["fake"])],
                    stdin=reader,
                    stdout=out,
                    stderr=out,
                )
            )
        os.close(reader)
        with (directory / "smsbox.out").open("wb") as out:
            processes.append(subprocess.Popen(["smsbox", "-v", "1", str(conf)], stdout=out, stderr=out))
        _wait_port(ports["sendsms"])
        yield kannel
    finally:
        if kannel._fifo_writer >= 0:
            os.close(kannel._fifo_writer)
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
