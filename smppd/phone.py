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

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumber, PhoneNumberType, ValidationResult

from .phone_fast import number_type_and_region, parse_plain_international, parse_plain_national

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
    The common forms are read by ``phone_fast``; what it leaves (None) goes to parse.
    """
    if text[0] == "+":
        number = parse_plain_international(text)
    else:
        number = parse_plain_national(text, default_region)
    if number is None:
        try:
            number = phonenumbers.parse(text, default_region)
        except NumberParseException as exc:
            raise InvalidNumber(_PARSE_ERROR_REASONS.get(exc.error_type, "not a number")) from None
    kind, region = number_type_and_region(number)
    if kind == PhoneNumberType.UNKNOWN:
        raise InvalidNumber(_invalid_reason(number))
    return number, kind, region


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
