"""Contact field normalisation: the fast path for plain addresses agrees with email-validator."""

from __future__ import annotations

import math

import email_validator
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaignd.audience import contacts

_LOCAL_CHARS = "abcXYZ019._!#$%&'*+-/=?^`{|}~\"(),:;<>@[\\] é"
_DOMAINS = [
    "example.org",
    "Example.ORG",
    "mail.example.co.uk",
    "localhost",
    "foo.test",
    "foo.local",
    "host.invalid",
    "example",
    "1.2.3.4",
    "[1.2.3.4]",
    "exa_mple.com",
    "-bad.com",
    "bad-.com",
    "a..b.com",
    "xn--bcher-kva.de",
    "bücher.de",
    "example.org.",
    " example.org",
    "123.456",
    "x" * 64 + ".com",
    ("a" * 60 + ".") * 4 + "com",
]


def _reference(value: str) -> str | None:
    try:
        checked = email_validator.validate_email(value, check_deliverability=False)
    except email_validator.EmailNotValidError:
        return None
    return checked.normalized.lower()


def _ours(value: str) -> str | None:
    try:
        return contacts.normalise_email(value)
    except contacts.ContactFieldError:
        return None


@settings(max_examples=3000)
@given(
    local=st.text(alphabet=_LOCAL_CHARS, min_size=0, max_size=70),
    domain=st.sampled_from(_DOMAINS),
    extra_at=st.booleans(),
)
def test_plain_addresses_normalise_as_email_validator_does(local: str, domain: str, extra_at: bool) -> None:
    """Accepted, refused and lower-cased exactly as email-validator decides, whatever the local
    part, for valid, reserved, malformed and internationalised domains."""
    value = f"{local}@{domain}" + ("@x.org" if extra_at else "")
    assert _ours(value) == _reference(value)


def test_a_refused_address_keeps_email_validators_reason() -> None:
    """A refusal names the field and gives email-validator's sentence."""
    with pytest.raises(contacts.ContactFieldError) as caught:
        contacts.normalise_email("someone@foo.test")
    assert caught.value.field == "email"
    assert "special-use or reserved name" in caught.value.reason


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"score": math.nan}, "attributes.score"),
        ({"score": -math.inf}, "attributes.score"),
        ({"tags": ["a", math.inf]}, "attributes.tags[1]"),
        ({"tags": [{"deep": math.nan}]}, "attributes.tags[0].deep"),
        ({"tags": [{"k\x00": 1}]}, "attributes.tags[0].k\x00"),
    ],
)
def test_values_json_cannot_hold_are_refused(value: dict[str, object], field: str) -> None:
    """NaN, ±Infinity and NUL characters are refused wherever they sit in an attribute, on their path."""
    with pytest.raises(contacts.ContactFieldError) as caught:
        contacts.check_attributes(value)
    assert caught.value.field == field


@settings(max_examples=1500)
@given(
    email=st.text(max_size=80),
    phone=st.text(alphabet="+0123456789 ()-.xext#*abc\u0661\uff11", max_size=40) | st.text(max_size=40),
    time_zone=st.text(max_size=40),
    value=st.recursive(
        st.none() | st.booleans() | st.floats() | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=8,
    ),
)
def test_any_input_is_normalised_or_refused_by_field(
    email: str, phone: str, time_zone: str, value: object
) -> None:
    """Whatever the fields hold, normalisation returns or raises ContactFieldError naming a field,
    never another exception (an import would reject the row as unreadable)."""
    field = ""
    try:
        contacts.normalise(
            email=email, phone=phone, time_zone=time_zone, attributes={"a": value}, default_region="US"
        )
    except contacts.ContactFieldError as exc:
        field = exc.field
    assert field.split(".")[0] in {"", "email", "phone", "time_zone", "attributes"}
