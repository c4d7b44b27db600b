"""The systemd notify protocol (sd_notify(3)) over $NOTIFY_SOCKET, without libsystemd."""

from __future__ import annotations

import contextlib
import os
import socket
import time


class Notifier:
    """Sends state strings to the service manager; does nothing when not run by systemd."""

    def __init__(self, address: str | None = None) -> None:
        self._address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._socket: socket.socket | None = None
        if self._address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens."""
        return self._socket is not None

    def notify(self, *fields: str) -> None:
        """Send newline-separated `KEY=VALUE` fields in one datagram."""
        if self._socket is None:
            return
        # A leading "@" names a socket in the abstract namespace.
        target = "\0" + self._address[1:] if self._address.startswith("@") else self._address
        # The manager may have gone away; the daemon keeps running regardless.
        with contextlib.suppress(OSError):
            self._socket.sendto("\n".join(fields).encode(), target)

    def ready(self, status: str = "") -> None:
        """READY=1: the daemon serves."""
        self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> None:
        """RELOADING=1 with the monotonic time systemd uses to match the reload."""
        self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> None:
        """STOPPING=1: shutdown has begun."""
        self.notify("STOPPING=1")

    def watchdog(self) -> None:
        """WATCHDOG=1: the event loop is alive."""
        self.notify("WATCHDOG=1")

    def close(self) -> None:
        """Release the socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval() -> float | None:
    """Half of $WATCHDOG_USEC in seconds when the watchdog is meant for this process, else None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1_000_000 / 2
    except ValueError:
        return None
