"""SMS text encoding: GSM 03.38 / UCS-2 choice, encoding and segmenting.

We keep our own tables and splitter because smpplib 2.2.4 gets them wrong
(smpp.md §9, defects 10-13): it splits between ESC and its code, cuts emoji
surrogate pairs in half, and maps '`' onto the code point of '§'.

GSM-7 payloads are *unpacked* (one septet per octet): over SMPP the SMSC does
the packing, so a GSM-7 part with UDH is 6 + 153 = 159 octets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

from .smpp.pdu import ESM_CLASS_UDHI

GSM7_BASIC: str = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION: dict[str, int] = {
    "\f": 0x0A, "^": 0x14, "{": 0x28, "}": 0x29, "\\": 0x2F,
    "[": 0x3C, "~": 0x3D, "]": 0x3E, "|": 0x40, "€": 0x65,
}

GSM7_ESCAPE = 0x1B
DATA_CODING_GSM7 = 0x00
DATA_CODING_IA5 = 0x01
DATA_CODING_LATIN1 = 0x03
DATA_CODING_UCS2 = 0x08

GSM7_SINGLE_UNITS = 160
GSM7_PART_UNITS = 153  # 160 septets minus the 6-octet UDH (7 septets once packed)
UCS2_SINGLE_UNITS = 70
UCS2_PART_UNITS = 67  # 140 octets minus the 6-octet UDH, in UTF-16 units
MAX_PARTS = 255  # the total/seq fields of the concat UDH and of SAR are one octet

_GSM7_CODE: dict[str, int] = {c: i for i, c in enumerate(GSM7_BASIC) if i != GSM7_ESCAPE}
_GSM7_EXTENSION_CHAR: dict[int, str] = {code: c for c, code in GSM7_EXTENSION.items()}


def _septet_table() -> list[str]:
    """A ``str.translate`` table from Unicode to unpacked GSM 03.38 septets, so that checking,
    counting and encoding a text run in C instead of one Python call per character.

    Every GSM character becomes its septet as a char below 0x80 (an extension character
    becomes ESC + code, the pair the splitter must keep together); every other code point
    up to the last GSM one ('€') becomes a non-ASCII marker, and those beyond the table
    stay themselves (non-ASCII too). So the translated text is ASCII exactly when the
    whole text is GSM-7, and then its ASCII bytes are the septets.  A list and not a
    dict: indexing it is cheaper than hashing, and no lookup has to raise a KeyError.
    """
    not_gsm7 = "\x80"
    table = [not_gsm7] * (max(map(ord, [*_GSM7_CODE, *GSM7_EXTENSION])) + 1)
    for char, code in _GSM7_CODE.items():
        table[ord(char)] = chr(code)
    for char, code in GSM7_EXTENSION.items():
        table[ord(char)] = chr(GSM7_ESCAPE) + chr(code)
    return table


_GSM7_SEPTETS: list[str] = _septet_table()
# A non-ASCII text is GSM-7 only with accents, Greek capitals or '€' in it; most are
# Cyrillic, and this finds the first character outside the alphabet without
# translating the whole text first.
_NOT_GSM7 = re.compile("[^" + "".join(re.escape(c) for c in [*_GSM7_CODE, *GSM7_EXTENSION]) + "]")
_GSM7_CHARS: list[str] = list(GSM7_BASIC)  # septet -> character, for gsm7_decode's translate


def _is_gsm7_char(char: str) -> bool:
    return char in _GSM7_CODE or char in GSM7_EXTENSION


def is_gsm7(text: str) -> bool:
    """True when the whole text fits the default alphabet, i.e. costs half as much as UCS-2."""
    if text.isascii():
        return text.translate(_GSM7_SEPTETS).isascii()
    return _NOT_GSM7.search(text) is None


def non_gsm7_chars(text: str) -> list[str]:
    """The characters to blame when a message goes out as UCS-2 (e.g. a '`' or a smart quote)."""
    if is_gsm7(text):  # the common answer, in one C call
        return []
    return list(dict.fromkeys(c for c in text if not _is_gsm7_char(c)))


def _gsm7_unit(char: str) -> bytes:
    """One character as the septets that must travel together in one part."""
    if char in _GSM7_CODE:
        return bytes([_GSM7_CODE[char]])
    if char in GSM7_EXTENSION:
        return bytes([GSM7_ESCAPE, GSM7_EXTENSION[char]])
    raise ValueError(f"character {char!r} is not in GSM 03.38")


def gsm7_encode(text: str) -> bytes:
    """Unpacked septets, because SMPP carries GSM-7 one septet per octet and the SMSC packs it."""
    septets = text.translate(_GSM7_SEPTETS)
    if septets.isascii():
        return septets.encode("ascii")
    return b"".join(_gsm7_unit(c) for c in text)  # raises, naming the first character not in GSM


def gsm7_decode(data: bytes) -> str:
    """Strict inverse of gsm7_encode, so a part cut after an ESC shows up as an error."""
    if data.isascii() and GSM7_ESCAPE not in data:  # no escapes, no octet to refuse: one C call
        return data.decode("ascii").translate(_GSM7_CHARS)
    return _gsm7_decode_per_octet(data)


def _gsm7_decode_per_octet(data: bytes) -> str:
    """``gsm7_decode`` one octet at a time: its definition, and the path that explains errors."""
    chars: list[str] = []
    escaped = False
    for octet in data:
        if octet > 0x7F:
            raise ValueError(f"octet 0x{octet:02X} is not a GSM-7 septet")
        if escaped:
            if octet not in _GSM7_EXTENSION_CHAR:
                raise ValueError(f"ESC 0x{octet:02X} is not a GSM-7 extension code")
            chars.append(_GSM7_EXTENSION_CHAR[octet])
            escaped = False
        elif octet == GSM7_ESCAPE:
            escaped = True
        else:
            chars.append(GSM7_BASIC[octet])
    if escaped:
        raise ValueError("GSM-7 data ends with a lone ESC")
    return "".join(chars)


def udh_concat(ref: int, total: int, seq: int, *, ref16: bool = False) -> bytes:
    """Concatenation UDH (with its length octet); 16-bit refs avoid collisions on one handset."""
    if not 1 <= total <= MAX_PARTS:
        raise ValueError(f"total parts {total} outside 1..{MAX_PARTS}")
    if not 1 <= seq <= total:
        raise ValueError(f"part number {seq} outside 1..{total}")
    if ref16:
        if not 0 <= ref <= 0xFFFF:
            raise ValueError(f"16-bit concat ref {ref} out of range")
        return bytes([0x06, 0x08, 0x04, ref >> 8, ref & 0xFF, total, seq])
    if not 0 <= ref <= 0xFF:
        raise ValueError(f"8-bit concat ref {ref} out of range")
    return bytes([0x05, 0x00, 0x03, ref, total, seq])


class EncodedText(NamedTuple):
    """A message ready for submit_sm: one payload per segment, UDH to be added by the sender.

    A NamedTuple, not a frozen dataclass: built once or twice per message (intake, the route).

    ref16 is kept because it changes the capacity of a multipart segment (152/66 instead of
    153/67), which chars_left() needs.
    """

    encoding: str
    data_coding: int
    parts: tuple[bytes, ...]
    ref16: bool = False

    @property
    def segments(self) -> int:
        return len(self.parts)

    def chars_left(self) -> int:
        """Units that still fit before the operator bills another segment (for the UI counter)."""
        layout = _layout(self.encoding, self.ref16)
        capacity = layout.single_units if self.segments == 1 else layout.part_units
        return capacity - len(self.parts[-1]) // layout.unit_octets


@dataclass(frozen=True)
class _Layout:
    data_coding: int
    unit_octets: int
    single_units: int
    part_units: int


def _layout(encoding: str, ref16: bool) -> _Layout:
    """Capacities per coding; a 16-bit concat ref costs one more octet, hence one unit less."""
    ref16_cost = 1 if ref16 else 0
    if encoding == "gsm7":
        return _Layout(DATA_CODING_GSM7, 1, GSM7_SINGLE_UNITS, GSM7_PART_UNITS - ref16_cost)
    return _Layout(DATA_CODING_UCS2, 2, UCS2_SINGLE_UNITS, UCS2_PART_UNITS - ref16_cost)


def _units(text: str) -> tuple[str, list[bytes]]:
    """Split text into indivisible units: ESC+code and surrogate pairs must stay in one part."""
    if all(_is_gsm7_char(c) for c in text):  # not is_gsm7(): the definition keeps off the table
        return "gsm7", [_gsm7_unit(c) for c in text]
    return "ucs2", [c.encode("utf-16-be") for c in text]


def _latin_units(text: str, charset: str) -> list[tuple[bytes, int]] | None:
    """Units for an operator that takes Latin text as IA5/Latin-1 and converts it to GSM itself.

    The handset still receives GSM-7, so the cost of a unit is its GSM septets (an
    extension character costs 2) although it travels as one octet.  None when a
    character has no octet in ``charset`` (Greek capitals, '€'): then GSM-7 it is.
    """
    units = []
    for c in text:
        try:
            octet = c.encode(charset)
        except UnicodeEncodeError:
            return None
        units.append((octet, 2 if c in GSM7_EXTENSION else 1))
    return units


def _pack_parts(units: list[tuple[bytes, int]], capacity: int) -> list[bytes]:
    """Greedy fill: a unit that does not fit whole starts the next part (a part may end short)."""
    parts: list[bytes] = []
    current: list[bytes] = []
    used = 0
    for unit, cost in units:
        if used + cost > capacity:
            parts.append(b"".join(current))
            current, used = [], 0
        current.append(unit)
        used += cost
    parts.append(b"".join(current))
    return parts


_LATIN_CHARSETS = {DATA_CODING_IA5: "ascii", DATA_CODING_LATIN1: "latin-1"}


def encode(text: str, *, ref16: bool = False, latin_coding: int = DATA_CODING_GSM7,
           split: bool = True) -> EncodedText:
    """Choose the cheapest coding and cut into segments the way the handset will reassemble them.

    ``latin_coding``: the data_coding the operator wants for text that fits the GSM
    alphabet (0x00 GSM-7 unpacked, 0x01 IA5, 0x03 Latin-1; reference §12).
    ``split=False`` keeps the whole text in one part, for ``message_payload``,
    where the SMSC does the splitting.

    Every message is encoded twice (intake counts its segments, the route builds its
    submit_sm), so this works on whole strings in C: a regex finds the first non-GSM
    character of a non-ASCII text, the septet table and UTF-16 give the payload, and
    the parts are cut out of it, stepping back one unit where a cut
    would split an ESC pair or a surrogate pair.  What that cannot decide exactly as
    the per-character rules would (a lone surrogate, whose error names it, and a
    multipart IA5/Latin-1 text, where octets and septets differ) takes
    ``_encode_per_char``, the definition the tests hold this function to.
    """
    if text.isascii() or _NOT_GSM7.search(text) is None:  # Cyrillic is UCS-2 without translating
        septets = text.translate(_GSM7_SEPTETS)  # ASCII text may still hold a '`' or a control char
        gsm7 = septets.isascii()
    else:
        septets, gsm7 = "", False
    if gsm7:
        if latin_coding != DATA_CODING_GSM7:
            charset = _LATIN_CHARSETS.get(latin_coding)
            if charset is None or (split and len(septets) > GSM7_SINGLE_UNITS):
                return _encode_per_char(text, ref16=ref16, latin_coding=latin_coding, split=split)
            try:  # one part; what the handset is billed is its septets, counted above
                return EncodedText("gsm7", latin_coding, (text.encode(charset),), ref16)
            except UnicodeEncodeError:
                pass  # a character without an octet in the charset: GSM-7 it is
        data_coding, unit_octets, payload = DATA_CODING_GSM7, 1, septets.encode("ascii")
        encoding, single_units = "gsm7", GSM7_SINGLE_UNITS
        part_units = GSM7_PART_UNITS - 1 if ref16 else GSM7_PART_UNITS
    else:
        try:
            payload = text.encode("utf-16-be")
        except UnicodeEncodeError:  # a lone surrogate: let the per-character path say which
            return _encode_per_char(text, ref16=ref16, latin_coding=latin_coding, split=split)
        data_coding, unit_octets = DATA_CODING_UCS2, 2
        encoding, single_units = "ucs2", UCS2_SINGLE_UNITS
        part_units = UCS2_PART_UNITS - 1 if ref16 else UCS2_PART_UNITS
    if len(payload) <= single_units * unit_octets or not split:
        return EncodedText(encoding, data_coding, (payload,), ref16)
    parts = _cut(payload, part_units * unit_octets, unit_octets)
    if len(parts) > MAX_PARTS:
        raise ValueError(f"message needs {len(parts)} parts, at most {MAX_PARTS} can be joined")
    return EncodedText(encoding, data_coding, tuple(parts), ref16)


def _cut(payload: bytes, capacity: int, unit_octets: int) -> list[bytes]:
    """Parts of at most ``capacity`` octets, each ending on a whole character.

    A part whose last unit starts a pair (ESC, which in our septets is never anything
    but the first of an extension pair, or a UTF-16 high surrogate, which UTF-16
    always follows with its low half) gives that unit to the next part instead: the
    greedy rule of ``_pack_parts``, where a unit that does not fit whole starts the
    next part.
    """
    parts = []
    start, end = 0, len(payload)
    while end - start > capacity:
        cut = start + capacity
        if unit_octets == 1:
            if payload[cut - 1] == GSM7_ESCAPE:
                cut -= 1
        elif 0xD8 <= payload[cut - 2] <= 0xDB:
            cut -= 2
        parts.append(payload[start:cut])
        start = cut
    parts.append(payload[start:])
    return parts


def _encode_per_char(text: str, *, ref16: bool = False, latin_coding: int = DATA_CODING_GSM7,
                     split: bool = True) -> EncodedText:
    """``encode`` one character at a time: its definition, and its fallback for the rare cases."""
    encoding, units = _units(text)
    layout = _layout(encoding, ref16)
    data_coding = layout.data_coding
    costed: list[tuple[bytes, int]] | None = None
    if encoding == "gsm7" and latin_coding != DATA_CODING_GSM7:
        charset = _LATIN_CHARSETS.get(latin_coding)
        if charset is None:
            raise ValueError(f"latin_coding must be 0x00, 0x01 or 0x03, got 0x{latin_coding:02X}")
        costed = _latin_units(text, charset)
        if costed is not None:
            data_coding = latin_coding
    if costed is None:
        costed = [(u, len(u) // layout.unit_octets) for u in units]
    total_units = sum(cost for _, cost in costed)
    if total_units <= layout.single_units or not split:
        parts = [b"".join(u for u, _ in costed)]
    else:
        parts = _pack_parts(costed, layout.part_units)
    if len(parts) > MAX_PARTS:
        raise ValueError(f"message needs {len(parts)} parts, at most {MAX_PARTS} can be joined")
    return EncodedText(encoding, data_coding, tuple(parts), ref16)


def count_segments(text: str) -> int:
    """What the customer is billed for, shown before sending."""
    return encode(text).segments


def decode(data_coding: int, payload: bytes) -> str:
    """Text of a received or echoed payload; unknown codings fail loudly instead of mojibake."""
    if data_coding == DATA_CODING_GSM7:
        return gsm7_decode(payload)
    if data_coding == DATA_CODING_UCS2:
        return payload.decode("utf-16-be")
    if data_coding in (DATA_CODING_IA5, DATA_CODING_LATIN1):
        return payload.decode("latin-1")
    raise ValueError(f"unsupported data_coding 0x{data_coding:02X}")


def strip_udh(esm_class: int, short_message: bytes) -> tuple[bytes | None, bytes]:
    """Separate UDH (with its length octet) from the text, so a part can be decoded on its own."""
    if not esm_class & ESM_CLASS_UDHI:
        return None, short_message
    if not short_message:
        raise ValueError("UDHI set but short_message is empty")
    udh_end = 1 + short_message[0]
    if udh_end > len(short_message):
        raise ValueError(
            f"UDH length {short_message[0]} exceeds short_message of {len(short_message)} octets"
        )
    return short_message[:udh_end], short_message[udh_end:]


@dataclass(frozen=True)
class TextCost:
    """What a text costs before it is sent: for ``smppd text`` and the template warning."""

    encoding: str
    segments: int
    units: int  # septets (an extension character counts 2) or UTF-16 units
    chars_left: int
    ucs2_chars: tuple[str, ...]  # the characters that force UCS-2 (empty for GSM-7)

    def broadcast(self, recipients: int) -> int:
        """Segments billed for sending this text to ``recipients`` numbers."""
        return self.segments * recipients


def cost(text: str) -> TextCost:
    """Encoding, segments and what forces UCS-2; raises ValueError like encode()."""
    encoded = encode(text)
    layout = _layout(encoded.encoding, encoded.ref16)
    units = sum(len(p) for p in encoded.parts) // layout.unit_octets
    return TextCost(encoded.encoding, encoded.segments, units, encoded.chars_left(),
                    tuple(non_gsm7_chars(text)))
