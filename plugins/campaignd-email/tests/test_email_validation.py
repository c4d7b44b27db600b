"""The declaration, the semantics and the validation hooks, alone and through the daemon's loader."""

from __future__ import annotations

import pathlib
from typing import Any

import campaignd_email
import pytest

from campaignd.config import ConfigError, Settings
from campaignd.plugin import ChannelSemantics, EditPolicy, FieldViolation
from campaignd.plugin.manager import Plugins

SECRET = "0123456789abcdef-secret"  # noqa: S105 (a test key)
COMPLETE = {
    "subject": "Hello {{ contact.first_name }}",
    "from_address": "news@example.com",
    "text": "Hi",
    "unsubscribe_url": "https://example.com/u/{message}",
}


def validate(content: dict[str, Any], *, launching: bool = True, **options: Any) -> dict[str, str]:
    """Problems by field."""
    problems = campaignd_email.campaignd_validate_channel(
        channel_type="email", content=content, launching=launching, options=options
    )
    return {p.field: p.description for p in problems}


def type_options(http_listener: bool = True, **options: Any) -> dict[str, str]:
    """Problems with [channel_types.email] by key."""
    problems = campaignd_email.campaignd_validate_options(
        channel_type="email", options=options, transport=None, http_listener=http_listener
    )
    return {p.field: p.description for p in problems}


def transport_options(**options: Any) -> dict[str, str]:
    """Problems with an email transport's options by key."""
    problems = campaignd_email.campaignd_validate_options(
        channel_type="email",
        options={"host": "smtp.example.com"} | options,
        transport="relay",
        http_listener=False,
    )
    return {p.field: p.description for p in problems}


def test_the_channel_type() -> None:
    [declared] = campaignd_email.campaignd_channel_types()
    assert declared.name == "email"
    assert declared.address == "email"
    assert declared.uses_transports
    assert declared.version == campaignd_email.__version__
    assert [f.name for f in declared.fields if f.required] == ["subject", "from_address"]
    assert declared.field("subject") is not None
    secrets = {f.name for f in declared.options if f.secret}
    assert secrets == {"unsubscribe_secret", "previous_unsubscribe_secret"}
    assert {f.name for f in declared.transport_options if f.secret} == {"password"}
    assert [f.name for f in declared.transport_options if f.required] == ["host"]


def test_semantics() -> None:
    semantics = campaignd_email.campaignd_channel_semantics(channel_type="email")
    assert semantics == ChannelSemantics(restartable=False, edit_while_scheduled=EditPolicy.RETURN_TO_DRAFT)
    assert campaignd_email.campaignd_channel_semantics(channel_type="sms") is None


def test_complete_content_passes() -> None:
    assert validate(COMPLETE) == {}
    assert (
        validate(COMPLETE | {"html": "<p>{{ contact.first_name }}</p>", "reply_to": "help@example.com"}) == {}
    )


def test_other_types_are_not_checked() -> None:
    assert (
        campaignd_email.campaignd_validate_channel(channel_type="sms", content={}, launching=True, options={})
        == []
    )
    assert (
        campaignd_email.campaignd_validate_options(
            channel_type="sms", options={}, transport=None, http_listener=False
        )
        == []
    )


def test_template_syntax_errors_name_the_field_and_line() -> None:
    problems = validate(
        COMPLETE | {"subject": "Hello {{ contact.first_name", "html": "<p>\n\n{% if x %}</p>"}
    )
    assert problems["subject"].startswith("line 1: ")
    assert problems["html"].startswith("line 3: ")
    assert "from_name" in validate(COMPLETE | {"from_name": "{% for %}"})


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("from_address", "not an address", "is not an email address"),
        ("from_address", "news@example.com\r\nBcc: x@example.net", "must not contain line breaks"),
        ("from_address", "news@exämple.com", "ASCII"),
        ("reply_to", "help@", "is not an email address"),
        ("reply_to", "help@example.com\nBcc: x@example.net", "must not contain line breaks"),
    ],
)
def test_bad_addresses(field: str, value: str, expected: str) -> None:
    assert expected in validate(COMPLETE | {field: value}, launching=False)[field]


def test_a_body_is_required_at_launch_only() -> None:
    content = {k: v for k, v in COMPLETE.items() if k != "text"}
    assert "text" in validate(content)
    assert validate(content, launching=False) == {}
    assert validate(content | {"html": "<p>hi</p>"}) == {}


def test_an_unsubscribe_url_is_required_at_launch_from_the_content_or_the_options() -> None:
    content = {k: v for k, v in COMPLETE.items() if k != "unsubscribe_url"}
    problem = validate(content)["unsubscribe_url"]
    assert "[channel_types.email] unsubscribe_url" in problem
    assert validate(content, launching=False) == {}
    assert validate(content, unsubscribe_url="https://example.com/u/{message}") == {}


def test_the_content_s_unsubscribe_url_is_checked() -> None:
    assert "https" in validate(COMPLETE | {"unsubscribe_url": "http://example.com/u"})["unsubscribe_url"]
    token = COMPLETE | {"unsubscribe_url": "https://example.com/u?t={token}"}
    assert "unsubscribe_secret" in validate(token)["unsubscribe_url"]
    assert validate(token, unsubscribe_secret=SECRET) == {}


@pytest.mark.parametrize(
    ("options", "field", "expected"),
    [
        ({"unsubscribe_url": "http://example.com/u/{message}"}, "unsubscribe_url", "https://"),
        ({"unsubscribe_url": "/u/{message}"}, "unsubscribe_url", "absolute URL"),
        (
            {"unsubscribe_url": "https://example.com/u/{user}"},
            "unsubscribe_url",
            "unknown placeholder {user}",
        ),
        (
            {"unsubscribe_url": "https://example.com/u/{message.__class__}"},
            "unsubscribe_url",
            "unknown placeholder",
        ),
        ({"unsubscribe_url": "https://example.com/u/{message!r}"}, "unsubscribe_url", "unknown placeholder"),
        ({"unsubscribe_url": "https://example.com/u/{message"}, "unsubscribe_url", "not a valid template"),
        ({"unsubscribe_url": "https://example.com/u?t={token}"}, "unsubscribe_url", "unsubscribe_secret"),
        ({"unsubscribe_url": "https://example.com/u x"}, "unsubscribe_url", "without spaces"),
        ({"unsubscribe_url": "https://example.com/u>\r\nBcc: x"}, "unsubscribe_url", "without spaces"),
        ({"unsubscribe_secret": "short"}, "unsubscribe_secret", "at least 16"),
        ({"message_id_domain": "not a domain"}, "message_id_domain", "not a domain"),
        (
            {"unsubscribe_secret": SECRET, "previous_unsubscribe_secret": "short"},
            "previous_unsubscribe_secret",
            "at least 16",
        ),
        ({"previous_unsubscribe_secret": SECRET}, "previous_unsubscribe_secret", "needs unsubscribe_secret"),
        ({"unsubscribe_secret": SECRET, "bounce_listen": "127.0.0.1:99999"}, "bounce_listen", "1 to 65535"),
        ({"unsubscribe_secret": SECRET, "bounce_listen": "127.0.0.1:0"}, "bounce_listen", "1 to 65535"),
        ({"unsubscribe_secret": SECRET, "bounce_listen": "127.0.0.1"}, "bounce_listen", "host:port"),
        ({"unsubscribe_secret": SECRET, "bounce_listen": "a b:25"}, "bounce_listen", "host:port"),
        (
            {"http_listener": False, "unsubscribe_secret": SECRET, "bounce_listen": "127.0.0.1:2525"},
            "bounce_listen",
            "needs the daemon's HTTP listener: set [http] address",
        ),
    ],
)
def test_bad_type_options(options: dict[str, Any], field: str, expected: str) -> None:
    assert expected in type_options(**options)[field]


def test_good_type_options() -> None:
    url = "https://example.com/unsubscribe?c={campaign}&ch={channel}&m={message}&a={address}&t={token}"
    assert (
        type_options(unsubscribe_url=url, unsubscribe_secret=SECRET, message_id_domain="mail.example.com")
        == {}
    )
    assert type_options(unsubscribe_url="http://localhost:8080/u/{message}") == {}
    rotated: dict[str, Any] = {
        "unsubscribe_secret": SECRET,
        "previous_unsubscribe_secret": "an older secret, 16+",
    }
    assert type_options(**rotated, bounce_listen="[::1]:2525") == {}
    assert type_options(unsubscribe_url="http://127.0.0.1/u/{{literal}}/{message}") == {}


@pytest.mark.parametrize(
    ("options", "field", "expected"),
    [
        ({"host": "smtp example"}, "host", "without spaces"),
        ({"port": 0}, "port", "1 to 65535"),
        ({"port": 70000}, "port", "1 to 65535"),
        ({"port": 25.5}, "port", "whole number"),
        ({"security": "ssl"}, "security", '"none", "starttls" or "tls"'),
        ({"username": "u"}, "password", "go together"),
        ({"password": "p"}, "username", "go together"),
        ({"username": "u", "password": "p", "security": "none"}, "security", "not sent in clear"),
        ({"timeout": 0}, "timeout", "more than 0"),
        ({"ca_file": "/nonexistent/ca.pem"}, "ca_file", "cannot read"),
        ({"local_hostname": "my host"}, "local_hostname", "without spaces"),
        ({"messages_per_connection": -1}, "messages_per_connection", "0 or more"),
    ],
)
def test_bad_transport_options(options: dict[str, Any], field: str, expected: str) -> None:
    assert expected in transport_options(**options)[field]


def test_good_transport_options(tmp_path: pathlib.Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("-----BEGIN CERTIFICATE-----\n")
    assert transport_options() == {}
    assert (
        transport_options(
            port=587,
            security="starttls",
            username="u",
            password="p",  # noqa: S106 (test values)
            timeout=10,
            verify_certificate=False,
            ca_file=str(ca_file),
            local_hostname="mailer.example.com",
            messages_per_connection=100,
        )
        == {}
    )
    # A relay on the same machine may take a password without TLS.
    local = {"host": "127.0.0.1", "security": "none", "username": "u"}
    assert transport_options(**local, password="p") == {}  # noqa: S106 (test values)


def test_the_daemon_loads_the_plugin_and_checks_its_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMPAIGND_TEST_RELAY_PASSWORD", "relay-password")
    plugins = Plugins(entry_points=True)
    assert "email" in plugins.types
    good = Settings.model_validate(
        {
            "transports": {
                "relay": {
                    "type": "email",
                    "options": {
                        "host": "smtp.example.com",
                        "port": 587,
                        "username": "campaignd",
                        "password": {"env": "CAMPAIGND_TEST_RELAY_PASSWORD"},
                    },
                }
            },
            "channel_types": {"email": {"unsubscribe_url": "https://example.com/u/{message}"}},
        }
    )
    config = plugins.check_config(good)
    assert config.transports["relay"].options["password"] == "relay-password"  # noqa: S105 (from the env)
    bad = Settings.model_validate(
        {
            "transports": {
                "relay": {"type": "email", "options": {"host": "smtp.example.com", "security": "ssl"}}
            },
            "channel_types": {"email": {"unsubscribe_url": "https://example.com/u?t={token}"}},
        }
    )
    with pytest.raises(ConfigError) as error:
        plugins.check_config(bad)
    assert {p.path for p in error.value.problems} == {
        "transports.relay.options.security",
        "channel_types.email.unsubscribe_url",
    }


def test_field_violations_are_the_published_type() -> None:
    problems = campaignd_email.campaignd_validate_channel(
        channel_type="email", content={"subject": "{{"}, launching=False, options={}
    )
    assert all(isinstance(p, FieldViolation) for p in problems)
