"""What the sms channel type declares, and the checks of its content and options."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from campaignd.plugin import ContentField, FieldViolation, Options
from campaignd_sms.encoding import MAX_PARTS, Concatenation

TYPE = "sms"

CONTENT_FIELDS = (
    ContentField("text", required=True, max_length=10_000, description="the message template"),
    ContentField(
        "sender",
        required=True,
        max_length=16,
        description="the sender id: up to 11 letters and digits, or a number or short code",
    ),
)

TYPE_OPTIONS = (
    ContentField("max_parts", kind="number", description="the most parts one message may take (default 6)"),
    ContentField(
        "concatenation", description='how long messages are tied together: "udh" (default) or "sar"'
    ),
)

TRANSPORT_OPTIONS = (
    ContentField("kind", required=True, description='"smpp" or "kannel"'),
    # smpp
    ContentField("host", max_length=253, description="smpp: the SMSC's host"),
    ContentField("port", kind="number", description="smpp: its port (default 2775)"),
    ContentField("system_id", max_length=15, description="smpp: the bind's system_id"),
    ContentField("password", secret=True, description="smpp: the bind's password (at most 8 characters)"),
    ContentField("system_type", max_length=12, description="smpp: the bind's system_type"),
    ContentField("tls", kind="bool", description="smpp: TLS to the SMSC (default false)"),
    ContentField("verify_certificate", kind="bool", description="smpp: check the SMSC's certificate"),
    ContentField("ca_file", max_length=4096, description="smpp: CA bundle instead of the system's"),
    ContentField("window", kind="number", description="smpp: submit_sm outstanding at once (default 10)"),
    ContentField(
        "enquire_link", kind="number", description="smpp: seconds of silence before enquire_link (30)"
    ),
    ContentField("timeout", kind="number", description="seconds to wait for an answer (default 10)"),
    ContentField(
        "registered_delivery", kind="bool", description="smpp: ask for delivery receipts (default true)"
    ),
    # kannel
    ContentField("sendsms_url", max_length=500, description="kannel: smsbox's sendsms URL"),
    ContentField("username", max_length=100, description="kannel: sendsms user"),
    ContentField("kannel_password", secret=True, description="kannel: sendsms password"),
    ContentField("smsc_id", max_length=100, description="kannel: the smsc-id to route through"),
    ContentField(
        "callback_host", max_length=253, description="kannel: where the daemon listens for DLRs and MOs"
    ),
    ContentField("callback_port", kind="number", description="kannel: its port (0: any free port)"),
    ContentField("callback_url", max_length=500, description="kannel: the base URL Kannel reaches it by"),
    ContentField("callback_secret", secret=True, description="kannel: the secret in callback URLs"),
)

KINDS = ("smpp", "kannel")
DEFAULT_MAX_PARTS = 6
_ALPHANUMERIC = re.compile(r"[A-Za-z0-9 ]{1,11}")
_NUMBER = re.compile(r"\+?[0-9]{3,15}")
_HOSTNAME = re.compile(r"[!-~]+")
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
# Options of the other kind, refused rather than ignored.
SMPP_ONLY = (
    "host",
    "port",
    "system_id",
    "password",
    "system_type",
    "tls",
    "verify_certificate",
    "ca_file",
    "window",
    "enquire_link",
    "registered_delivery",
)
KANNEL_ONLY = (
    "sendsms_url",
    "username",
    "kannel_password",
    "smsc_id",
    "callback_host",
    "callback_port",
    "callback_url",
    "callback_secret",
)


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine's loopback interface."""
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Sender:
    """A sender id as SMPP carries it: the address and its TON/NPI."""

    address: str
    ton: int
    npi: int


def parse_sender(value: str) -> Sender:
    """Alphanumeric (TON 5), an international number (TON 1, NPI 1) or a short code (TON 3);
    ValueError when it is none of them."""
    if _NUMBER.fullmatch(value):
        digits = value.lstrip("+")
        if value.startswith("+") or len(digits) > 8:
            return Sender(digits, 1, 1)
        return Sender(digits, 3, 0)
    if _ALPHANUMERIC.fullmatch(value) and value.strip() == value and not value.isdigit():
        return Sender(value, 5, 0)
    raise ValueError(
        f"{value!r} is neither an alphanumeric sender id (1 to 11 letters, digits and spaces) "
        "nor a number (3 to 15 digits, + for an international one)"
    )


def check_sender(value: object) -> list[FieldViolation]:
    """Problems with the sender field."""
    if value in (None, ""):
        return []
    if not isinstance(value, str):
        return [FieldViolation("sender", "must be a string")]
    try:
        parse_sender(value)
    except ValueError as exc:
        return [FieldViolation("sender", str(exc))]
    return []


def max_parts(options: Options) -> int:
    """The type's max_parts option."""
    return int(options.get("max_parts", DEFAULT_MAX_PARTS))


def concatenation(options: Options) -> Concatenation:
    """The type's concatenation option."""
    return Concatenation(options.get("concatenation", "udh"))


def check_type_options(options: Options) -> list[FieldViolation]:
    """Problems with the [channel_types.sms] table."""
    problems = []
    limit = options.get("max_parts", DEFAULT_MAX_PARTS)
    if limit != int(limit) or not 1 <= limit <= MAX_PARTS:
        problems.append(FieldViolation("max_parts", f"must be a whole number from 1 to {MAX_PARTS}"))
    if options.get("concatenation", "udh") not in ("udh", "sar"):
        problems.append(FieldViolation("concatenation", 'must be "udh" or "sar"'))
    return problems


@dataclass(frozen=True)
class SmppSettings:
    """An smpp transport's options with their defaults applied."""

    host: str
    port: int = 2775
    system_id: str = ""
    password: str = ""
    system_type: str = ""
    tls: bool = False
    verify_certificate: bool = True
    ca_file: str | None = None
    window: int = 10
    enquire_link: float = 30.0
    timeout: float = 10.0
    registered_delivery: bool = True
    reconnect_min: float = 1.0
    reconnect_max: float = 30.0
    throttle_delay: float = 0.5

    @classmethod
    def from_options(cls, options: Options) -> SmppSettings:
        """The settings of checked transport options."""
        return cls(
            host=str(options["host"]),
            port=int(options.get("port", 2775)),
            system_id=str(options.get("system_id", "")),
            password=str(options.get("password", "")),
            system_type=str(options.get("system_type", "")),
            tls=bool(options.get("tls", False)),
            verify_certificate=bool(options.get("verify_certificate", True)),
            ca_file=options.get("ca_file") or None,
            window=int(options.get("window", 10)),
            enquire_link=float(options.get("enquire_link", 30.0)),
            timeout=float(options.get("timeout", 10.0)),
            registered_delivery=bool(options.get("registered_delivery", True)),
        )


def _whole(options: Options, name: str, default: float, low: float, high: float) -> list[FieldViolation]:
    value = options.get(name, default)
    if value != int(value) or not low <= value <= high:
        return [FieldViolation(name, f"must be a whole number from {low:g} to {high:g}")]
    return []


def check_transport_options(options: Options) -> list[FieldViolation]:
    """Problems with a [transports.NAME.options] table of an sms transport."""
    kind = options.get("kind")
    if kind not in KINDS:
        return [FieldViolation("kind", 'must be "smpp" or "kannel"')]
    problems = []
    timeout = options.get("timeout", 10)
    if not 0 < timeout <= 600:
        problems.append(FieldViolation("timeout", "must be more than 0 and at most 600 seconds"))
    if kind == "smpp":
        host = options.get("host", "")
        if not host:
            problems.append(FieldViolation("host", "required for an smpp transport"))
        elif not _HOSTNAME.fullmatch(host):
            problems.append(FieldViolation("host", "must be a host name or address without spaces"))
        problems += _whole(options, "port", 2775, 1, 65535)
        problems += _whole(options, "window", 10, 1, 1000)
        if len(str(options.get("password", ""))) > 8:
            problems.append(FieldViolation("password", "SMPP 3.4 passwords have at most 8 characters"))
        if not 0 < options.get("enquire_link", 30) <= 3600:
            problems.append(FieldViolation("enquire_link", "must be more than 0 and at most 3600 seconds"))
        for name in KANNEL_ONLY:
            if name in options:
                problems.append(FieldViolation(name, "is for kannel transports"))
    else:
        for name in ("sendsms_url", "callback_url", "callback_secret"):
            if not options.get(name):
                problems.append(FieldViolation(name, "required for a kannel transport"))
        for name in ("sendsms_url", "callback_url"):
            url = str(options.get(name, ""))
            if url and not re.fullmatch(r"https?://[!-~]+", url):
                problems.append(FieldViolation(name, "must be an http:// or https:// URL"))
        callback_host = options.get("callback_host", "127.0.0.1")
        if not is_loopback(callback_host):
            # The secret in the path is the listener's only guard.
            problems.append(
                FieldViolation("callback_host", "must be a loopback address (127.0.0.1, ::1 or localhost)")
            )
        problems += _whole(options, "callback_port", 0, 0, 65535)
        if options.get("callback_secret") and len(str(options["callback_secret"])) < 16:
            problems.append(FieldViolation("callback_secret", "must be at least 16 characters long"))
        for name in SMPP_ONLY:
            if name in options:
                problems.append(FieldViolation(name, "is for smpp transports"))
    return problems
