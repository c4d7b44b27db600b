"""What the voice channel type declares, and the checks of its content and options."""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
from dataclasses import dataclass
from typing import Any

from campaignd.plugin import Content, ContentField, FieldViolation, Options

TYPE = "voice"

DEFAULT_RING_TIMEOUT = 30.0
DEFAULT_MAX_CALL_DURATION = 300.0
DEFAULT_RETRY_DELAY = 300.0
DEFAULT_MAX_ATTEMPTS = 3
# Quiet hours (SPEC §6.3): calls go out from 08:00 to 21:00 in the recipient's time zone.
DEFAULT_WINDOW = {"days": [], "start_time": "08:00", "end_time": "21:00"}

CONTENT_FIELDS = (
    ContentField("caller_id", required=True, max_length=16, description="the E.164 number calls come from"),
    ContentField("audio", max_length=4096, description="the prompt: a WAV file (8 kHz, mono, 16-bit PCM)"),
    ContentField("text", max_length=10_000, description="the prompt: a template spoken by espeak-ng"),
    ContentField("voice", max_length=64, description="the espeak-ng voice of a text prompt (default en)"),
    ContentField("ring_timeout", kind="number", description="seconds to let a call ring (default 30)"),
    ContentField(
        "max_call_duration", kind="number", description="seconds an answered call may last (default 300)"
    ),
    ContentField(
        "retry_delay",
        kind="number",
        description="seconds before busy or unanswered calls retry (default 300)",
    ),
    ContentField("max_attempts", kind="number", description="calls per recipient at most (default 3)"),
)

TYPE_OPTIONS = (
    ContentField("espeak", max_length=4096, description="the espeak-ng program (default: espeak-ng on PATH)"),
    ContentField("prompt_cache", max_length=4096, description="where synthesised prompts are kept"),
)

TRANSPORT_OPTIONS = (
    ContentField("trunk", required=True, max_length=261, description="host:port calls are sent to"),
    ContentField("username", max_length=100, description="the account at the trunk"),
    ContentField("password", secret=True, description="its password"),
    ContentField("register", kind="bool", description="register the account with the trunk (default false)"),
    ContentField(
        "register_timeout", kind="number", description="seconds to wait for registration (default 10)"
    ),
    ContentField("attach", max_length=261, description="host:port of a running baresip's ctrl_tcp to use"),
    ContentField("baresip", max_length=4096, description="the baresip program (default: baresip on PATH)"),
    ContentField(
        "module_path", max_length=4096, description="baresip's modules (default /usr/lib/baresip/modules)"
    ),
    ContentField(
        "local_address", max_length=64, description="the address baresip listens on (default 0.0.0.0)"
    ),
    ContentField("sip_port", kind="number", description="baresip's SIP port (default: a free one)"),
    ContentField("rtp_ports", max_length=32, description='RTP port range "low-high" (default 10000-20000)'),
    ContentField(
        "dns_server", max_length=64, description="host:port of the DNS server (default 127.0.0.1:53)"
    ),
    ContentField("restarts", kind="number", description="times a dead baresip is started again (default 3)"),
)

E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_HOSTPORT = re.compile(r"(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?")
# What cannot go into a baresip account line unquoted.
_ACCOUNT_UNSAFE = re.compile(r"[\s;,<>\"]")


@dataclass(frozen=True)
class VoiceContent:
    """A voice channel's content with its defaults applied."""

    caller_id: str
    audio: str
    text: str
    voice: str
    ring_timeout: float
    max_call_duration: float
    retry_delay: float
    max_attempts: int

    @classmethod
    def from_content(cls, content: Content) -> VoiceContent:
        """The settings of checked content."""
        return cls(
            caller_id=str(content.get("caller_id", "")),
            audio=str(content.get("audio") or ""),
            text=str(content.get("text") or ""),
            voice=str(content.get("voice") or "en"),
            ring_timeout=float(content.get("ring_timeout", DEFAULT_RING_TIMEOUT)),
            max_call_duration=float(content.get("max_call_duration", DEFAULT_MAX_CALL_DURATION)),
            retry_delay=float(content.get("retry_delay", DEFAULT_RETRY_DELAY)),
            max_attempts=int(content.get("max_attempts", DEFAULT_MAX_ATTEMPTS)),
        )


@dataclass(frozen=True)
class SipSettings:
    """A `sip` transport's options with their defaults applied."""

    trunk: str
    concurrency: int = 1
    username: str = ""
    password: str = ""
    register: bool = False
    register_timeout: float = 10.0
    attach: str = ""
    baresip: str = "baresip"
    module_path: str = "/usr/lib/baresip/modules"
    local_address: str = "0.0.0.0"  # noqa: S104 - the trunk must reach baresip; configurable
    sip_port: int = 0
    rtp_ports: tuple[int, int] = (10000, 20000)
    dns_server: str = "127.0.0.1:53"
    restarts: int = 3
    connect_timeout: float = 5.0

    @classmethod
    def from_options(cls, options: Options, concurrency: int) -> SipSettings:
        """The settings of checked transport options."""
        low, _, high = str(options.get("rtp_ports", "10000-20000")).partition("-")
        return cls(
            trunk=str(options["trunk"]),
            concurrency=max(1, concurrency),
            username=str(options.get("username") or ""),
            password=str(options.get("password") or ""),
            register=bool(options.get("register", False)),
            register_timeout=float(options.get("register_timeout", 10.0)),
            attach=str(options.get("attach") or ""),
            baresip=str(options.get("baresip") or "baresip"),
            module_path=str(options.get("module_path") or "/usr/lib/baresip/modules"),
            local_address=str(options.get("local_address") or "0.0.0.0"),  # noqa: S104
            sip_port=int(options.get("sip_port", 0)),
            rtp_ports=(int(low), int(high)),
            dns_server=str(options.get("dns_server") or "127.0.0.1:53"),
            restarts=int(options.get("restarts", 3)),
        )

    @property
    def registers(self) -> bool:
        """Whether the account registers with the trunk."""
        return self.register

    @property
    def account_host(self) -> str:
        """The host part of the accounts' addresses."""
        return self.trunk

    def target(self, number: str) -> str:
        """The SIP URI that calls `number` through the trunk."""
        return f"sip:{number}@{self.trunk}"

    def account(self, aor: str, *, register: bool = False, caller_id: str = "", prompt: str = "") -> str:
        """A baresip account line for `aor`."""
        line = f'"{caller_id}" <{aor}>' if caller_id else f"<{aor}>"
        if self.username and self.password:
            line += f";auth_user={self.username};auth_pass={self.password}"
        line += ";regint=600" if register else ";regint=0"
        if prompt:
            line += f";audio_source=aufile,{prompt}"
        return line


def is_e164(value: object) -> bool:
    """Whether `value` is an E.164 number like +14155550100."""
    return isinstance(value, str) and E164.fullmatch(value) is not None


def check_prompt_path(field: str, path: str) -> list[FieldViolation]:
    """Problems with a prompt file's path as baresip would be given it."""
    if _ACCOUNT_UNSAFE.search(path):
        return [FieldViolation(field, "the path may not hold spaces, commas, semicolons, quotes, < or >")]
    if not os.path.isabs(path):
        return [FieldViolation(field, "must be an absolute path")]
    return []


def _number(content: Content, field: str, low: float, high: float) -> list[FieldViolation]:
    value = content.get(field)
    if value is None:
        return []
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        return [FieldViolation(field, f"must be a number from {low:g} to {high:g}")]
    return []


def check_numbers(content: Content) -> list[FieldViolation]:
    """Problems with the timing fields."""
    problems = _number(content, "ring_timeout", 1, 300)
    problems += _number(content, "max_call_duration", 1, 86_400)
    problems += _number(content, "retry_delay", 0, 7 * 86_400)
    problems += _number(content, "max_attempts", 1, 20)
    attempts = content.get("max_attempts")
    if isinstance(attempts, float) and attempts != int(attempts):
        problems.append(FieldViolation("max_attempts", "must be a whole number"))
    return problems


def espeak_program(options: Options) -> str | None:
    """The espeak-ng program to run, or None when it is not installed."""
    configured = str(options.get("espeak") or "espeak-ng")
    return shutil.which(configured)


def _endpoint(value: Any) -> re.Match[str] | None:
    """`host[:port]` read, with a port in range, or None."""
    if not isinstance(value, str):
        return None
    match = _HOSTPORT.fullmatch(value)
    if match is None or (match["port"] is not None and not 1 <= int(match["port"]) <= 65535):
        return None
    return match


def _hostport(value: Any) -> bool:
    return _endpoint(value) is not None


def _ipv4(value: Any) -> bool:
    try:
        ipaddress.IPv4Address(str(value))
    except ValueError:
        return False
    return True


def _ip_port(value: Any) -> bool:
    match = _endpoint(value)
    if match is None or match["port"] is None:
        return False
    try:
        ipaddress.ip_address(match["host"].strip("[]"))
    except ValueError:
        return False
    return True


def check_type_options(options: Options) -> list[FieldViolation]:
    """Problems with the [channel_types.voice] table."""
    problems = []
    espeak = options.get("espeak")
    if espeak and shutil.which(str(espeak)) is None:
        problems.append(FieldViolation("espeak", f"cannot find the program {espeak!r}"))
    cache = options.get("prompt_cache")
    if cache and not os.path.isabs(str(cache)):
        problems.append(FieldViolation("prompt_cache", "must be an absolute path"))
    return problems


def check_transport_options(options: Options) -> list[FieldViolation]:
    """Problems with a [transports.NAME.options] table of a voice transport."""
    problems = []
    if not _hostport(options.get("trunk")):
        problems.append(FieldViolation("trunk", "must be host or host:port, e.g. 192.0.2.10:5060"))
    attach = options.get("attach")
    if attach and not (_hostport(attach) and ":" in str(attach)):
        problems.append(FieldViolation("attach", "must be host:port of baresip's ctrl_tcp"))
    username, password = options.get("username"), options.get("password")
    for field, value in (("username", username), ("password", password)):
        if value and _ACCOUNT_UNSAFE.search(str(value)):
            problems.append(FieldViolation(field, "may not hold spaces, commas, semicolons, quotes, < or >"))
    if options.get("register") and not (username and password):
        problems.append(FieldViolation("register", "registration needs username and password"))
    if bool(username) != bool(password):
        problems.append(
            FieldViolation("password" if username else "username", "username and password go together")
        )
    local_address = options.get("local_address")
    if local_address and not _ipv4(local_address):
        # The SIP port is chosen and baresip's sip_listen written for an IPv4 socket.
        problems.append(FieldViolation("local_address", "must be an IPv4 address, e.g. 192.0.2.20"))
    baresip = options.get("baresip")
    if not attach and shutil.which(str(baresip or "baresip")) is None:
        problems.append(FieldViolation("baresip", f"cannot find the program {baresip or 'baresip'!r}"))
    module_path = options.get("module_path")
    if module_path and not os.path.isdir(str(module_path)):
        problems.append(FieldViolation("module_path", f"{module_path} is not a directory"))
    low, _, high = str(options.get("rtp_ports", "10000-20000")).partition("-")
    if not (low.isdigit() and high.isdigit() and 1024 <= int(low) < int(high) <= 65535):
        problems.append(FieldViolation("rtp_ports", 'must be "low-high" within 1024-65535'))
    port = options.get("sip_port", 0)
    if port != int(port) or not 0 <= port <= 65535:
        problems.append(FieldViolation("sip_port", "must be a whole number from 0 to 65535"))
    if not _ip_port(options.get("dns_server", "127.0.0.1:53")):
        # baresip decodes it as an address, not a name, and exits at start when it cannot.
        problems.append(FieldViolation("dns_server", "must be an IP address and port, e.g. 127.0.0.1:53"))
    restarts = options.get("restarts", 3)
    if restarts != int(restarts) or not 0 <= restarts <= 100:
        problems.append(FieldViolation("restarts", "must be a whole number from 0 to 100"))
    timeout = options.get("register_timeout", 10)
    if not 0 < timeout <= 120:
        problems.append(FieldViolation("register_timeout", "must be more than 0 and at most 120 seconds"))
    return problems
