"""sms transport options as `campaignd check-config` reads them: the examples of docs/sms.md
pass, and options that would be ignored or would expose the callback listener are refused by
name."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

DOCS = pathlib.Path(__file__).resolve().parents[3] / "docs" / "sms.md"

KANNEL = """\
[transports.kannel]
type = "sms"
concurrency = 20

[transports.kannel.options]
kind = "kannel"
sendsms_url = "http://127.0.0.1:13013/cgi-bin/sendsms"
username = "campaignd"
kannel_password = { env = "KANNEL_PASSWORD" }
callback_url = "http://127.0.0.1:18090"
callback_secret = { env = "CALLBACK_SECRET" }
"""

SMPP = """\
[transports.smsc-a]
type = "sms"
rate = 100
concurrency = 20

[transports.smsc-a.options]
kind = "smpp"
host = "smpp.example.net"
system_id = "campaignd"
password = { env = "SMSC_PASSWORD" }
"""

ENV = {
    "KANNEL_PASSWORD": "foobar",
    "CALLBACK_SECRET": "a-callback-secret-of-some-length",
    "SMSC_PASSWORD": "x",
}


def check_config(path: pathlib.Path, config: str) -> subprocess.CompletedProcess[str]:
    """`campaignd check-config` of `config` written at `path`."""
    path.write_text(config, encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "campaignd.daemon", "check-config", str(path)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **ENV},
    )


def test_the_examples_of_the_docs_pass(tmp_path: pathlib.Path) -> None:
    """Every TOML example of docs/sms.md, its secret files made, is a valid config."""
    text = DOCS.read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", text, re.DOTALL)
    assert len(blocks) >= 3
    config = "\n".join(blocks).replace("/etc/campaignd/", f"{tmp_path}/")
    for name in re.findall(rf"{tmp_path}/([\w.-]+)", config):
        (tmp_path / name).write_text("a-secret-of-16-chars", encoding="utf-8")
    (tmp_path / "smsc-a.secret").write_text("secret", encoding="utf-8")  # at most 8 characters
    result = check_config(tmp_path / "docs.toml", config)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "kannel.example.net"])  # noqa: S104
def test_a_callback_listener_off_loopback_is_refused(tmp_path: pathlib.Path, host: str) -> None:
    """callback_host must be a loopback address: the secret in the path is the only guard."""
    config = KANNEL + f'callback_host = "{host}"\n'
    result = check_config(tmp_path / "bad.toml", config)
    assert result.returncode == 2
    assert "transports.kannel.options.callback_host: must be a loopback address" in result.stderr


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_a_callback_listener_on_loopback_is_accepted(tmp_path: pathlib.Path, host: str) -> None:
    """Any loopback address will do."""
    result = check_config(tmp_path / "good.toml", KANNEL + f'callback_host = "{host}"\n')
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("config", "option"),
    [
        (KANNEL + "registered_delivery = false\n", "transports.kannel.options.registered_delivery"),
        (KANNEL + "port = 2775\n", "transports.kannel.options.port"),
        (KANNEL + 'ca_file = "/etc/ssl/ca.pem"\n', "transports.kannel.options.ca_file"),
        (KANNEL + 'system_type = "x"\n', "transports.kannel.options.system_type"),
        (SMPP + "callback_port = 18090\n", "transports.smsc-a.options.callback_port"),
        (SMPP + 'callback_host = "127.0.0.1"\n', "transports.smsc-a.options.callback_host"),
        (
            SMPP + 'callback_secret = { env = "CALLBACK_SECRET" }\n',
            "transports.smsc-a.options.callback_secret",
        ),
    ],
)
def test_an_option_of_the_other_kind_is_refused_by_name(
    tmp_path: pathlib.Path, config: str, option: str
) -> None:
    """An option the transport's kind does not use would be silently ignored: it is refused."""
    result = check_config(tmp_path / "bad.toml", config)
    assert result.returncode == 2
    assert option in result.stderr
