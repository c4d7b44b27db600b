"""The config loader: defaults, the example file, validation problems, and secret sources."""

from __future__ import annotations

import math
import os
import pathlib
import re
import typing
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from campaignd import config
from campaignd.config import ConfigError, Settings, load, parse
from campaignd.daemon import main

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "config.toml.example"
PASSWORD = "correct-horse-battery-staple"
TOKEN = "tok-8c1f0b7e2a"


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    """Keep the machine's own config and systemd directories out of every test."""
    monkeypatch.delenv(config.CONFIG_ENV, raising=False)
    monkeypatch.setattr(config, "SYSTEM_CONFIG", tmp_path / "absent" / "config.toml")
    for name in ("STATE_DIRECTORY", "RUNTIME_DIRECTORY", "XDG_STATE_HOME", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(name, raising=False)


def write(tmp_path: pathlib.Path, text: str, name: str = "config.toml") -> pathlib.Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse(data)
    return {p.path: p.message for p in info.value.problems}


def setting_keys(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Every dotted key of a settings model, descending into sections, optional sections and lists."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        yield key
        for nested in _models_in(field.annotation):
            yield from setting_keys(nested, f"{key}.")


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in typing.get_args(annotation):
        yield from _models_in(arg)


NAMED_TABLES = ("transports", "channel_types")


def keys_shown(text: str) -> set[str]:
    """Dotted keys of the TOML text, commented out or not: table headers and `key =` lines."""
    shown: set[str] = set()
    section = ""
    for raw in text.splitlines():
        line = raw.lstrip("#").strip()
        if header := re.fullmatch(r"\[\[?([\w.-]+)\]\]?", line):
            section = header.group(1)
            shown.add(section)
        elif assignment := re.match(r"([\w.]+)\s*=", line):
            dotted = f"{section}.{assignment.group(1)}" if section else assignment.group(1)
            parts = dotted.split(".")
            if parts[0] in NAMED_TABLES and len(parts) > 2:
                # [transports.<name>] stands for every transport: drop the name.
                del parts[1]
            shown.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return shown


def test_defaults_without_any_file() -> None:
    """With no --config, no $CAMPAIGND_CONFIG and no /etc file, every setting has its default."""
    settings = load(None)
    assert settings == Settings()
    assert settings.daemon.shutdown_timeout == 30.0
    assert settings.daemon.migrate_on_start is True
    assert settings.log.level == "info"
    assert settings.grpc.socket_mode == "0660"
    assert settings.grpc.tcp_address == ""
    assert settings.auth.tokens == []


def test_config_env_var_names_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    """$CAMPAIGND_CONFIG is read when no path is given."""
    monkeypatch.setenv(config.CONFIG_ENV, str(write(tmp_path, '[log]\nlevel = "debug"\n')))
    assert load(None).log.level == "debug"


def test_system_config_is_read_when_present(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    """/etc/campaignd/config.toml is read when neither --config nor $CAMPAIGND_CONFIG is given."""
    monkeypatch.setattr(config, "SYSTEM_CONFIG", write(tmp_path, "[limits]\nmax_watchers = 7\n"))
    assert load(None).limits.max_watchers == 7


def test_systemd_directories_come_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """$STATE_DIRECTORY and $RUNTIME_DIRECTORY from systemd set the database and socket locations."""
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/campaignd:/var/lib/other")
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/campaignd")
    settings = Settings()
    assert settings.database_url == "sqlite:////var/lib/campaignd/campaignd.db"
    assert settings.socket_path == pathlib.Path("/run/campaignd/campaignd.sock")


def test_root_without_systemd_uses_var_lib_and_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run as root outside systemd, state goes to /var/lib/campaignd and the socket to /run/campaignd."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    settings = Settings()
    assert settings.state_directory == pathlib.Path("/var/lib/campaignd")
    assert settings.runtime_directory == pathlib.Path("/run/campaignd")


def test_user_without_systemd_uses_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run as a user outside systemd, the XDG state and runtime directories are used."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", "/home/u/.local/state")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    settings = Settings()
    assert settings.state_directory == pathlib.Path("/home/u/.local/state/campaignd")
    assert settings.socket_path == pathlib.Path("/run/user/1000/campaignd/campaignd.sock")


def test_example_file_loads_and_sets_only_defaults() -> None:
    """config.toml.example is a valid config whose active lines all equal the defaults."""
    assert load(EXAMPLE) == Settings()


def test_example_file_shows_every_setting() -> None:
    """Every setting of every section, nested ones included, appears in config.toml.example."""
    shown = keys_shown(EXAMPLE.read_text(encoding="utf-8"))
    expected = set(setting_keys(Settings))
    assert "auth.tokens.secret.env" in expected  # the walk reaches into lists and secret sources
    assert expected - shown == set()


def test_unknown_keys_are_errors_naming_the_path() -> None:
    """A misspelt or unknown key is refused with its full dotted path, also inside a list."""
    found = problems(
        {
            "grpc": {"sockett": "/run/x.sock"},
            "auth": {"tokens": [{"name": "a", "role": "viewer", "secret": {"env": "T"}, "colour": "red"}]},
            "statistics": {},
        }
    )
    assert found == {
        "grpc.sockett": "unknown key",
        "auth.tokens[0].colour": "unknown key",
        "statistics": "unknown key",
    }


def test_every_problem_is_reported_at_once() -> None:
    """Several mistakes in one file are all listed, not only the first."""
    found = problems(
        {
            "log": {"level": "loud"},
            "limits": {"max_page_size": 0},
            "database": {"pool_size": "many"},
            "daemon": {"shutdown_timeout": -1},
        }
    )
    assert set(found) == {
        "log.level",
        "limits.max_page_size",
        "database.pool_size",
        "daemon.shutdown_timeout",
    }


def test_tcp_listener_without_tls_is_refused() -> None:
    """A tcp_address without a [grpc.tls] section is an error: TCP is TLS only."""
    found = problems({"grpc": {"tcp_address": "[::]:50051"}})
    assert list(found) == ["grpc"]
    assert "tls" in found["grpc"]


def test_tcp_listener_with_tls_is_accepted(tmp_path: pathlib.Path) -> None:
    """A tcp_address with readable certificate and key files configured is valid."""
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("cert")
    key.write_text("key")
    settings = parse(
        {"grpc": {"tcp_address": "[::]:50051", "tls": {"cert_file": str(cert), "key_file": str(key)}}}
    )
    assert settings.grpc.tls is not None
    assert settings.grpc.tls.client_ca_file is None


def test_unreadable_tls_files_are_reported(tmp_path: pathlib.Path) -> None:
    """Missing certificate, key or client CA files are each reported with their key path."""
    tls = {
        "cert_file": str(tmp_path / "c"),
        "key_file": str(tmp_path / "k"),
        "client_ca_file": str(tmp_path / "ca"),
    }
    found = problems({"grpc": {"tcp_address": "[::]:50051", "tls": tls}})
    assert sorted(found) == ["grpc.tls.cert_file", "grpc.tls.client_ca_file", "grpc.tls.key_file"]


def test_database_url_with_password_is_refused() -> None:
    """A password inside database.url is refused, and the message does not repeat it."""
    found = problems({"database": {"url": f"postgresql://campaignd:{PASSWORD}@db.example.org/campaignd"}})
    assert list(found) == ["database.url"]
    assert "password" in found["database.url"]
    assert PASSWORD not in found["database.url"]


def test_database_url_of_another_kind_is_refused() -> None:
    """Only sqlite: and postgresql: URLs are accepted."""
    assert list(problems({"database": {"url": "mysql://db/campaignd"}})) == ["database.url"]


def test_database_password_from_file(tmp_path: pathlib.Path) -> None:
    """The database password is read from the named file, whitespace stripped, into the URL."""
    secret = write(tmp_path, f"{PASSWORD}\n", "db-password")
    settings = parse(
        {
            "database": {
                "url": "postgresql://campaignd@db.example.org/campaignd",
                "password": {"file": str(secret)},
            }
        }
    )
    assert settings.database_url == f"postgresql+psycopg://campaignd:{PASSWORD}@db.example.org/campaignd"


def test_token_secret_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A token secret is read from the named environment variable."""
    monkeypatch.setenv("CAMPAIGND_TEST_TOKEN", TOKEN)
    settings = parse(
        {"auth": {"tokens": [{"name": "ci", "role": "operator", "secret": {"env": "CAMPAIGND_TEST_TOKEN"}}]}}
    )
    assert settings.auth.tokens[0].secret.read().get_secret_value() == TOKEN


def test_missing_secret_file_is_reported_with_its_key_path(tmp_path: pathlib.Path) -> None:
    """A secret file that cannot be read is an error naming the key path and the file."""
    missing = tmp_path / "nope"
    found = problems(
        {
            "database": {"url": "postgresql://campaignd@db/campaignd", "password": {"file": str(missing)}},
            "auth": {"tokens": [{"name": "a", "role": "admin", "secret": {"file": str(missing)}}]},
        }
    )
    assert set(found) == {"database.password.file", "auth.tokens[0].secret.file"}
    assert str(missing) in found["database.password.file"]


def test_unset_secret_env_is_reported_with_its_key_path() -> None:
    """A secret environment variable that is not set is an error naming the key path."""
    found = problems({"database": {"password": {"env": "CAMPAIGND_TEST_UNSET_PASSWORD"}}})
    expected = "environment variable CAMPAIGND_TEST_UNSET_PASSWORD is not set or empty"
    assert found == {"database.password.env": expected}


def test_secret_source_needs_exactly_one_of_file_or_env() -> None:
    """A secret source with both or neither of file and env is refused."""
    assert list(problems({"database": {"password": {}}})) == ["database.password"]
    assert list(problems({"database": {"password": {"file": "/x", "env": "X"}}})) == ["database.password"]


def test_duplicate_token_names_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two tokens with the same name are an error."""
    monkeypatch.setenv("CAMPAIGND_TEST_TOKEN", TOKEN)
    token = {"name": "ci", "role": "viewer", "secret": {"env": "CAMPAIGND_TEST_TOKEN"}}
    assert list(problems({"auth": {"tokens": [token, token]}})) == ["auth.tokens"]


def test_file_that_is_not_toml_names_the_file(tmp_path: pathlib.Path) -> None:
    """A syntax error is reported against the file's path."""
    path = write(tmp_path, "[log\nlevel = 1\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert [p.path for p in info.value.problems] == [str(path)]
    assert "not valid TOML" in info.value.problems[0].message


def test_check_config_reports_bad_keys_and_exits_2(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`campaignd check-config` prints every problem as `campaignd: key.path: message` and returns 2."""
    path = write(tmp_path, '[limits]\nmax_page_size = 0\n[grpc]\nsockett = "/x"\n')
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "campaignd: grpc.sockett: unknown key" in err
    assert any(line.startswith("campaignd: limits.max_page_size: ") for line in err)


def test_check_config_accepts_a_good_file(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`campaignd check-config` returns 0 on a valid file and prints its verdict alone."""
    path = write(tmp_path, '[log]\nformat = "json"\n')
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    assert out.out == f"{path}: ok\n"


def test_secrets_never_show_in_repr_or_str(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    """repr, str and a JSON dump of Settings never contain a secret's value."""
    monkeypatch.setenv("CAMPAIGND_TEST_TOKEN", TOKEN)
    secret = write(tmp_path, PASSWORD, "db-password")
    settings = parse(
        {
            "database": {"url": "postgresql://campaignd@db/campaignd", "password": {"file": str(secret)}},
            "auth": {"tokens": [{"name": "ci", "role": "admin", "secret": {"env": "CAMPAIGND_TEST_TOKEN"}}]},
        }
    )
    assert settings.database.password is not None
    shown = [
        repr(settings),
        str(settings),
        settings.model_dump_json(),
        repr(settings.database.password.read()),
    ]
    for text in shown:
        assert PASSWORD not in text
        assert TOKEN not in text


def test_empty_secret_is_reported(tmp_path: pathlib.Path) -> None:
    """A secret file holding only whitespace is refused: such a token could never match."""
    secret = tmp_path / "token"
    secret.write_text("  \n")
    token = {"name": "ops", "role": "operator", "secret": {"file": str(secret)}}
    found = problems({"auth": {"tokens": [token]}})
    assert found == {"auth.tokens[0].secret.file": f"secret file {secret} is empty"}


def test_clients_can_load_without_reading_secret_files(tmp_path: pathlib.Path) -> None:
    """check_files=False validates the file but does not open secret or TLS files."""
    config = tmp_path / "config.toml"
    config.write_text(
        '[grpc]\nsocket = "/run/x.sock"\n[[auth.tokens]]\nname = "a"\nrole = "admin"\nsecret.file = "/nope"\n'
    )
    with pytest.raises(ConfigError):
        load(config)
    assert str(load(config, check_files=False).socket_path) == "/run/x.sock"


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"grpc": {"socket_mode": "0660\n"}}, "grpc.socket_mode"),
        ({"audience": {"default_region": "NO\n"}}, "audience.default_region"),
        ({"plugins": {"load": ["campaignd.testing.channels\n"]}}, "plugins.load[0]"),
        ({"transports": {"relay\n": {"type": "email"}}}, "transports.relay\n.[key]"),
    ],
)
def test_config_patterns_match_the_whole_value(data: dict[str, Any], key: str) -> None:
    """A trailing newline does not pass a config pattern (they match the whole value)."""
    assert key in problems(data)


def test_a_lease_too_short_for_its_heartbeats_names_the_lease_and_both_values() -> None:
    # The default lease (10 s) against a longer interval set alone.
    assert problems({"cluster": {"heartbeat_interval": 4.0}}) == {
        "cluster.heartbeat_lease": "must be at least 3 times heartbeat_interval (12 s); it is 10 s"
    }
    assert parse({"cluster": {"heartbeat_interval": 2, "heartbeat_lease": 6}}).cluster.heartbeat_lease == 6


def test_a_lease_under_a_second_is_refused() -> None:
    """PostgreSQL ends a frozen member's transaction no sooner than 1 s after it stalls."""
    found = problems({"cluster": {"heartbeat_interval": 0.1, "heartbeat_lease": 0.5}})
    assert list(found) == ["cluster.heartbeat_lease"]
    assert "greater than or equal to 1" in found["cluster.heartbeat_lease"]


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_nan_and_infinity_are_refused_with_their_key(value: float) -> None:
    found = problems({"cluster": {"heartbeat_lease": value}, "engine": {"storage_pause_after": value}})
    assert found == {
        "cluster.heartbeat_lease": "Input should be a finite number",
        "engine.storage_pause_after": "Input should be a finite number",
    }
