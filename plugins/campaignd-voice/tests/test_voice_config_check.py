"""Voice transport options through the real daemon's config check."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest


def check_config(tmp_path: pathlib.Path, options: str) -> subprocess.CompletedProcess[str]:
    """`campaignd check-config` on a config with one voice transport of `options`."""
    config = tmp_path / "config.toml"
    config.write_text(
        f'[transports.trunk-a]\ntype = "voice"\noptions = {{ trunk = "127.0.0.1:5060", {options} }}\n',
        encoding="utf-8",
    )
    return subprocess.run(
        [sys.executable, "-m", "campaignd.daemon", "check-config", str(config)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@pytest.mark.parametrize("address", ["not an address", "::1", "192.0.2.300"])
def test_a_local_address_baresip_cannot_bind_is_a_config_error(tmp_path: pathlib.Path, address: str) -> None:
    """local_address must be an IPv4 address: anything else is named by check-config, exit 2."""
    checked = check_config(tmp_path, f'local_address = "{address}"')
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert "transports.trunk-a.options.local_address" in checked.stderr


@pytest.mark.parametrize("server", ["8.8.8.8", "localhost:53"])
def test_a_dns_server_baresip_cannot_decode_is_a_config_error(tmp_path: pathlib.Path, server: str) -> None:
    """dns_server must be an IP address with its port: baresip exits at start on anything else."""
    checked = check_config(tmp_path, f'dns_server = "{server}"')
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert "transports.trunk-a.options.dns_server" in checked.stderr


@pytest.mark.parametrize("options", ['local_address = "127.0.0.1"', 'dns_server = "[::1]:53"'])
def test_good_addresses_pass_the_config_check(tmp_path: pathlib.Path, options: str) -> None:
    """An IPv4 local address and a DNS server given as IPv6 address and port are accepted."""
    checked = check_config(tmp_path, options)
    assert checked.returncode == 0, checked.stdout + checked.stderr
