"""The whole-string encoder must be byte-identical to the per-character definition.

``text.encode`` (septet table, UTF-16, cuts with a step back) runs twice per message,
so it is written for speed; ``text._encode_per_char`` is the rule it replaced, kept as
its definition. These tests hold one to the other over every BMP character and over
random texts built to hit the hard places: escape pairs and surrogate pairs at the
160/153/152 and 70/67/66 boundaries, lone surrogates, 255 parts and one more.
"""

import random

import pytest

from smppd import text
from smppd.text import GSM7_BASIC, GSM7_EXTENSION

EMOJI = "\U0001F600"
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
