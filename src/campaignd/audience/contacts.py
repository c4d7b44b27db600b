"""Normalising contact fields: email syntax (no DNS), E.164 phone numbers, IANA time zones."""

from __future__ import annotations

import re
import zoneinfo
from dataclasses import dataclass
from typing import Any

import email_validator
import phonenumbers

ATTRIBUTE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
MAX_ATTRIBUTES = 200
MAX_ATTRIBUTE_BYTES = 64 * 1024


class ContactFieldError(ValueError):
    """A contact field is not valid; `field` names it."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def normalise_email(value: str) -> str:
    """The address lower-cased, checked for syntax only (no DNS lookups)."""
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
        # PostgreSQL's JSON functions cannot read a NUL character, so none is stored.
        if _has_nul(value):
            raise ContactFieldError(f"attributes.{key}", "contains a NUL character")
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


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    return isinstance(value, list) and any(_has_nul(item) for item in value)
