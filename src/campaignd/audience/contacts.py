"""Normalising contact fields: email syntax (no DNS), E.164 phone numbers, IANA time zones."""

from __future__ import annotations

import functools
import math
import re
import zoneinfo
from dataclasses import dataclass
from typing import Any

import email_validator
import phonenumbers

ATTRIBUTE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
MAX_ATTRIBUTES = 200
MAX_ATTRIBUTE_BYTES = 64 * 1024
# email-validator's own limit on a whole address, and its dot-atom rule for a plain ASCII local
# part: an address of that form is valid exactly when its domain is (see normalise_email).
_EMAIL_MAX_LENGTH = 254
_ASCII_LOCAL_PART = re.compile(r"[A-Za-z0-9_!#$%&'*+\-/=?^`{|}~]+(?:\.[A-Za-z0-9_!#$%&'*+\-/=?^`{|}~]+)*")


class ContactFieldError(ValueError):
    """A contact field is not valid; `field` names it."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def normalise_email(value: str) -> str:
    """The address lower-cased, checked for syntax only (no DNS lookups)."""
    # email-validator costs ~40 µs an address, nearly all of it on the domain. A plain ASCII
    # local part passes its checks unchanged, so such an address needs only its domain checked,
    # once per domain; anything else takes the full check.
    local, at, domain = value.partition("@")
    plain = at and len(value) <= _EMAIL_MAX_LENGTH and _ASCII_LOCAL_PART.fullmatch(local)
    if plain and _plain_domain(domain):
        return value.lower()
    return _validated_email(value)


@functools.lru_cache(maxsize=4096)
def _plain_domain(domain: str) -> bool:
    """Whether email-validator accepts `domain` and keeps it as written, up to case."""
    try:
        checked = email_validator.validate_email("a@" + domain, check_deliverability=False)
    except email_validator.EmailNotValidError:
        return False
    return checked.ascii_domain == domain.lower() and checked.domain == checked.ascii_domain


def _validated_email(value: str) -> str:
    try:
        checked = email_validator.validate_email(value, check_deliverability=False)
    except email_validator.EmailNotValidError as exc:
        raise ContactFieldError("email", str(exc)) from None
    return checked.normalized.lower()


def normalise_phone(value: str, default_region: str) -> str:
    """The number in E.164 form; without a country code it is read in `default_region`."""
    try:
        number = phonenumbers.parse(value, default_region or None)
    except phonenumbers.NumberParseException as exc:
        hint = "" if default_region else " (write it with + and the country code)"
        raise ContactFieldError("phone", f"not a phone number: {exc}{hint}") from None
    if not phonenumbers.is_possible_number(number) or not phonenumbers.is_valid_number(number):
        raise ContactFieldError("phone", "not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def check_time_zone(value: str) -> str:
    """The IANA zone name, checked."""
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ContactFieldError("time_zone", f"unknown IANA time zone {value[:64]!r}") from None
    return value


def check_attributes(values: dict[str, Any]) -> dict[str, Any]:
    """Attribute names and sizes, checked."""
    if len(values) > MAX_ATTRIBUTES:
        raise ContactFieldError("attributes", f"at most {MAX_ATTRIBUTES} attributes")
    for key, value in values.items():
        if not ATTRIBUTE_KEY.fullmatch(key):
            raise ContactFieldError(
                f"attributes.{key[:70]}",
                "names are 1-63 characters of [A-Za-z0-9_] starting with a letter or _",
            )
        if isinstance(value, dict):
            raise ContactFieldError(f"attributes.{key}", "must be a string, number, boolean, null or list")
        where, problem = _bad_value(value)
        if problem:
            raise ContactFieldError(f"attributes.{key}{where}", problem)
    if len(repr(values)) > MAX_ATTRIBUTE_BYTES:
        raise ContactFieldError("attributes", f"larger than {MAX_ATTRIBUTE_BYTES} bytes")
    return values


@dataclass
class ContactFields:
    """A contact's fields after normalisation; None where not given."""

    email: str | None
    phone: str | None
    time_zone: str | None
    attributes: dict[str, Any]


def normalise(
    *, email: str, phone: str, time_zone: str, attributes: dict[str, Any], default_region: str
) -> ContactFields:
    """Every field normalised; raises ContactFieldError for the first bad one."""
    return ContactFields(
        email=normalise_email(email) if email else None,
        phone=normalise_phone(phone, default_region) if phone else None,
        time_zone=check_time_zone(time_zone) if time_zone else None,
        attributes=check_attributes(attributes),
    )


def _bad_value(value: Any) -> tuple[str, str]:
    """Where in `value` (e.g. `[1]`) a value cannot be stored as JSON both backends read back, and
    why; two empty strings when every value can."""
    if isinstance(value, str):
        # PostgreSQL's JSON functions cannot read a NUL character, so none is stored.
        return ("", "contains a NUL character") if "\x00" in value else ("", "")
    if isinstance(value, float):
        # JSON has no NaN or Infinity.
        return ("", "") if math.isfinite(value) else ("", "must be a finite number")
    items: list[tuple[str, Any]] = []
    if isinstance(value, list):
        items = [(f"[{index}]", item) for index, item in enumerate(value)]
    elif isinstance(value, dict):
        items = [(f".{key}", key) for key in value] + [(f".{key}", item) for key, item in value.items()]
    for prefix, item in items:
        where, problem = _bad_value(item)
        if problem:
            return prefix + where, problem
    return "", ""
