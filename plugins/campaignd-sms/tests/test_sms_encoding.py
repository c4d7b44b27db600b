"""Encoding and parts: what is counted is what goes on the wire, for any text."""

from __future__ import annotations

import itertools
from typing import Any

import smpp34
from campaignd_sms.encoding import (
    _TO_SEPTETS,
    GSM_BASIC,
    GSM_EXTENSION,
    Concatenation,
    Encoding,
    encode,
    is_gsm7,
)
from campaignd_sms.settings import parse_sender
from campaignd_sms.smpp import Builder, submit_sm
from hypothesis import given, settings
from hypothesis import strategies as st

# The compiled smpp34 module declares its constants to no type checker.
SAR_SEGMENT_SEQNUM: int = smpp34.TLV_SAR_SEGMENT_SEQNUM  # type: ignore[attr-defined]

GSM_CHARS = st.sampled_from([c for c in GSM_BASIC if c != "\x1b"] + list(GSM_EXTENSION))
TEXTS = st.one_of(
    st.text(GSM_CHARS, min_size=1, max_size=700),
    st.text(st.one_of(GSM_CHARS, st.sampled_from("😀🎉é漢字Ωж")), min_size=1, max_size=400),
    st.text(min_size=1, max_size=300),
)


def wire(text: str, concatenation: Concatenation) -> list[Any]:
    """The submit_sm PDUs of `text`, read back with smpp34's codec."""
    encoded = encode(text)
    submission = Builder(parse_sender("Shop"), concatenation, 1).build(1, "+14155550100", encoded, 7)
    return [smpp34.decode(submit_sm(n, body)) for n, body in enumerate(submission.parts, start=1)]


@settings(max_examples=150, deadline=None)
@given(TEXTS)
def test_parts_and_wire_agree(text: str) -> None:
    """The part count is the number of submit_sm; the parts joined decode to the text; each part
    fits one SMS with its header; no part could have taken the next part's first character."""
    encoded = encode(text)
    pdus = wire(text, Concatenation.UDH)
    assert len(pdus) == len(encoded.parts)
    gsm = is_gsm7(text)
    assert encoded.encoding is (Encoding.GSM7 if gsm else Encoding.UCS2)
    assert {p.data_coding for p in pdus} == {0 if gsm else 8}
    payloads = []
    for number, pdu in enumerate(pdus, start=1):
        data = bytes(pdu.short_message)
        if len(pdus) > 1:
            assert pdu.esm_class & 0x40
            assert data[:6] == bytes((5, 0, 3, 7, len(pdus), number))
            data = data[6:]
        payloads.append(data)
    assert tuple(payloads) == encoded.parts
    if gsm:
        single, part, unit = 160, 153, 1
    else:
        single, part, unit = 140, 134, 2
    if len(payloads) == 1:
        assert len(payloads[0]) <= single
    else:
        assert all(len(p) <= part for p in payloads)
        for current, following in itertools.pairwise(payloads):
            first = 2 if following[:1] == b"\x1b" or (not gsm and 0xD8 <= following[0] <= 0xDB) else 1
            assert len(current) + first * unit > part
    joined = b"".join(payloads)
    if gsm:
        extension = sum(c in GSM_EXTENSION for c in text)
        assert len(joined) == len(text) + extension
        assert not any(p.endswith(b"\x1b") for p in payloads[:-1])
    else:
        assert joined.decode("utf-16-be") == text
        assert not any(0xD8 <= p[-2] <= 0xDB for p in payloads if p)


@settings(max_examples=50, deadline=None)
@given(TEXTS)
def test_sar_has_the_same_parts(text: str) -> None:
    """SAR concatenation sends the same parts, numbered in sar_segment_seqnum."""
    encoded = encode(text)
    pdus = wire(text, Concatenation.SAR)
    assert tuple(bytes(p.short_message) for p in pdus) == encoded.parts
    if len(pdus) > 1:
        numbers = [next(t.as_int() for t in p.tlvs if t.tag == SAR_SEGMENT_SEQNUM) for p in pdus]
        assert numbers == list(range(1, len(pdus) + 1))


@settings(max_examples=200, deadline=None)
@given(st.one_of(TEXTS, st.text(st.characters(max_codepoint=127), max_size=400)))
def test_plain_ascii_is_encoded_as_any_gsm_text(text: str) -> None:
    """The shortcut for plain ASCII texts gives the same septets as the character table."""
    encoded = encode(text)
    if is_gsm7(text):
        assert b"".join(encoded.parts) == text.translate(_TO_SEPTETS).encode("latin-1")
    else:
        assert encoded.encoding is Encoding.UCS2


def test_known_sizes() -> None:
    """160 GSM-7 characters are one part, 161 two; an extension character counts twice; 70
    UCS-2 characters are one part, 71 two."""
    assert len(encode("a" * 160).parts) == 1
    assert len(encode("a" * 161).parts) == 2
    assert len(encode("€" * 80).parts) == 1
    assert len(encode("€" * 81).parts) == 2
    assert len(encode("ж" * 70).parts) == 1
    assert len(encode("ж" * 71).parts) == 2
    assert len(encode("a" * 459).parts) == 3
    assert len(encode("a" * 460).parts) == 4


def test_sender_kinds() -> None:
    """An alphanumeric sender is TON 5, an international number TON 1/NPI 1, a short code TON 3."""
    assert parse_sender("Shop 24") == parse_sender("Shop 24")
    assert (parse_sender("Shop").ton, parse_sender("+14155550100").ton, parse_sender("12345").ton) == (
        5,
        1,
        3,
    )
    assert parse_sender("+14155550100").address == "14155550100"
