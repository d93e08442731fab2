"""Phone number normalization to E.164 for numbers that can receive an SMS.

The number plans come from `phonenumbers` (kept current upstream). What it lacks
is the CRM reality of Belarus (providers.md §5): `00375…` is an international
form it does not know for region BY (BY's prefix is 810), and a Russian
`8 9xx…` typed into a BY CRM would otherwise come out as +375 garbage, or even
as a valid Belarusian premium-rate number (`8 902…`). So we read the raw input
in every plausible way and prefer the reading that is a mobile number.
"""

from __future__ import annotations

import re
from typing import Any

import phonenumbers
from phonenumbers import NumberParseException, PhoneMetadata, PhoneNumber, PhoneNumberType, ValidationResult

_FORMATTING_CHARS = frozenset("()+-.")
# str.translate: drops what _digits_and_plus allows besides digits ('+' counted separately,
# ASCII whitespace, the no-break space CRMs paste), so a number in the usual forms is one C call.
_DROP_FORMATTING = {ord(c): None for c in "()+-. \t\n\r\x0b\x0c\xa0"}
_SMS_CAPABLE_TYPES = frozenset({PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE})

# Digit strings this long may be an international number typed without '+' (375…, 7…);
# shorter ones are read as national only, so a mistyped 9-digit BY number cannot turn
# into a valid number of some small country.
_MIN_DIGITS_WITHOUT_PLUS = 11
# Russia and Kazakhstan write their 10-digit national numbers after a trunk prefix 8.
_RU_TRUNK_DIGITS = 11
_ITU_INTERNATIONAL_PREFIX = "00"

# mask(): at most the first 5 and last 2 digits are shown, and at least 5 stay hidden.
_MASK_HEAD = 5
_MASK_TAIL = 2
_MASK_MIN_HIDDEN = 5

_PARSE_ERROR_REASONS = {
    NumberParseException.INVALID_COUNTRY_CODE: "unknown country code",
    NumberParseException.NOT_A_NUMBER: "not a number",
    NumberParseException.TOO_SHORT_AFTER_IDD: "too short",
    NumberParseException.TOO_SHORT_NSN: "too short",
    NumberParseException.TOO_LONG: "too long",
}
_LENGTH_REASONS = {
    ValidationResult.INVALID_COUNTRY_CODE: "unknown country code",
    ValidationResult.TOO_SHORT: "too short",
    ValidationResult.TOO_LONG: "too long",
    ValidationResult.INVALID_LENGTH: "wrong number of digits",
}


class InvalidNumber(ValueError):
    """A number we will not send to; `reason` is short and free of the number itself,
    so it is safe to log and to show back in Bitrix24."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _digits_and_plus(raw: str) -> tuple[str, bool]:
    """Reject anything but digits and formatting; keep whether the writer said 'international'."""
    if isinstance(raw, str):  # the usual case in C; anything unusual is judged (and explained) below
        number_digits = raw.translate(_DROP_FORMATTING)
        if number_digits.isascii() and number_digits.isdigit():
            plus = raw.find("+")
            if plus < 0:
                return number_digits, False
            if raw.count("+") == 1 and (plus == 0 or not _has_digit(raw[:plus])):  # '+' first: nothing before it
                return number_digits, True
    return _digits_and_plus_per_char(raw)


def _digits_and_plus_per_char(raw: str) -> tuple[str, bool]:
    """``_digits_and_plus`` one character at a time: its definition, with the reasons."""
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidNumber("empty")
    if any(not _is_allowed_char(c) for c in raw):
        raise InvalidNumber("not a number")
    number_digits = "".join(c for c in raw if c in "0123456789")
    if not number_digits:
        raise InvalidNumber("not a number")
    plus_count = raw.count("+")
    if plus_count > 1 or (plus_count == 1 and _has_digit(raw[: raw.index("+")])):
        raise InvalidNumber("not a number")
    return number_digits, plus_count == 1


def _is_allowed_char(char: str) -> bool:
    return char in "0123456789" or char in _FORMATTING_CHARS or char.isspace()


def _has_digit(text: str) -> bool:
    return any(c in "0123456789" for c in text)


def _readings(number_digits: str, international: bool) -> list[str]:
    """Plausible ways to read the digits, best first, as inputs for phonenumbers.parse."""
    if international:
        return ["+" + number_digits]
    if number_digits.startswith(_ITU_INTERNATIONAL_PREFIX):
        return ["+" + number_digits[len(_ITU_INTERNATIONAL_PREFIX):]]
    readings = [number_digits]
    if len(number_digits) == _RU_TRUNK_DIGITS and number_digits.startswith("8"):
        readings.append("+7" + number_digits[1:])
    if len(number_digits) >= _MIN_DIGITS_WITHOUT_PLUS:
        readings.append("+" + number_digits)
    return readings


def _parse(text: str, default_region: str) -> tuple[PhoneNumber, int, str | None]:
    """phonenumbers.parse, plus validity, type and region, with the failure turned into a human reason.

    One type match gives validity and type: phonenumbers' ``is_valid_number`` is exactly
    "its type is not UNKNOWN" (both match the national number against the same metadata
    of the same region), and matching the type patterns is most of what either costs.
    """
    if text[0] == "+":
        number = _parse_plain_international(text)
    else:
        number = _parse_plain_national(text, default_region)
    if number is None:
        try:
            number = phonenumbers.parse(text, default_region)
        except NumberParseException as exc:
            raise InvalidNumber(_PARSE_ERROR_REASONS.get(exc.error_type, "not a number")) from None
    kind, region = number_type_and_region(number)
    if kind == PhoneNumberType.UNKNOWN:
        raise InvalidNumber(_invalid_reason(number))
    return number, kind, region


# The special types in the order phonenumbers' _number_type_helper tries them, before
# fixed line and mobile.
_SPECIAL_TYPES = (
    ("premium_rate", PhoneNumberType.PREMIUM_RATE), ("toll_free", PhoneNumberType.TOLL_FREE),
    ("shared_cost", PhoneNumberType.SHARED_COST), ("voip", PhoneNumberType.VOIP),
    ("personal_number", PhoneNumberType.PERSONAL_NUMBER), ("pager", PhoneNumberType.PAGER),
    ("uan", PhoneNumberType.UAN), ("voicemail", PhoneNumberType.VOICEMAIL),
)
_Desc = tuple[frozenset[int], re.Pattern[str]] | None


def _desc(number_desc: Any) -> _Desc:
    """A PhoneNumberDesc as phonenumbers' ``_is_number_matching_desc`` reads it, compiled once:
    None never matches (no desc, or no pattern); an empty length set means any length."""
    if number_desc is None or not number_desc.national_number_pattern:
        return None
    return frozenset(number_desc.possible_length), re.compile(number_desc.national_number_pattern)


def _matches(national: str, desc: _Desc) -> bool:
    if desc is None:
        return False
    lengths, pattern = desc
    return (not lengths or len(national) in lengths) and pattern.fullmatch(national) is not None


class _TypeMatcher:
    """phonenumbers' ``_number_type_helper`` for one region's metadata, with its patterns
    compiled and its descs read once instead of on every call.

    That helper walks up to eleven descs per number through four Python calls each
    (length check, pattern lookup in the compile cache, match, fullmatch): two thirds of
    ``normalize`` for an E.164 number. This is the same walk, in the same order, over
    the same metadata, held to ``phonenumbers.number_type`` by the tests.
    """

    _by_metadata: dict[int, tuple[PhoneMetadata, "_TypeMatcher"]] = {}

    def __init__(self, metadata: PhoneMetadata) -> None:
        self.general = _desc(metadata.general_desc)
        # A desc that never matches is left out: the walk would pass it by anyway.
        self.special = tuple((*desc, kind) for name, kind in _SPECIAL_TYPES
                             if (desc := _desc(getattr(metadata, name))) is not None)
        self.fixed_line = _desc(metadata.fixed_line)
        self.mobile = _desc(metadata.mobile)
        self.same_mobile_and_fixed_line = metadata.same_mobile_and_fixed_line_pattern
        self.leading_digits = None if metadata.leading_digits is None else re.compile(metadata.leading_digits)

    @classmethod
    def of(cls, metadata: PhoneMetadata) -> "_TypeMatcher":
        """The matcher of a metadata object (phonenumbers keeps one per region for the process)."""
        entry = cls._by_metadata.get(id(metadata))
        if entry is None or entry[0] is not metadata:
            entry = cls._by_metadata[id(metadata)] = (metadata, cls(metadata))
        return entry[1]

    def __call__(self, national: str) -> int:
        if not _matches(national, self.general):
            return PhoneNumberType.UNKNOWN
        length = len(national)
        for lengths, pattern, kind in self.special:  # _matches, inlined: up to 8 per number
            if (not lengths or length in lengths) and pattern.fullmatch(national) is not None:
                return kind
        if _matches(national, self.fixed_line):
            if self.same_mobile_and_fixed_line or _matches(national, self.mobile):
                return PhoneNumberType.FIXED_LINE_OR_MOBILE
            return PhoneNumberType.FIXED_LINE
        if not self.same_mobile_and_fixed_line and _matches(national, self.mobile):
            return PhoneNumberType.MOBILE
        return PhoneNumberType.UNKNOWN


def number_type_and_region(number: PhoneNumber) -> tuple[int, str | None]:
    """``(phonenumbers.number_type(number), phonenumbers.region_code_for_number(number))``
    with one region lookup instead of three and the type patterns compiled once.

    The same steps as phonenumbers: the region is the only one of the country code, or
    the first of its regions whose leading digits match or whose metadata gives the
    number a type (+7: Russia, then Kazakhstan); the type is matched against that
    region's metadata.
    """
    regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(number.country_code)
    if regions is None:
        return PhoneNumberType.UNKNOWN, None
    national = phonenumbers.national_significant_number(number)
    if len(regions) == 1:
        region = regions[0]
    else:
        region = _region_from_list(national, regions)
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(number.country_code, region)
    if metadata is None:
        return PhoneNumberType.UNKNOWN, region
    return _TypeMatcher.of(metadata)(national), region


def _region_from_list(national: str, regions: tuple[str, ...]) -> str | None:
    """phonenumbers' ``_region_code_for_number_from_list`` on the compiled matchers."""
    for region_code in regions:
        metadata = PhoneMetadata.metadata_for_region(region_code.upper(), None)
        if metadata is None:
            continue
        matcher = _TypeMatcher.of(metadata)
        if matcher.leading_digits is not None:
            if matcher.leading_digits.match(national):
                return region_code
        elif matcher(national) != PhoneNumberType.UNKNOWN:
            return region_code
    return None


# The shortest and longest national numbers _parse_plain_international reads itself; parse
# refuses some below 2 and above 17 digits, so those (and everything near) are left to it.
_PLAIN_NSN_MIN = 4
_PLAIN_NSN_MAX = 14
_MAX_COUNTRY_CODE_DIGITS = 3
_national_prefix_patterns: dict[int, re.Pattern[str]] = {}
_COUNTRY_CODE_OF_DIGITS = {str(code): code for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE}


def _parse_plain_international(text: str) -> PhoneNumber | None:
    """What ``phonenumbers.parse`` returns for '+' and digits that are plainly country code
    and national number, without its general machinery; None when parse must decide.

    Most numbers reach us as E.164 already, and parse (a third of normalize) walks its
    whole machinery for them. For '+' and digits it takes as the country code the
    shortest of the first 1 to 3 digits that is one, and keeps the rest as the national
    number unless it starts with '0' (Italian leading zeros) or with what the country's
    metadata strips as a national prefix ('+375 80 29…' comes out as +375 29…). Those
    cases, unknown country codes and lengths near parse's limits go to parse itself.
    """
    number_digits = text[1:]
    if len(number_digits) <= _PLAIN_NSN_MIN or number_digits[0] == "0":  # ('00' reads as a bare '+')
        return None
    for length in range(1, _MAX_COUNTRY_CODE_DIGITS + 1):  # no leading '0': the digits are the code's str()
        country_code = _COUNTRY_CODE_OF_DIGITS.get(number_digits[:length])
        if country_code is not None:
            break
    else:
        return None
    national = number_digits[length:]
    if national[:1] == "0" or not _PLAIN_NSN_MIN <= len(national) <= _PLAIN_NSN_MAX:
        return None
    if _national_prefix_pattern(country_code).match(national):
        return None
    return PhoneNumber(country_code=country_code, national_number=int(national))


def _national_prefix_pattern(country_code: int) -> re.Pattern[str]:
    """The national prefix parse would try to strip after this country code (per country, not per input)."""
    if country_code not in _national_prefix_patterns:
        region = phonenumbers.region_code_for_country_code(country_code)
        metadata = PhoneMetadata.metadata_for_region_or_calling_code(country_code, region)
        if metadata is None:  # cannot happen for a listed code; if it did, parse would know what to do
            pattern = ""  # matches every number: always ask parse
        else:
            pattern = metadata.national_prefix_for_parsing or "(?!)"  # no national prefix: never matches
        _national_prefix_patterns[country_code] = re.compile(pattern)
    return _national_prefix_patterns[country_code]


class _NationalRules:
    """What ``phonenumbers.parse`` reads a digits-only national number by, for one region,
    compiled once; None (from ``of``) for a region whose rules ``_parse_plain_national``
    does not cover (a prefix transform rule or carrier-code groups, no metadata)."""

    _by_region: dict[str, "_NationalRules | None"] = {}

    def __init__(self, metadata: PhoneMetadata, prefix: re.Pattern[str] | None) -> None:
        self.country_code = metadata.country_code
        self.country_code_digits = str(metadata.country_code)
        self.idd = re.compile(metadata.international_prefix or "(?!)")
        self.prefix = prefix
        general = metadata.general_desc
        self.general = re.compile(general.national_number_pattern) if general.national_number_pattern else None
        self.lengths = frozenset(general.possible_length)
        self.local_only_lengths = frozenset(general.possible_length_local_only)

    @classmethod
    def of(cls, region: str) -> "_NationalRules | None":
        if region not in cls._by_region:
            supported = region in phonenumbers.SUPPORTED_REGIONS  # parse refuses any other default region
            metadata = PhoneMetadata.metadata_for_region(region, None) if supported else None
            rules = None
            if metadata is not None and not metadata.national_prefix_transform_rule:
                pattern = metadata.national_prefix_for_parsing
                prefix = re.compile(pattern) if pattern else None
                if prefix is None or prefix.groups == 0:
                    rules = cls(metadata, prefix)
            cls._by_region[region] = rules
        return cls._by_region[region]

    def strip_prefix(self, number: str) -> str:
        """parse's national prefix step before its length test: the number without the
        prefix, or as it was when it has none or was valid only with it."""
        match = self.prefix.match(number) if self.prefix is not None and number else None
        if match is None:
            return number
        stripped = number[match.end():]
        if self.viable(number) and not self.viable(stripped):
            return number
        return stripped

    def viable(self, national: str) -> bool:
        """phonenumbers' ``_match_national_number`` on the general desc (the pattern only)."""
        return self.general is not None and self.general.fullmatch(national) is not None


def _parse_plain_national(text: str, default_region: str) -> PhoneNumber | None:
    """What ``phonenumbers.parse(text, default_region)`` returns for ASCII digits without an
    international prefix, when the national prefix it strips (or not) leaves a number of a
    possible length; None when parse must decide.

    A Belarusian CRM holds '80291234567' and '375291234567' as often as '+375…', and
    parse walks its whole machinery for them (25 µs). Parse takes the region's country
    code off the front when the number is valid without it and not with it, strips the
    region's national prefix ('8', '80', '0' for BY) unless the number was valid with it
    and is not without it, keeps the result if its length is possible, and builds the
    number from the region's country code. Numbers that start with the IDD ('810'), a
    country code parse keeps or takes off for its length alone, leading zeros after the
    prefix, lengths that are not plainly possible and regions with transform rules go to
    parse itself.
    """
    rules = _NationalRules.of(default_region)
    if rules is None or not 2 <= len(text) <= _PLAIN_NSN_MAX or rules.idd.match(text):
        return None
    national = text
    if text.startswith(rules.country_code_digits):
        after = rules.strip_prefix(text[len(rules.country_code_digits):])
        if rules.viable(text) or not rules.viable(after):
            return None
        national = after
    kept = rules.strip_prefix(national)
    if len(kept) != len(national):  # parse keeps a stripped number only at a possible length
        if len(kept) not in rules.lengths or len(kept) in rules.local_only_lengths:
            return None
        national = kept
    if len(national) < 2 or national[0] == "0":  # ('0…' sets Italian leading zeros)
        return None
    return PhoneNumber(country_code=rules.country_code, national_number=int(national))

def _invalid_reason(number: PhoneNumber) -> str:
    """Length problems are judged against mobile lengths, the only kind we accept."""
    length = phonenumbers.is_possible_number_for_type_with_reason(number, PhoneNumberType.MOBILE)
    return _LENGTH_REASONS.get(length, "not a valid number")


def _best_reading(readings: list[str], default_region: str) -> tuple[PhoneNumber, int, str | None]:
    """First reading that is a mobile; else the first valid one (to explain why it is not);
    else the reason the most natural (first) reading failed.  With the number's type and region."""
    valid: list[tuple[PhoneNumber, int, str | None]] = []
    first_error: InvalidNumber | None = None
    for text in readings:
        try:
            parsed = _parse(text, default_region)
        except InvalidNumber as exc:
            first_error = first_error or exc
            continue
        if parsed[1] in _SMS_CAPABLE_TYPES:
            return parsed
        valid.append(parsed)
    if valid:
        return valid[0]
    raise first_error or InvalidNumber("not a number")


def _check_region(region: str | None, allowed_regions: frozenset[str] | None) -> None:
    if allowed_regions is None:
        return
    if region not in allowed_regions:
        raise InvalidNumber(f"country not allowed: {region}")


def _check_sms_capable(kind: int) -> None:
    if kind in _SMS_CAPABLE_TYPES:
        return
    if kind == PhoneNumberType.FIXED_LINE:
        raise InvalidNumber("landline, not a mobile number")
    raise InvalidNumber("not a mobile number")


def normalize(
    raw: str,
    *,
    default_region: str = "BY",
    allowed_regions: frozenset[str] | None = None,
    strict: bool = False,
) -> str:
    """E.164 form ('+375291234567') of a number an SMS can be delivered to.

    Raises InvalidNumber rather than guessing, because a wrong guess sends a paid
    SMS (possibly a one-time code) to a stranger.  ``strict=False`` (the default)
    also takes a number of a known mobile shape that phonenumbers' metadata
    does not list yet (see ``normalize_verdict``).
    """
    return normalize_verdict(raw, default_region=default_region, allowed_regions=allowed_regions,
                             strict=strict)[0]


# Mobile shapes of the countries we send to most, as their operators publish them: the
# country code, then a mobile prefix and the subscriber digits.  phonenumbers lags the
# operators (+375 25 1xx xx xx, the integrators' own example, is "invalid" in it), and a
# gateway must not refuse a customer's number because a library's metadata is behind.
MOBILE_SHAPES = {
    "BY": re.compile(r"375(?:25|29|33|44)\d{7}"),
    "RU": re.compile(r"79\d{9}"),
}


def normalize_verdict(
    raw: str,
    *,
    default_region: str = "BY",
    allowed_regions: frozenset[str] | None = None,
    strict: bool = False,
) -> tuple[str, str | None]:
    """``normalize``, plus the library's refusal when only the mobile shape accepted the number.

    The second item is None when phonenumbers itself calls the number a mobile;
    otherwise it is phonenumbers' reason ("not a valid number"), which the
    caller counts as a warning: the number is sent, and a rising count says
    the shapes or the library need a look.  ``strict=True`` keeps the
    library's verdict as final (a route that opts into strict validity).
    """
    number_digits, international = _digits_and_plus(raw)
    try:
        number, kind, region = _best_reading(_readings(number_digits, international), default_region)
        _check_region(region, allowed_regions)
        _check_sms_capable(kind)
    except InvalidNumber as refused:
        if strict:
            raise
        shaped = _mobile_shape(number_digits, international, default_region)
        if shaped is None:
            raise
        e164, shape_region = shaped
        _check_region(shape_region, allowed_regions)
        return e164, refused.reason
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164), None


def _mobile_shape(number_digits: str, international: bool, default_region: str) -> tuple[str, str] | None:
    """The E.164 form and region of the first reading of the digits that has a mobile shape.

    The readings are the ones ``_readings`` tries, spelled out for the shapes:
    '+'/'00' international, the country code without '+', and the national forms
    of the default region (BY: '80' or nothing before the 9 digits; RU: '8' or
    nothing before the 10), plus a Russian '8 9xx…' typed into a BY CRM.
    """
    if international:
        candidates = [number_digits]
    elif number_digits.startswith(_ITU_INTERNATIONAL_PREFIX):
        candidates = [number_digits[len(_ITU_INTERNATIONAL_PREFIX):]]
    else:
        candidates = [number_digits]
        if default_region == "BY":
            if len(number_digits) == 9:
                candidates.append("375" + number_digits)
            elif len(number_digits) == 11 and number_digits.startswith("80"):
                candidates.append("375" + number_digits[2:])
        if default_region == "RU" and len(number_digits) == 10:
            candidates.append("7" + number_digits)
        if len(number_digits) == _RU_TRUNK_DIGITS and number_digits.startswith("8"):
            candidates.append("7" + number_digits[1:])
    for candidate in candidates:
        for region, shape in MOBILE_SHAPES.items():
            if shape.fullmatch(candidate):
                return "+" + candidate, region
    return None


def digits(e164: str) -> str:
    """The form SMPP (TON 1 / NPI 1) and SMS.ru / SMS.by expect: no '+'."""
    body = e164[1:]
    if not (e164.startswith("+") and body.isascii() and body.isdigit()):  # ASCII isdigit: 0-9 only
        raise ValueError("not an E.164 number")
    return body


def mask(number: str) -> str:
    """Loggable form of a number (raw or E.164); keeps only digits so stray text cannot leak."""
    text = number if isinstance(number, str) else str(number)
    plus = "+" if text.lstrip().startswith("+") else ""
    body = text[1:] if plus and text[0] == "+" else text
    if body.isascii() and body.isdigit():  # E.164 or bare digits, as intake logs them: no scan in Python
        number_digits = body
    else:
        number_digits = "".join(c for c in text if c in "0123456789")
    head = min(_MASK_HEAD, max(0, len(number_digits) - _MASK_TAIL - _MASK_MIN_HIDDEN))
    tail = _MASK_TAIL if len(number_digits) - head - _MASK_TAIL >= _MASK_MIN_HIDDEN else 0
    hidden = len(number_digits) - head - tail
    return plus + number_digits[:head] + "*" * hidden + number_digits[len(number_digits) - tail:]
