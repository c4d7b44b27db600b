"""The PDUs the smpp transport writes and reads by hand are those of aiosmpplib's codec."""

from __future__ import annotations

import struct

from aiosmpplib import NPI, TON, DeliverSmResp, OptionalParam, PhoneNumber, SubmitSm
from campaignd_sms import smpp
from campaignd_sms.encoding import UDHI, Concatenation, Encoding, encode, udh
from campaignd_sms.receipts import parse_receipt
from campaignd_sms.settings import Sender, parse_sender
from hypothesis import given, settings
from hypothesis import strategies as st

SENDERS = st.sampled_from(["Shop", "Shop 24", "+14155550100", "12345", "447700900123"])
TEXTS = st.one_of(
    st.text(st.characters(max_codepoint=127), min_size=1, max_size=500),
    st.text(min_size=1, max_size=300),
)
NUMBERS = st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True)


def codec_pdus(
    address: str, text: str, sender: Sender, concatenation: Concatenation, reference: int, registered: int
) -> list[bytes]:
    """The submit_sm PDUs of one message built with aiosmpplib, sequence numbers from 1."""
    encoded = encode(text)
    total = len(encoded.parts)
    destination = PhoneNumber(address.lstrip("+"), TON.INTERNATIONAL, NPI.ISDN)
    source = PhoneNumber(sender.address, TON(sender.ton), NPI(sender.npi))
    pdus = []
    for number, payload in enumerate(encoded.parts, start=1):
        esm_class, params, data = 0, [], payload
        if total > 1 and concatenation is Concatenation.UDH:
            esm_class, data = UDHI, udh(reference, total, number) + payload
        elif total > 1:
            params = [
                OptionalParam(smpp.SAR_MSG_REF_NUM, reference & 0xFFFF),
                OptionalParam(smpp.SAR_TOTAL_SEGMENTS, total),
                OptionalParam(smpp.SAR_SEGMENT_SEQNUM, number),
            ]
        message = SubmitSm(
            sequence_num=number,
            short_message=" ",  # replaced by the encoded bytes
            source=source,
            destination=destination,
            esm_class=esm_class,
            registered_delivery=registered,
            encoding="gsm0338" if encoded.encoding is Encoding.GSM7 else "ucs2",
            optional_params=params,
            auto_message_payload=False,
        )
        message.set_encoded_message(data)
        pdus.append(bytes(message.pdu()))
    return pdus


@settings(max_examples=300, deadline=None)
@given(
    TEXTS,
    SENDERS,
    NUMBERS,
    st.sampled_from(Concatenation),
    st.integers(1, 2**31),
    st.sampled_from([0, 1]),
)
def test_submit_sm_is_the_codecs(
    text: str, sender: str, address: str, concatenation: Concatenation, reference: int, registered: int
) -> None:
    """Every part's submit_sm is byte for byte what aiosmpplib builds for the same message."""
    parsed = parse_sender(sender)
    submission = smpp.Builder(parsed, concatenation, registered).build(7, address, encode(text), reference)
    ours = [smpp.submit_sm(n, body) for n, body in enumerate(submission.parts, start=1)]
    assert submission.message_id == 7
    assert ours == codec_pdus(address, text, parsed, concatenation, reference, registered)


@given(st.integers(1, 0x7FFFFFFF))
def test_deliver_sm_resp_is_the_codecs(sequence: int) -> None:
    """The answer to a deliver_sm is aiosmpplib's deliver_sm_resp."""
    assert smpp.deliver_sm_resp(sequence) == bytes(DeliverSmResp(sequence_num=sequence).pdu())


def deliver_sm(text: bytes, *, esm_class: int = 0x04, tlvs: bytes = b"") -> bytes:
    """A deliver_sm carrying `text` in short_message."""
    body = b"\x00\x01\x0114155550100\x00\x00\x00Shop\x00" + bytes((esm_class, 0, 0))
    body += b"\x00\x00" + bytes((0, 0, 0, 0, len(text))) + text + tlvs
    return struct.pack("!IIII", 16 + len(body), 5, 0, 9) + body


VISIBLE = st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters=":")
FIELD = st.text(VISIBLE, max_size=12)


@settings(max_examples=200, deadline=None)
@given(
    st.text(VISIBLE, min_size=1, max_size=65),
    st.sampled_from(["DELIVRD", "UNDELIV", "EXPIRED", "REJECTD", "ACCEPTD", "delivrd"]),
    FIELD,
    FIELD,
    st.booleans(),
)
def test_a_usual_receipt_reads_as_the_general_parser_reads_it(
    part_id: str, stat: str, err: str, date: str, receipted: bool
) -> None:
    """A receipt in the usual text form is read by the shortcut as parse_receipt reads the
    text the codec decodes; the receipted_message_id parameter wins over the text's id."""
    text = f"id:{part_id} sub:001 dlvrd:001 submit date:{date} done date:{date} stat:{stat} err:{err}"
    tlvs = struct.pack("!HH", 0x001E, 4) + b"abc\x00" if receipted else b""
    pdu = deliver_sm(text.encode(), tlvs=tlvs)
    fields = smpp._usual_receipt(pdu)
    read = smpp._read_with_codec(pdu, 9)
    expected = parse_receipt(read.text, read.receipted_id)
    assert expected is not None
    assert fields == (expected.part_id, expected.stat, expected.err)


def test_anything_else_is_left_to_the_codec() -> None:
    """Receipt texts in another form, and inbound messages, are not read by the shortcut."""
    assert smpp._usual_receipt(deliver_sm(b"stat:DELIVRD id:12 err:0")) is None
    assert smpp._usual_receipt(deliver_sm(b"id:12 sub:1 dlvrd:1 submit date:x done date:y")) is None
    assert smpp._usual_receipt(deliver_sm(b"STOP", esm_class=0)) is None
    usual = b"id:12 sub:1 dlvrd:1 submit date:x done date:y stat:DELIVRD err:0 text:hello"
    assert smpp._usual_receipt(deliver_sm(usual)) == ("12", "DELIVRD", "0")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([0x00, 0x04, 0x44]))
def test_no_deliver_sm_makes_the_reader_raise(body: bytes, esm_class: int) -> None:
    """Whatever a deliver_sm holds, reading it as a receipt gives a receipt or None, never an
    exception (which would end the session)."""
    for pdu in (
        struct.pack("!IIII", 16 + len(body), 5, 0, 1) + body,
        deliver_sm(body[:254], esm_class=esm_class),
    ):
        smpp._usual_receipt(pdu)
        smpp._read_receipt(pdu)
