import random

import pytest

from smppd import text
from smppd.text import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    EncodedText,
    count_segments,
    decode,
    encode,
    gsm7_decode,
    gsm7_encode,
    is_gsm7,
    non_gsm7_chars,
    strip_udh,
    udh_concat,
)

EMOJI = "\U0001F600"  # 😀, a surrogate pair in UTF-16


def _units(part: bytes, encoding: str) -> int:
    return len(part) if encoding == "gsm7" else len(part) // 2


def _joined_text(encoded: EncodedText) -> str:
    """Decode each part on its own, as the handset does, then join."""
    return "".join(decode(encoded.data_coding, part) for part in encoded.parts)


# --- tables ---------------------------------------------------------------------------


def test_basic_table_has_128_septets_with_escape_at_0x1b():
    assert len(GSM7_BASIC) == 128
    assert GSM7_BASIC[0x1B] == "\x1b"
    assert GSM7_BASIC[0x00] == "@"
    assert GSM7_BASIC[0x5F] == "§"


def test_extension_table_is_exactly_the_escape_characters():
    assert set(GSM7_EXTENSION) == set("\f^{}\\[]~|€")
    assert GSM7_EXTENSION["€"] == 0x65
    assert not set(GSM7_EXTENSION) & set(GSM7_BASIC)


# --- detection ------------------------------------------------------------------------


def test_plain_latin_text_is_gsm7():
    assert is_gsm7("Hello, World! 123 @£$ äöü")


def test_backtick_is_not_gsm7_and_forces_ucs2():
    # smpplib maps '`' onto 0x5F, which is '§' (smpp.md §9 defect 13)
    assert not is_gsm7("`")
    assert encode("code `1234`").encoding == "ucs2"
    assert encode("code `1234`").data_coding == 0x08


def test_section_sign_is_gsm7_at_0x5f():
    encoded = encode("§ 5")
    assert encoded.encoding == "gsm7"
    assert encoded.data_coding == 0x00
    assert encoded.parts == (bytes([0x5F, 0x20, 0x35]),)


def test_cyrillic_forces_ucs2():
    assert not is_gsm7("Ваш код")
    assert encode("Ваш код").encoding == "ucs2"


def test_non_gsm7_chars_are_distinct_in_order_of_first_appearance():
    assert non_gsm7_chars("a`bЖ`c“Ж") == ["`", "Ж", "“"]
    assert non_gsm7_chars("plain {text} €") == []


def test_empty_text_is_gsm7():
    assert is_gsm7("")


# --- gsm7_encode / gsm7_decode ----------------------------------------------------------


def test_gsm7_encode_is_unpacked_septets_with_escape_pairs():
    assert gsm7_encode("A€@") == bytes([0x41, 0x1B, 0x65, 0x00])


def test_gsm7_encode_rejects_non_gsm_character():
    with pytest.raises(ValueError):
        gsm7_encode("Ж")


def test_gsm7_round_trip_of_every_character():
    everything = "".join(c for c in GSM7_BASIC if c != "\x1b") + "".join(GSM7_EXTENSION)
    assert gsm7_decode(gsm7_encode(everything)) == everything


@pytest.mark.parametrize(
    "data",
    [bytes([0x41, 0x1B]), bytes([0x80]), bytes([0x1B, 0x41])],
    ids=["trailing-esc", "high-octet", "unknown-extension"],
)
def test_gsm7_decode_rejects_malformed_data(data):
    with pytest.raises(ValueError):
        gsm7_decode(data)


# --- GSM-7 segmenting -------------------------------------------------------------------


def test_160_gsm_chars_fit_one_segment():
    encoded = encode("a" * 160)
    assert encoded.segments == 1
    assert encoded.parts == (b"a" * 160,)


def test_161_gsm_chars_need_two_segments_of_153_and_8():
    encoded = encode("a" * 161)
    assert encoded.segments == 2
    assert [len(p) for p in encoded.parts] == [153, 8]


def test_306_gsm_chars_fit_two_segments_and_307_need_three():
    assert count_segments("a" * 306) == 2
    assert count_segments("a" * 307) == 3


def test_escape_characters_count_double():
    assert encode("€" * 80).segments == 1  # 160 septets
    assert encode("€" * 80 + "a").segments == 2  # 161 septets


def test_escape_straddling_the_boundary_moves_whole_to_next_part():
    # 152 plain septets, then '€' (ESC + 0x65) would occupy septets 153 and 154
    text = "a" * 152 + "€" + "b" * 10
    encoded = encode(text)
    first, second = encoded.parts
    assert first == b"a" * 152
    assert second[:2] == bytes([0x1B, 0x65])
    assert _joined_text(encoded) == text


def test_no_gsm_part_ends_with_escape():
    text = "x" + "{" * 400  # every odd boundary would land between ESC and code
    encoded = encode(text)
    assert encoded.segments > 2
    for part in encoded.parts:
        assert part[-1:] != b"\x1b"
        assert len(part) <= 153
    assert _joined_text(encoded) == text


def test_gsm_parts_never_exceed_153_and_round_trip():
    text = ("Hello [world] ~ {test} | 100€ ^_^ \\ " * 20).strip()
    encoded = encode(text)
    assert all(len(p) <= 153 for p in encoded.parts)
    assert _joined_text(encoded) == text


# --- UCS-2 segmenting -------------------------------------------------------------------


def test_70_ucs2_chars_fit_one_segment():
    encoded = encode("Ж" * 70)
    assert encoded.segments == 1
    assert encoded.parts == (("Ж" * 70).encode("utf-16-be"),)


def test_71_ucs2_chars_need_two_segments_of_67_and_4():
    encoded = encode("Ж" * 71)
    assert encoded.segments == 2
    assert [_units(p, "ucs2") for p in encoded.parts] == [67, 4]


def test_134_ucs2_chars_fit_two_segments_and_135_need_three():
    assert count_segments("Ж" * 134) == 2
    assert count_segments("Ж" * 135) == 3


def test_emoji_counts_two_units():
    assert encode(EMOJI * 35).segments == 1  # 70 units
    assert encode(EMOJI * 35 + "Ж").segments == 2


def test_emoji_straddling_the_67_boundary_stays_whole_and_both_parts_decode():
    # 66 units, then an emoji whose surrogate pair would occupy units 67 and 68
    text = "Ж" * 66 + EMOJI + "конец"
    encoded = encode(text)
    first, second = encoded.parts
    assert decode(0x08, first) == "Ж" * 66
    assert decode(0x08, second) == EMOJI + "конец"
    assert _joined_text(encoded) == text


def test_lone_surrogate_half_does_not_decode():
    # what smpplib produces at a boundary (issue #160): proves the decode check above is meaningful
    with pytest.raises(UnicodeDecodeError):
        decode(0x08, EMOJI.encode("utf-16-be")[:2])


def test_ucs2_round_trip_mixed_text():
    text = "Ваш заказ №42 готов 👍 — ждём вас! `quote`" * 4
    encoded = encode(text)
    assert encoded.encoding == "ucs2"
    assert all(_units(p, "ucs2") <= 67 for p in encoded.parts)
    assert _joined_text(encoded) == text


# --- ref16 capacities -------------------------------------------------------------------


def test_ref16_gsm_parts_hold_152():
    assert [len(p) for p in encode("a" * 161, ref16=True).parts] == [152, 9]
    assert encode("a" * 304, ref16=True).segments == 2
    assert encode("a" * 305, ref16=True).segments == 3


def test_ref16_ucs2_parts_hold_66():
    assert [_units(p, "ucs2") for p in encode("Ж" * 71, ref16=True).parts] == [66, 5]


def test_ref16_does_not_change_single_segment_capacity():
    assert encode("a" * 160, ref16=True).segments == 1
    assert encode("Ж" * 70, ref16=True).segments == 1


# --- chars_left -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ref16", "left"),
    [
        ("", False, 160),
        ("a" * 150, False, 10),
        ("€" * 5, False, 150),
        ("a" * 160, False, 0),
        ("a" * 161, False, 145),  # 153 - 8
        ("a" * 161, True, 143),  # 152 - 9
        ("Ж" * 10, False, 60),
        (EMOJI, False, 68),
        ("Ж" * 71, False, 63),  # 67 - 4
        ("Ж" * 71, True, 61),  # 66 - 5
    ],
)
def test_chars_left(text, ref16, left):
    assert encode(text, ref16=ref16).chars_left() == left


def test_empty_text_is_one_empty_gsm_part():
    encoded = encode("")
    assert encoded.parts == (b"",)
    assert encoded.segments == 1
    assert encoded.encoding == "gsm7"


def test_message_longer_than_255_parts_is_refused():
    with pytest.raises(ValueError):
        encode("a" * (153 * 255 + 1))


# --- UDH ---------------------------------------------------------------------------------


def test_udh_concat_8bit_bytes():
    assert udh_concat(0xAB, 3, 2) == bytes.fromhex("050003AB0302")


def test_udh_concat_16bit_bytes():
    assert udh_concat(0x1234, 3, 1, ref16=True) == bytes.fromhex("0608041234" "0301")


@pytest.mark.parametrize(
    ("ref", "total", "seq", "ref16"),
    [(256, 2, 1, False), (0x10000, 2, 1, True), (-1, 2, 1, False), (1, 0, 0, False),
     (1, 2, 3, False), (1, 2, 0, False), (1, 256, 1, False)],
)
def test_udh_concat_rejects_out_of_range(ref, total, seq, ref16):
    with pytest.raises(ValueError):
        udh_concat(ref, total, seq, ref16=ref16)


def test_strip_udh_splits_header_from_body():
    udh = udh_concat(7, 2, 1)
    assert strip_udh(0x40, udh + b"body") == (udh, b"body")
    assert strip_udh(0x43, udh + b"body") == (udh, b"body")  # other esm_class bits do not matter


def test_strip_udh_without_udhi_returns_message_untouched():
    assert strip_udh(0x00, b"\x05\x00\x03body") == (None, b"\x05\x00\x03body")


def test_strip_udh_rejects_header_longer_than_message():
    with pytest.raises(ValueError):
        strip_udh(0x40, b"\x05\x00\x03")


# --- decode ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data_coding", "payload", "text"),
    [
        (0x00, bytes([0x48, 0x69, 0x1B, 0x65]), "Hi€"),
        (0x08, "Привет".encode("utf-16-be"), "Привет"),
        (0x01, b"caf\xe9", "café"),
        (0x03, b"caf\xe9", "café"),
    ],
)
def test_decode_by_data_coding(data_coding, payload, text):
    assert decode(data_coding, payload) == text


def test_decode_rejects_unknown_data_coding():
    with pytest.raises(ValueError):
        decode(0x04, b"\x00\x01")


def test_full_long_message_reassembles_from_udh_parts():
    text = "Ваш код подтверждения: 1234. " * 6
    encoded = encode(text)
    pdus = [udh_concat(9, encoded.segments, i + 1) + part for i, part in enumerate(encoded.parts)]
    bodies = []
    for pdu in pdus:
        udh, body = strip_udh(0x40, pdu)
        assert udh is not None and udh[-2:] == bytes([encoded.segments, len(bodies) + 1])
        bodies.append(decode(encoded.data_coding, body))
    assert "".join(bodies) == text


# --- from test_text_fast.py: the fast path against the code it replaced ---------------------------
# The whole-string encoder must be byte-identical to the per-character definition.
#
# ``text.encode`` (septet table, UTF-16, cuts with a step back) runs twice per message,
# so it is written for speed; ``text._encode_per_char`` is the rule it replaced, kept as
# its definition. These tests hold one to the other over every BMP character and over
# random texts built to hit the hard places: escape pairs and surrogate pairs at the
# 160/153/152 and 70/67/66 boundaries, lone surrogates, 255 parts and one more.


GSM_BASIC = [c for c in GSM7_BASIC if c != "\x1b"]
GSM_EXT = list(GSM7_EXTENSION)
NOT_GSM = ["`", "\x1b", "\x00", "\x7f", "ÿ", "ё", "“", "\u20ac\u0301", "\u2028"]
CYRILLIC = [chr(c) for c in range(0x410, 0x450)]
ASTRAL = [EMOJI, "\U0001F44D", "\U00010348", "\U0010FFFF"]
LONE = ["\ud800", "\udbff", "\udc00", "\udfff"]

# (ref16, latin_coding, split): every route profile, plus a latin_coding no profile allows
OPTIONS = [(r, lc, sp) for r in (False, True) for lc in (0x00, 0x01, 0x03, 0x02) for sp in (True, False)]

# unit counts where a cut lands: single-part limits, part capacities and their multiples
BOUNDARIES = sorted({0, 1, 2, 65, 66, 67, 68, 69, 70, 71, 72, 132, 133, 134, 135, 136, 151, 152, 153,
                     154, 159, 160, 161, 162, 304, 305, 306, 307, 308, 459, 460})


def outcome(fn, *args, **kwargs):
    """The result, or the exception's type and message, so failures are compared too."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the point is to compare whatever is raised
        return type(exc), str(exc)


def assert_same(sample: str, options: list[tuple[bool, int, bool]] = OPTIONS) -> None:
    assert text.non_gsm7_chars(sample) == list(dict.fromkeys(c for c in sample if not text._is_gsm7_char(c)))
    for ref16, latin_coding, split in options:
        fast = outcome(text.encode, sample, ref16=ref16, latin_coding=latin_coding, split=split)
        slow = outcome(text._encode_per_char, sample, ref16=ref16, latin_coding=latin_coding, split=split)
        assert fast == slow, (sample, ref16, latin_coding, split)


def random_text(rng: random.Random, length: int, pools: list[list[str]]) -> str:
    chars: list[str] = []
    while len(chars) < length:
        chars.append(rng.choice(rng.choice(pools)))
    return "".join(chars)


def test_is_gsm7_agrees_with_the_alphabet_for_every_bmp_character():
    for code in range(0x10000):
        char = chr(code)
        assert text.is_gsm7(char) == text._is_gsm7_char(char), hex(code)
        assert text.is_gsm7("a" + char + "€") == text._is_gsm7_char(char), hex(code)


def test_every_bmp_character_alone_and_next_to_an_escape_encodes_the_same():
    for code in range(0x10000):
        char = chr(code)
        for sample in (char, "€" + char + "a"):
            assert outcome(text.encode, sample) == outcome(text._encode_per_char, sample), hex(code)


def test_every_gsm_character_in_every_option():
    for char in GSM_BASIC + GSM_EXT + NOT_GSM + ASTRAL + LONE:
        assert_same(char)


@pytest.mark.parametrize("pools", [
    [GSM_BASIC], [GSM_BASIC, GSM_EXT], [GSM_EXT], [GSM_BASIC, GSM_EXT, NOT_GSM],
    [CYRILLIC], [CYRILLIC, ASTRAL], [ASTRAL], [GSM_BASIC, CYRILLIC, ASTRAL, GSM_EXT],
    [GSM_BASIC, LONE], [CYRILLIC, ASTRAL, LONE],
], ids=["basic", "basic+ext", "ext", "gsm+not", "cyrillic", "cyrillic+emoji", "emoji", "all",
        "basic+lone", "ucs2+lone"])
def test_random_texts_at_every_boundary(pools):
    rng = random.Random(7)
    for length in BOUNDARIES:
        for _ in range(6):
            assert_same(random_text(rng, length, pools))


def test_pairs_straddling_each_cut():
    """An escape or an emoji placed on every position around each part boundary."""
    for pair, filler in (("€", "a"), ("{", "é"), (EMOJI, "Ж"), (EMOJI, "a")):
        for capacity in (67, 66, 70, 153, 152, 160):
            for at in range(capacity - 3, capacity + 3):
                for tail in (0, 1, 80):
                    assert_same(filler * at + pair + filler * tail)
                    assert_same(filler * at + pair * 3 + filler * tail)


def test_255_parts_and_one_more():
    for sample in ("a" * (153 * 255), "a" * (153 * 255 + 1), "Ж" * (67 * 255), "Ж" * (67 * 255 + 1),
                   "a" * (152 * 255 + 1), "€" * (76 * 255), "a" + "€" * (76 * 255),
                   EMOJI * (33 * 255), EMOJI * (33 * 255) + "Ж"):
        assert_same(sample, [(r, lc, True) for r in (False, True) for lc in (0x00, 0x03)])


def test_latin_profiles_with_characters_outside_the_charset():
    # '€' and Greek capitals have no IA5/Latin-1 octet, '£' none in IA5: GSM-7 for the whole text
    for sample in ("Price 5€", "ΔΦΓ", "£10", "café {ok}", "£" * 161, "a" * 170 + "€", "ÿ"):
        assert_same(sample)


def test_gsm7_encode_is_the_per_character_encoding():
    rng = random.Random(11)
    for _ in range(2000):
        sample = random_text(rng, rng.randrange(0, 40), [GSM_BASIC, GSM_EXT, NOT_GSM, CYRILLIC])
        slow = outcome(lambda s: b"".join(text._gsm7_unit(c) for c in s), sample)
        assert outcome(text.gsm7_encode, sample) == slow, sample


def test_gsm7_decode_is_the_per_octet_decoding():
    rng = random.Random(13)
    interesting = [0x1B, 0x0A, 0x14, 0x28, 0x65, 0x41, 0x00, 0x7F, 0x80, 0xFF, 0x5F, 0x60]
    for _ in range(5000):
        data = bytes(rng.choice(interesting) if rng.random() < 0.3 else rng.randrange(0, 0x80)
                     for _ in range(rng.randrange(0, 12)))
        assert outcome(text.gsm7_decode, data) == outcome(text._gsm7_decode_per_octet, data), data
    every = bytes(o for o in range(0x80) if o != 0x1B)
    assert text.gsm7_decode(every) == text._gsm7_decode_per_octet(every)
