"""The shipped systemd unit: systemd itself accepts it, and it keeps its hardening."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

UNIT = pathlib.Path(__file__).resolve().parents[2] / "systemd" / "campaignd.service"
SHIPPED_EXEC_START = "ExecStart=/usr/bin/campaignd "

# Directive -> the value the unit must give it.
REQUIRED = {
    "Type": "notify",
    "NotifyAccess": "main",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "WatchdogSec": "30",
    "Restart": "on-failure",
    "User": "campaignd",
    "Group": "campaignd",
    "DynamicUser": "no",
    "StateDirectory": "campaignd",
    "StateDirectoryMode": "0750",
    "RuntimeDirectory": "campaignd",
    "RuntimeDirectoryMode": "0755",
    "UMask": "0027",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "NoNewPrivileges": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "SystemCallFilter": "@system-service",
    "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "RestrictNamespaces": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
}


def directives(text: str) -> dict[str, str]:
    """`Key=value` lines of the unit (the last one wins, as for systemd's single-value settings)."""
    found = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found[key.strip()] = value.strip()
    return found


def campaignd_executable() -> pathlib.Path:
    """The `campaignd` script of the environment running the tests."""
    beside_python = pathlib.Path(sys.executable).parent / "campaignd"
    if beside_python.exists():
        return beside_python
    found = shutil.which("campaignd")
    assert found is not None, "the campaignd script is not installed in this environment"
    return pathlib.Path(found)


def test_unit_passes_systemd_analyze_verify(tmp_path: pathlib.Path) -> None:
    """`systemd-analyze verify` accepts the unit, with ExecStart pointed at the installed campaignd."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian/Ubuntu package: systemd)")
    text = UNIT.read_text(encoding="utf-8")
    assert text.count(SHIPPED_EXEC_START) == 1
    unit = tmp_path / "campaignd.service"
    unit.write_text(
        text.replace(SHIPPED_EXEC_START, f"ExecStart={campaignd_executable()} "), encoding="utf-8"
    )

    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )

    output = result.stdout + result.stderr
    # verify also reports on units the machine itself ships; only lines about ours count.
    about_unit = [line for line in output.splitlines() if "campaignd" in line]
    assert result.returncode == 0, output
    assert about_unit == [], output


def test_unit_keeps_its_hardening() -> None:
    """The unit sets the notify protocol, its user and directories, and every hardening directive."""
    found = directives(UNIT.read_text(encoding="utf-8"))
    missing_or_different = {
        key: (found.get(key), wanted) for key, wanted in REQUIRED.items() if found.get(key) != wanted
    }
    assert missing_or_different == {}


def test_unit_stop_timeout_outlasts_the_graceful_shutdown() -> None:
    """TimeoutStopSec is longer than the default daemon.shutdown_timeout, so systemd never cuts it short."""
    from campaignd.config import Settings

    found = directives(UNIT.read_text(encoding="utf-8"))
    assert float(found["TimeoutStopSec"]) > Settings().daemon.shutdown_timeout


def test_unit_starts_the_daemon_with_the_system_config() -> None:
    """ExecStart runs `campaignd serve` with /etc/campaignd/config.toml and nothing writable is added."""
    found = directives(UNIT.read_text(encoding="utf-8"))
    assert found["ExecStart"] == "/usr/bin/campaignd serve --config /etc/campaignd/config.toml"
    assert "ReadWritePaths" not in found


TEMPLATE = UNIT.parent / "campaignd@.service"


def test_template_unit_passes_systemd_analyze_verify(tmp_path: pathlib.Path) -> None:
    """`systemd-analyze verify` accepts an instance of the cluster template unit, campaignd@a."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian/Ubuntu package: systemd)")
    text = TEMPLATE.read_text(encoding="utf-8")
    assert text.count(SHIPPED_EXEC_START) == 1
    (tmp_path / "campaignd@.service").write_text(
        text.replace(SHIPPED_EXEC_START, f"ExecStart={campaignd_executable()} "), encoding="utf-8"
    )

    result = subprocess.run(
        [analyze, "verify", str(tmp_path / "campaignd@a.service")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert [line for line in output.splitlines() if "campaignd" in line] == [], output


def test_template_unit_keeps_the_hardening_with_directories_per_instance() -> None:
    """The template sets what the single unit sets, with a state and runtime directory and a
    config file per instance."""
    from campaignd.config import Settings

    found = directives(TEMPLATE.read_text(encoding="utf-8"))
    wanted = {**REQUIRED, "StateDirectory": "campaignd/%i", "RuntimeDirectory": "campaignd/%i"}
    assert {key: (found.get(key), value) for key, value in wanted.items() if found.get(key) != value} == {}
    assert found["ExecStart"] == "/usr/bin/campaignd serve --config /etc/campaignd/%i.toml"
    assert float(found["TimeoutStopSec"]) > Settings().daemon.shutdown_timeout
    assert "ReadWritePaths" not in found
