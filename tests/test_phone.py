import pytest

from smppd import phone
from smppd.phone import InvalidNumber, digits, mask, normalize

BY_MOBILE = "+375291234567"
RU_MOBILE = "+79123456789"


@pytest.mark.parametrize(
    "raw",
    [
        "80291234567",  # domestic with trunk 8 0
        "375 29 123-45-67",  # international without '+'
        "29 1234567",  # national significant number only
        "291234567",
        "0291234567",  # domestic with trunk 0
        "+375 (29) 123-45-67",
        "8 (029) 123-45-67",
        "8-029-123-45-67",
        "00375291234567",  # ITU prefix, which phonenumbers does not know for BY
        "00 375 29 123 45 67",
        "810375291234567",  # BY/RU international prefix
        "8 10 375 29 123-45-67",
        "+375291234567",
        "(+375 29) 123.45.67",
        " +375 29 123 45 67 ",
        "+375\u00a029\u00a01234567",  # non-breaking spaces pasted from a web page
    ],
)
def test_belarus_formats_normalize_to_e164(raw):
    assert normalize(raw) == BY_MOBILE


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+375 33 123-45-67", "+375331234567"),
        ("8 (044) 765-43-21", "+375447654321"),
        ("25 5123456", "+375255123456"),
    ],
)
def test_every_belarus_mobile_code(raw, expected):
    assert normalize(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "+7 912 345-67-89",
        "8 912 345-67-89",  # Russian trunk 8 typed into a BY CRM must not become +375 9…
        "89123456789",
        "7 912 345 67 89",
        "8 10 7 912 345 67 89",
        "00 7 912 345 67 89",
    ],
)
def test_russian_formats_normalize_to_e164(raw):
    assert normalize(raw) == RU_MOBILE


def test_russian_8_902_is_a_mobile_not_a_belarusian_premium_number():
    # read in BY, 8 902 1234567 is a valid BY premium-rate number; the RU mobile reading must win
    assert normalize("8 902 123-45-67") == "+79021234567"


def test_russian_default_region_reads_trunk_8():
    assert normalize("8 912 345-67-89", default_region="RU") == RU_MOBILE


@pytest.mark.parametrize(
    "raw",
    ["+375 17 123-45-67", "375171234567", "8 (017) 123-45-67", "17 1234567"],
)
def test_minsk_landline_is_rejected_with_reason(raw):
    with pytest.raises(InvalidNumber) as err:
        normalize(raw)
    assert err.value.reason == "landline, not a mobile number"


def test_toll_free_is_rejected_as_not_mobile():
    with pytest.raises(InvalidNumber) as err:
        normalize("8 800 555-35-35")
    assert err.value.reason == "not a mobile number"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("abc", "not a number"),
        ("call me", "not a number"),
        ("+375 29 123 45 67 ext 5", "not a number"),
        ("tel:+375291234567", "not a number"),
        ("29#1234567", "not a number"),
        ("375+291234567", "not a number"),
        ("++375291234567", "not a number"),
        ("+-()", "not a number"),
        ("12", "too short"),
        ("29123456", "too short"),
        ("+375 (29) 1-2-3", "too short"),
        ("+3752912345678", "too long"),
    ],
)
def test_garbage_is_rejected_with_reason(raw, reason):
    with pytest.raises(InvalidNumber) as err:
        normalize(raw)
    assert err.value.reason == reason
    assert str(err.value) == reason


def test_invalid_number_is_a_value_error():
    with pytest.raises(ValueError):
        normalize("abc")


def test_reason_never_contains_the_number():
    with pytest.raises(InvalidNumber) as err:
        normalize("+375 17 123-45-67")
    assert "1234567" not in err.value.reason


def test_allowed_regions_accepts_listed_country():
    assert normalize("+7 912 345-67-89", allowed_regions=frozenset({"BY", "RU"})) == RU_MOBILE


def test_allowed_regions_rejects_other_country():
    with pytest.raises(InvalidNumber) as err:
        normalize("+7 912 345-67-89", allowed_regions=frozenset({"BY"}))
    assert err.value.reason == "country not allowed: RU"


def test_allowed_regions_rejects_foreign_number_without_plus():
    with pytest.raises(InvalidNumber) as err:
        normalize("380 67 123 4567", allowed_regions=frozenset({"BY"}))
    assert err.value.reason == "country not allowed: UA"


def test_foreign_mobile_passes_without_allowed_regions():
    assert normalize("+380 67 123 4567") == "+380671234567"


def test_digits_drops_plus():
    assert digits(BY_MOBILE) == "375291234567"


@pytest.mark.parametrize("bad", ["375291234567", "+", "+37529abc", ""])
def test_digits_rejects_non_e164(bad):
    with pytest.raises(ValueError):
        digits(bad)


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        (BY_MOBILE, "+37529*****67"),
        (RU_MOBILE, "+7912*****89"),  # shorter number: fewer leading digits, still 5 hidden
        ("291234567", "29*****67"),
        ("1234567", "*****67"),
        ("123456", "******"),
        ("+375 (29) 123-45-67", "+37529*****67"),
        ("Иван Петров 8029 1234567", "8029*****67"),  # letters never reach the log
        ("", ""),
        ("no digits here", ""),
    ],
)
def test_mask(number, masked):
    assert mask(number) == masked


def test_mask_never_shows_more_than_first_five_and_last_two_digits():
    for length in range(0, 20):
        number = "+" + "".join(str(i % 10) for i in range(length))
        shown = [c for c in mask(number) if c.isdigit()]
        assert len(shown) <= 7
        assert mask(number).count("*") >= min(length, 5)


@pytest.mark.parametrize("raw", ["+375 25 123 45 67", "80251234567", "251234567", "375251234567",
                                 "00375251234567", "+375 (25) 123-45-67"])
def test_a_belarusian_mobile_the_metadata_does_not_know_is_sent_with_the_librarys_verdict(raw):
    """+375 25 1xx xx xx: the integrators' own example; phonenumbers says "not a valid number"."""
    with pytest.raises(phone.InvalidNumber, match="not a valid number"):
        phone.normalize(raw, strict=True)
    assert phone.normalize_verdict(raw) == ("+375251234567",
                                            "not a valid number")


@pytest.mark.parametrize("raw, reason", [
    ("+375241234567", "not a valid number"),  # 24 is no BY mobile prefix
    ("+37525123456", "too short"), ("+3752512345678", "too long"),
    ("+7951234567", "too short"), ("+7851234567", "too short"),
    ("0251234567", "not a valid number"),
])
def test_the_mobile_shape_is_strict_about_prefix_and_length(raw, reason):
    with pytest.raises(phone.InvalidNumber, match=reason):
        phone.normalize(raw)


def test_a_shaped_number_still_obeys_the_routes_countries():
    with pytest.raises(phone.InvalidNumber, match="country not allowed: BY"):
        phone.normalize("+375251234567", allowed_regions=frozenset({"RU"}))
    assert phone.normalize("+375251234567", allowed_regions=frozenset({"BY"})) == "+375251234567"


def test_an_unallocated_range_of_a_mobile_prefix_is_refused_only_by_a_strict_route():
    """29 0… is not allocated today; operators open ranges before the library lists them."""
    with pytest.raises(InvalidNumber, match="not a valid number"):
        normalize("+375 29 0123456", strict=True)
    assert phone.normalize_verdict("+375 29 0123456") == ("+375290123456", "not a valid number")
