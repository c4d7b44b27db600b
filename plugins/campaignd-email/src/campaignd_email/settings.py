"""What the email channel type declares, and the checks of its options and addresses."""

from __future__ import annotations

import os
import re
import string
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from campaignd.plugin import ContentField, FieldViolation, Options

TYPE = "email"

CONTENT_FIELDS = (
    ContentField("subject", required=True, max_length=998, description="the Subject template"),
    ContentField("from_address", required=True, max_length=254, description="the sender's address"),
    ContentField("from_name", max_length=200, description="the sender's display name (a template)"),
    ContentField("reply_to", max_length=254, description="the Reply-To address"),
    ContentField("text", description="the text/plain body template"),
    ContentField("html", description="the text/html body template, autoescaped"),
    ContentField(
        "unsubscribe_url",
        max_length=500,
        description="this channel's unsubscribe URL template, instead of the type's",
    ),
    ContentField(
        "track",
        kind="bool",
        description="count opens (a pixel) and clicks (signed redirects) through the daemon's HTTP listener",
    ),
)

TYPE_OPTIONS = (
    ContentField(
        "unsubscribe_url",
        max_length=500,
        description="unsubscribe URL template: {campaign} {channel} {message} {address} {token}",
    ),
    ContentField("unsubscribe_secret", secret=True, description="HMAC key of the {token} placeholder"),
    ContentField(
        "previous_unsubscribe_secret",
        secret=True,
        description="the secret before a rotation: the daemon's links signed with it still work",
    ),
    ContentField("message_id_domain", max_length=253, description="the domain of Message-IDs"),
    ContentField(
        "bounce_domain",
        max_length=253,
        description="envelope sender bounces+<token>@ this domain, for bounces (needs unsubscribe_secret)",
    ),
    ContentField(
        "bounce_listen",
        max_length=300,
        description="host:port of the bounce receiver (SMTP) for DSNs and ARF reports; needs [http]",
    ),
)

TRANSPORT_OPTIONS = (
    ContentField("host", required=True, max_length=253, description="the SMTP server"),
    ContentField("port", kind="number", description="its port (default 25)"),
    ContentField("security", description='"none", "starttls" (default) or "tls"'),
    ContentField("username", max_length=200, description="AUTH user name"),
    ContentField("password", secret=True, description="AUTH password"),
    ContentField("timeout", kind="number", description="seconds per connect and command (default 30)"),
    ContentField(
        "verify_certificate", kind="bool", description="check the server's certificate (default true)"
    ),
    ContentField("ca_file", max_length=4096, description="CA bundle to trust instead of the system's"),
    ContentField("local_hostname", max_length=253, description="the name sent in EHLO"),
    ContentField(
        "messages_per_connection",
        kind="number",
        description="reconnect after this many messages (default 0: never)",
    ),
)

_LISTEN = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]*):([0-9]{1,5})")
PLACEHOLDERS = frozenset({"campaign", "channel", "message", "address", "token"})
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
MIN_SECRET_LENGTH = 16

Security = Literal["none", "starttls", "tls"]
SECURITY_MODES: tuple[Security, ...] = ("none", "starttls", "tls")

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# A mailbox in dot-atom form, which is what the envelope and the headers carry unquoted.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_MAILBOX = re.compile(rf"(?P<local>{_ATOM}(?:\.{_ATOM})*)@(?P<domain>{_DOMAIN.pattern})")
_URL_CHARACTERS = re.compile(r"[!#-;=?-~]*")  # printable ASCII except space, " < >
_HOSTNAME = re.compile(r"[!-~]+")


@dataclass(frozen=True)
class SmtpSettings:
    """A transport's options with their defaults applied."""

    host: str
    port: int = 25
    security: Security = "starttls"
    username: str | None = None
    password: str | None = None
    timeout: float = 30.0
    verify_certificate: bool = True
    ca_file: str | None = None
    local_hostname: str | None = None
    messages_per_connection: int = 0

    @classmethod
    def from_options(cls, options: Options) -> SmtpSettings:
        """The settings of checked transport options."""
        security = options.get("security", "starttls")
        if security not in SECURITY_MODES:
            raise ValueError(f"unknown security mode {security!r}")
        return cls(
            host=str(options["host"]),
            port=int(options.get("port", 25)),
            security=security,
            username=options.get("username") or None,
            password=options.get("password") or None,
            timeout=float(options.get("timeout", 30.0)),
            verify_certificate=bool(options.get("verify_certificate", True)),
            ca_file=options.get("ca_file") or None,
            local_hostname=options.get("local_hostname") or None,
            messages_per_connection=int(options.get("messages_per_connection", 0)),
        )


def is_mailbox(value: str) -> bool:
    """Whether `value` is a plain ASCII address like news@example.com."""
    return _MAILBOX.fullmatch(value) is not None and len(value) <= 254


def domain_of(address: str) -> str:
    """The domain part of an address."""
    return address.rpartition("@")[2]


def check_address(field: str, value: object) -> list[FieldViolation]:
    """Problems with an address field of the content."""
    if value in (None, ""):
        return []
    if not isinstance(value, str):
        return [FieldViolation(field, "must be a string")]
    if "\r" in value or "\n" in value:
        return [FieldViolation(field, "must not contain line breaks")]
    if not value.isascii():
        return [FieldViolation(field, "must be an ASCII address; write an internationalised domain as xn--…")]
    if not is_mailbox(value):
        return [FieldViolation(field, f"{value!r} is not an email address like news@example.com")]
    return []


def check_url_template(field: str, value: object, *, have_secret: bool) -> list[FieldViolation]:
    """Problems with an unsubscribe URL template."""
    if value in (None, ""):
        return []
    if not isinstance(value, str):
        return [FieldViolation(field, "must be a string")]
    if not _URL_CHARACTERS.fullmatch(value):
        return [FieldViolation(field, "must be an ASCII URL without spaces, quotes, < or >")]
    try:
        names = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(value)]
    except ValueError as exc:
        return [FieldViolation(field, f"not a valid template: {exc}; write a literal brace as {{{{ or }}}}")]
    problems = []
    allowed = " ".join(f"{{{p}}}" for p in sorted(PLACEHOLDERS))
    for name, spec, conversion in names:
        if name is None:
            continue
        if name not in PLACEHOLDERS or spec or conversion:
            problems.append(
                FieldViolation(field, f"unknown placeholder {{{name}}}; the placeholders are {allowed}")
            )
    if problems:
        return problems
    if any(name == "token" for name, _, _ in names) and not have_secret:
        problems.append(
            FieldViolation(field, "{token} needs unsubscribe_secret in the daemon's [channel_types.email]")
        )
    sample = value.format(**dict.fromkeys(PLACEHOLDERS, "x"))
    try:
        parts = urlsplit(sample)
        host = parts.hostname or ""
    except ValueError as exc:
        return [*problems, FieldViolation(field, f"not a valid URL: {exc}")]
    if not host:
        problems.append(
            FieldViolation(field, "must be an absolute URL with a host, e.g. https://example.com/u")
        )
    elif parts.scheme != "https" and not (parts.scheme == "http" and host in LOOPBACK_HOSTS):
        problems.append(FieldViolation(field, "must be an https:// URL (http:// only for localhost)"))
    return problems


def check_type_options(options: Options, *, http_listener: bool) -> list[FieldViolation]:
    """Problems with the [channel_types.email] table; `http_listener`: whether [http] is on."""
    problems = []
    secret = options.get("unsubscribe_secret")
    for key in ("unsubscribe_secret", "previous_unsubscribe_secret"):
        value = options.get(key)
        if value is not None and len(str(value)) < MIN_SECRET_LENGTH:
            problems.append(FieldViolation(key, f"must be at least {MIN_SECRET_LENGTH} characters long"))
    if options.get("previous_unsubscribe_secret") is not None and not secret:
        problems.append(FieldViolation("previous_unsubscribe_secret", "needs unsubscribe_secret"))
    problems += check_url_template(
        "unsubscribe_url", options.get("unsubscribe_url"), have_secret=bool(secret)
    )
    domain = options.get("message_id_domain")
    if domain and not _DOMAIN.fullmatch(domain):
        problems.append(FieldViolation("message_id_domain", f"{domain!r} is not a domain name"))
    bounce_domain = options.get("bounce_domain")
    if bounce_domain and not _DOMAIN.fullmatch(bounce_domain):
        problems.append(FieldViolation("bounce_domain", f"{bounce_domain!r} is not a domain name"))
    if bounce_domain and not secret:
        problems.append(FieldViolation("bounce_domain", "needs unsubscribe_secret to sign the VERP senders"))
    listen = options.get("bounce_listen")
    found = _LISTEN.fullmatch(str(listen)) if listen else None
    if listen and (found is None or not 1 <= int(found[2]) <= 65535):
        problems.append(
            FieldViolation(
                "bounce_listen", "must be host:port with a port from 1 to 65535, e.g. 127.0.0.1:2525"
            )
        )
    if listen and not secret:
        problems.append(FieldViolation("bounce_listen", "needs unsubscribe_secret"))
    if listen and not http_listener:
        # The receiver starts with the listener's routes: without [http] it would never start.
        problems.append(
            FieldViolation("bounce_listen", "needs the daemon's HTTP listener: set [http] address")
        )
    return problems


def check_transport_options(options: Options) -> list[FieldViolation]:
    """Problems with a [transports.NAME.options] table of an email transport."""
    problems = []
    host = options.get("host", "")
    if not _HOSTNAME.fullmatch(host):
        problems.append(FieldViolation("host", "must be a host name or address without spaces"))
    port = options.get("port", 25)
    if port != int(port) or not 1 <= port <= 65535:
        problems.append(FieldViolation("port", "must be a whole number from 1 to 65535"))
    security = options.get("security", "starttls")
    if security not in SECURITY_MODES:
        problems.append(FieldViolation("security", 'must be "none", "starttls" or "tls"'))
    username, password = options.get("username"), options.get("password")
    if bool(username) != bool(password):
        problems.append(
            FieldViolation("password" if username else "username", "username and password go together")
        )
    elif username and security == "none" and host not in LOOPBACK_HOSTS:
        problems.append(
            FieldViolation("security", 'a password is not sent in clear: use "starttls" or "tls"')
        )
    timeout = options.get("timeout", 30)
    if not 0 < timeout <= 600:
        problems.append(FieldViolation("timeout", "must be more than 0 and at most 600 seconds"))
    ca_file = options.get("ca_file")
    if ca_file:
        if not os.path.isfile(ca_file) or not os.access(ca_file, os.R_OK):
            problems.append(FieldViolation("ca_file", f"cannot read {ca_file}"))
        elif security == "none":
            problems.append(FieldViolation("ca_file", 'is used only with security "starttls" or "tls"'))
    local_hostname = options.get("local_hostname")
    if local_hostname is not None and not _HOSTNAME.fullmatch(local_hostname):
        problems.append(FieldViolation("local_hostname", "must be a host name without spaces"))
    limit = options.get("messages_per_connection", 0)
    if limit != int(limit) or limit < 0:
        problems.append(FieldViolation("messages_per_connection", "must be a whole number, 0 or more"))
    return problems
