"""The plugin manager: hook API versions, options and transports from the config."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest

from campaignd.config import ConfigError, parse
from campaignd.model import TransportShare
from campaignd.plugin import ChannelType, ContentField, FieldViolation, Options, hookimpl
from campaignd.plugin.manager import PluginError, Plugins


def _module(name: str, **attributes: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    for key, value in attributes.items():
        setattr(module, key, value)
    return module


@hookimpl
def _types() -> list[ChannelType]:
    return [
        ChannelType(
            "relay",
            address="email",
            uses_transports=True,
            options=(ContentField("greeting"),),
            transport_options=(
                ContentField("host", required=True),
                ContentField("port", kind="number"),
                ContentField("password", secret=True),
            ),
        )
    ]


@hookimpl
def _validate_options(channel_type: str, options: Options, transport: str | None) -> list[FieldViolation]:
    if channel_type == "relay" and transport and options.get("port", 25) > 65535:
        return [FieldViolation("port", "must be at most 65535")]
    return []


@pytest.fixture
def plugins() -> Iterator[Plugins]:
    sys.modules["relay_plugin"] = _module(
        "relay_plugin", campaignd_channel_types=_types, campaignd_validate_options=_validate_options
    )
    try:
        yield Plugins(["relay_plugin"], entry_points=False)
    finally:
        del sys.modules["relay_plugin"]


def _problems(plugins: Plugins, data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        plugins.check_config(parse(data))
    return [str(p) for p in caught.value.problems]


def test_a_plugin_needing_a_newer_hook_api_is_refused() -> None:
    """A plugin that declares a hook API newer than the daemon's does not load."""
    sys.modules["future_plugin"] = _module("future_plugin", CAMPAIGND_HOOK_API=99)
    try:
        with pytest.raises(PluginError, match="needs hook API 99"):
            Plugins(["future_plugin"], entry_points=False)
    finally:
        del sys.modules["future_plugin"]


def test_transport_options_are_checked_against_the_declaration(plugins: Plugins) -> None:
    """Unknown keys, wrong kinds, missing required keys and the plugin's own rules, with key paths."""
    problems = _problems(
        plugins,
        {
            "transports": {
                "one": {"type": "relay", "options": {"port": "25", "colour": "red"}},
                "two": {"type": "relay", "options": {"host": "h", "port": 70000}},
            }
        },
    )
    assert sorted(problems) == [
        "transports.one.options.colour: unknown key",
        "transports.one.options.host: required",
        "transports.one.options.port: must be a number",
        "transports.two.options.port: must be at most 65535",
    ]


def test_secrets_are_read_from_their_source(plugins: Plugins, monkeypatch: pytest.MonkeyPatch) -> None:
    """A secret option comes from an environment variable or a file, never from the file's text."""
    monkeypatch.setenv("RELAY_PASSWORD", "hunter2")
    config = plugins.check_config(
        parse(
            {
                "transports": {
                    "one": {
                        "type": "relay",
                        "rate": 50,
                        "options": {"host": "h", "password": {"env": "RELAY_PASSWORD"}},
                    }
                }
            }
        )
    )
    transport = config.transports["one"]
    assert transport.options["password"] == "hunter2"
    assert transport.rate == 50
    monkeypatch.delenv("RELAY_PASSWORD")
    assert _problems(
        plugins, {"transports": {"one": {"type": "relay", "options": {"host": "h", "password": "plain"}}}}
    ) == ["transports.one.options.password: Input should be a valid dictionary or instance of SecretSource"]


def test_channel_type_options_and_unknown_types(plugins: Plugins) -> None:
    """[channel_types.<type>] is checked like transport options; a type nobody declares is a problem."""
    config = plugins.check_config(parse({"channel_types": {"relay": {"greeting": "hi"}}}))
    assert config.options["relay"] == {"greeting": "hi"}
    assert _problems(plugins, {"channel_types": {"relay": {"greeting": 1}, "fax": {}}}) == [
        "channel_types.fax: no loaded plugin declares channel type 'fax'",
        "channel_types.relay.greeting: must be a string",
    ]


def test_a_channel_naming_no_transport_uses_all_of_its_type_in_equal_shares(plugins: Plugins) -> None:
    """Three transports of the type: 34/33/33; naming one of another type or none that exists is a problem."""
    transports = {name: {"type": "relay", "options": {"host": "h"}} for name in ("a", "b", "c")}
    plugins.configure(parse({"transports": transports}))
    assert [(t.name, p) for t, p in plugins.transports_for("relay", [])] == [("a", 34), ("b", 33), ("c", 33)]
    assert plugins.check_transports("relay", [], launching=True) == []
    problems = plugins.check_transports("relay", [TransportShare("zzz", 100)], launching=False)
    assert problems == [
        FieldViolation("transports[0].transport", "no transport 'zzz' in the daemon's configuration")
    ]
    plugins.configure(parse({}))
    assert plugins.check_transports("relay", [], launching=True) == [
        FieldViolation("transports", "no transport of type 'relay' is configured in the daemon")
    ]
