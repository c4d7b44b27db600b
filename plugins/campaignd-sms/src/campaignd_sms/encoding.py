"""Text to SMS parts: GSM 03.38 with its extension table, else UCS-2, split for concatenation.

One SMS carries 160 GSM-7 septets or 70 UCS-2 characters. A longer text is split into parts of
153 septets or 67 characters, which leaves room for the 6-byte concatenation header (UDH) every
part carries; with SAR the same sizes are kept, so a text has the same number of parts either way.
An extension character (`€`, `[`, `{`, …) takes two septets (escape and code) and is never split
across parts; neither is a character outside the Basic Multilingual Plane (an emoji), which UCS-2
carries as two 16-bit units (UTF-16).
"""

from __future__ import annotations

import enum
import re
from typing import NamedTuple

# GSM 03.38 default alphabet, code by code; 0x1B is the escape to the extension table.
GSM_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM_EXTENSION = {
    "\f": 0x0A,
    "^": 0x14,
    "{": 0x28,
    "}": 0x29,
    "\\": 0x2F,
    "[": 0x3C,
    "~": 0x3D,
    "]": 0x3E,
    "|": 0x40,
    "€": 0x65,
}
ESCAPE = 0x1B
_BASIC_CODES = {char: code for code, char in enumerate(GSM_BASIC) if code != ESCAPE}
_BASIC_CHARS = dict(enumerate(GSM_BASIC))
_EXTENSION_CHARS = {code: char for char, code in GSM_EXTENSION.items()}

GSM7_SINGLE, GSM7_PART = 160, 153  # septets
UCS2_SINGLE, UCS2_PART = 70, 67  # 16-bit units
MAX_PARTS = 255  # the concatenation header counts parts in one byte


class Encoding(enum.StrEnum):
    """The alphabet of a message, and its SMPP data_coding."""

    GSM7 = "GSM-7"
    UCS2 = "UCS-2"

    @property
    def data_coding(self) -> int:
        """SMPP data_coding: 0 (the SMSC's default alphabet, GSM 03.38) or 8 (UCS-2)."""
        return 0 if self is Encoding.GSM7 else 8


class Encoded(NamedTuple):
    """A text as it goes on the wire: its encoding and the payload of each part (without any
    concatenation header). GSM-7 payloads are unpacked: one septet per byte, as SMPP carries
    them with data_coding 0."""

    text: str
    encoding: Encoding
    parts: tuple[bytes, ...]

    @property
    def units(self) -> int:
        """Septets (GSM-7) or 16-bit units (UCS-2) of the whole text."""
        size = sum(len(p) for p in self.parts)
        return size if self.encoding is Encoding.GSM7 else size // 2


_GSM_CHARS = frozenset(_BASIC_CODES) | frozenset(GSM_EXTENSION)
# str.translate to one character per septet, then Latin-1: the septets as bytes in one pass.
_TO_SEPTETS = {ord(c): chr(code) for c, code in _BASIC_CODES.items()} | {
    ord(c): chr(ESCAPE) + chr(code) for c, code in GSM_EXTENSION.items()
}


# ASCII characters that are one septet each (every printable one but ` and the extension
# table's), and their septets: most texts are only these, and are encoded by bytes.translate.
_PLAIN = re.compile(r"[\n\r -Z_a-z]*")
_PLAIN_SEPTETS = bytes(_BASIC_CODES.get(chr(byte), 0) for byte in range(256))


def is_gsm7(text: str) -> bool:
    """Whether every character of `text` is in the GSM 03.38 alphabet or its extension table."""
    return _GSM_CHARS.issuperset(text)


def _septets(text: str) -> bytes | None:
    """The unpacked GSM-7 septets of `text`, or None when it is not in GSM-7."""
    if _PLAIN.fullmatch(text):
        return text.encode("ascii").translate(_PLAIN_SEPTETS)
    if is_gsm7(text):
        return text.translate(_TO_SEPTETS).encode("latin-1")
    return None


def _split(data: bytes, single: int, part: int, *, ucs2: bool) -> tuple[bytes, ...]:
    """Cut `data` into parts of at most `part` bytes, or one part when it fits in `single`,
    never inside a character: an escape and its code (GSM-7; the code is never 0x1B), or the two
    halves of a surrogate pair (UCS-2)."""
    if len(data) <= single:
        return (data,)
    parts = []
    start = 0
    while start < len(data):
        end = min(start + part, len(data))
        if end < len(data):
            if not ucs2 and data[end - 1] == ESCAPE:
                end -= 1
            elif ucs2 and 0xD8 <= data[end - 2] <= 0xDB:
                end -= 2
        parts.append(data[start:end])
        start = end
    return tuple(parts)


def encode(text: str) -> Encoded:
    """Encode `text` in GSM-7 when it can be, else UCS-2, split into parts."""
    septets = _septets(text)
    if septets is not None:
        return Encoded(text, Encoding.GSM7, _split(septets, GSM7_SINGLE, GSM7_PART, ucs2=False))
    # Sizes in bytes: two per UCS-2 unit.
    data = text.encode("utf-16-be")
    return Encoded(text, Encoding.UCS2, _split(data, UCS2_SINGLE * 2, UCS2_PART * 2, ucs2=True))


def decode(encoding: Encoding | int, data: bytes) -> str:
    """The text of a payload (data_coding 0 or 8; other codings read as Latin-1)."""
    if encoding in (Encoding.GSM7, 0):
        return decode_gsm7(data)
    if encoding in (Encoding.UCS2, 8):
        return data.decode("utf-16-be", errors="replace")
    if encoding == 1:
        return data.decode("ascii", errors="replace")
    return data.decode("latin-1")


def decode_gsm7(data: bytes) -> str:
    """The text of unpacked GSM-7 septets."""
    out = []
    escaped = False
    for byte in data:
        if escaped:
            out.append(_EXTENSION_CHARS.get(byte, " "))
            escaped = False
        elif byte == ESCAPE:
            escaped = True
        else:
            out.append(_BASIC_CHARS.get(byte, "?"))
    return "".join(out)


# -- concatenation ---------------------------------------------------------------------------------


class Concatenation(enum.StrEnum):
    """How the parts of a long message are tied together for the handset."""

    UDH = "udh"  # a 6-byte User Data Header in each part's short_message, esm_class bit 0x40
    SAR = "sar"  # the sar_* optional parameters of submit_sm


UDHI = 0x40  # esm_class: the short message starts with a User Data Header


def udh(reference: int, total: int, number: int) -> bytes:
    """The concatenation header of one part: IEI 0x00 (8-bit reference)."""
    return bytes((0x05, 0x00, 0x03, reference & 0xFF, total, number))


def strip_udh(esm_class: int, data: bytes) -> tuple[bytes, bytes]:
    """(header, payload) of a short message: the header is empty unless esm_class says so."""
    if esm_class & UDHI and data:
        length = data[0] + 1
        return data[:length], data[length:]
    return b"", data
