"""`campaignctl` as an operator runs it: a subprocess whose output the tests read."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.integration.conftest import DaemonProcess

# Variables that would point campaignctl somewhere other than the daemon under test.
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGND_")}
CTL = [sys.executable, "-m", "campaignd.cli"]


def run_ctl(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run campaignctl with `args` (and `stdin`) and capture its output."""
    return subprocess.run(
        [*CTL, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**CLEAN_ENV, **(env or {})},
        check=False,
    )


def ctl_at(daemon: DaemonProcess, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run campaignctl against `daemon`'s socket."""
    return run_ctl("--socket", str(daemon.socket_path), *args, stdin=stdin)


def ok(daemon: DaemonProcess, *args: str, stdin: str | None = None) -> str:
    """Run campaignctl against `daemon`, require exit 0, return stdout."""
    result = ctl_at(daemon, *args, stdin=stdin)
    assert result.returncode == 0, f"{args}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout
