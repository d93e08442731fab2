"""The fast path of phone.normalize: phonenumbers' own steps, compiled once per region.

``phonenumbers.parse`` walks its general machinery for every input and ``number_type``
walks up to eleven descs through four Python calls each; for the numbers a CRM holds
(E.164, '375…', '80 29…') that was ~35 µs a number, this path ~6.5. Each shortcut here
takes only the inputs it reads exactly as phonenumbers does and answers None for the rest,
which ``phone._parse`` then gives to ``phonenumbers.parse`` itself.

Kept apart from ``phone.py`` so the shortcuts and their equivalence tests sit together
(tests/test_phone.py, "the fast path"): every function is held to the phonenumbers call
it stands for over every region's example numbers, their neighbours and random digits,
and a test fails if ``normalize`` stops taking this path for the common forms.
"""

from __future__ import annotations

import re
from typing import Any

import phonenumbers
from phonenumbers import PhoneMetadata, PhoneNumber, PhoneNumberType

__all__ = ["number_type_and_region", "parse_plain_international", "parse_plain_national"]

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


# The shortest and longest national numbers parse_plain_international reads itself; parse
# refuses some below 2 and above 17 digits, so those (and everything near) are left to it.
_PLAIN_NSN_MIN = 4
_PLAIN_NSN_MAX = 14
_MAX_COUNTRY_CODE_DIGITS = 3
_national_prefix_patterns: dict[int, re.Pattern[str]] = {}
_COUNTRY_CODE_OF_DIGITS = {str(code): code for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE}


def parse_plain_international(text: str) -> PhoneNumber | None:
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
    compiled once; None (from ``of``) for a region whose rules ``parse_plain_national``
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


def parse_plain_national(text: str, default_region: str) -> PhoneNumber | None:
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
