"""smppd/phone.py as it was before its fast paths (commit b75084e), verbatim: the reference.

tests/test_phone.py holds smppd.phone.normalize to exactly these answers (the E.164
string, or the same InvalidNumber reason) over every format Belarusian CRMs hold, random
digit strings and the example numbers of every region phonenumbers knows.
"""

from __future__ import annotations

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumber, PhoneNumberType, ValidationResult

_FORMATTING_CHARS = frozenset("()+-.")
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


def _parse(text: str, default_region: str) -> PhoneNumber:
    """phonenumbers.parse, plus validity, with the failure turned into a human reason."""
    try:
        number = phonenumbers.parse(text, default_region)
    except NumberParseException as exc:
        raise InvalidNumber(_PARSE_ERROR_REASONS.get(exc.error_type, "not a number")) from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidNumber(_invalid_reason(number))
    return number


def _invalid_reason(number: PhoneNumber) -> str:
    """Length problems are judged against mobile lengths, the only kind we accept."""
    length = phonenumbers.is_possible_number_for_type_with_reason(number, PhoneNumberType.MOBILE)
    return _LENGTH_REASONS.get(length, "not a valid number")


def _can_receive_sms(number: PhoneNumber) -> bool:
    return phonenumbers.number_type(number) in _SMS_CAPABLE_TYPES


def _best_reading(readings: list[str], default_region: str) -> PhoneNumber:
    """First reading that is a mobile; else the first valid one (to explain why it is not);
    else the reason the most natural (first) reading failed."""
    valid: list[PhoneNumber] = []
    first_error: InvalidNumber | None = None
    for text in readings:
        try:
            number = _parse(text, default_region)
        except InvalidNumber as exc:
            first_error = first_error or exc
            continue
        if _can_receive_sms(number):
            return number
        valid.append(number)
    if valid:
        return valid[0]
    raise first_error or InvalidNumber("not a number")


def _check_region(number: PhoneNumber, allowed_regions: frozenset[str] | None) -> None:
    if allowed_regions is None:
        return
    region = phonenumbers.region_code_for_number(number)
    if region not in allowed_regions:
        raise InvalidNumber(f"country not allowed: {region}")


def _check_sms_capable(number: PhoneNumber) -> None:
    if _can_receive_sms(number):
        return
    if phonenumbers.number_type(number) == PhoneNumberType.FIXED_LINE:
        raise InvalidNumber("landline, not a mobile number")
    raise InvalidNumber("not a mobile number")


def normalize(
    raw: str,
    *,
    default_region: str = "BY",
    allowed_regions: frozenset[str] | None = None,
) -> str:
    """E.164 form ('+375291234567') of a number an SMS can be delivered to.

    Raises InvalidNumber rather than guessing, because a wrong guess sends a paid
    SMS (possibly a one-time code) to a stranger.
    """
    number_digits, international = _digits_and_plus(raw)
    number = _best_reading(_readings(number_digits, international), default_region)
    _check_region(number, allowed_regions)
    _check_sms_capable(number)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def digits(e164: str) -> str:
    """The form SMPP (TON 1 / NPI 1) and SMS.ru / SMS.by expect: no '+'."""
    body = e164[1:]
    if not e164.startswith("+") or not body or any(c not in "0123456789" for c in body):
        raise ValueError("not an E.164 number")
    return body


def mask(number: str) -> str:
    """Loggable form of a number (raw or E.164); keeps only digits so stray text cannot leak."""
    text = number if isinstance(number, str) else str(number)
    plus = "+" if text.lstrip().startswith("+") else ""
    number_digits = "".join(c for c in text if c in "0123456789")
    head = min(_MASK_HEAD, max(0, len(number_digits) - _MASK_TAIL - _MASK_MIN_HIDDEN))
    tail = _MASK_TAIL if len(number_digits) - head - _MASK_TAIL >= _MASK_MIN_HIDDEN else 0
    hidden = len(number_digits) - head - tail
    return plus + number_digits[:head] + "*" * hidden + number_digits[len(number_digits) - tail:]
