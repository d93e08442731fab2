"""IntakeRequest.from_params: what the shim forwards becomes a request, or a bad_request naming the field."""

import pytest

from smppd.intake import MAX_TEXT, IntakeRequest
from smppd.rpc import RpcError

GOOD = {
    "member_id": "m" * 32, "domain": "shop.bitrix24.by", "application_token": "t" * 32, "code": "by_life",
    "b24_id": "AB" * 16, "to": "+375291234567", "text": "Ваш заказ готов", "module_id": "crm",
    "bindings": [{"owner_type_id": 3, "owner_id": 877}], "ts": 1700000000,
}


def refused(params):
    with pytest.raises(RpcError) as err:
        IntakeRequest.from_params(params)
    assert err.value.code == "bad_request"
    return err.value.message


def test_a_good_post_keeps_every_field_and_lowercases_the_b24_id():
    req = IntakeRequest.from_params(GOOD)
    assert req == IntakeRequest("m" * 32, "t" * 32, "by_life", "ab" * 16, "+375291234567", "Ваш заказ готов",
                                "crm", [{"owner_type_id": 3, "owner_id": 877}], None)


def test_a_post_without_auth_block_or_module_has_none_and_empty_module():
    params = {k: v for k, v in GOOD.items() if k not in ("member_id", "application_token", "module_id")}
    req = IntakeRequest.from_params({**params, "document_id": ["crm", "CCrmDocumentLead", "LEAD_98"]})
    assert (req.member_id, req.application_token, req.module_id) == (None, None, "")
    assert req.document_id == ["crm", "CCrmDocumentLead", "LEAD_98"]


@pytest.mark.parametrize("name", ["member_id", "application_token", "code", "b24_id", "to", "text", "module_id"])
def test_a_field_that_is_not_a_string_is_named(name):
    assert refused({**GOOD, name: 12345}) == f"{name}: must be a string"


@pytest.mark.parametrize("name", ["code", "b24_id", "to", "text"])
def test_a_required_field_that_is_missing_is_named(name):
    assert refused({k: v for k, v in GOOD.items() if k != name}) == f"{name}: must be a string"


def test_the_first_wrong_field_in_form_order_is_the_one_named():
    assert refused({**GOOD, "code": None, "to": 1, "b24_id": "x"}) == "code: must be a string"
    assert refused({**GOOD, "b24_id": "x", "text": ""}) == "b24_id: must be 32 hex characters"


@pytest.mark.parametrize("b24_id", ["", "ab" * 15, "ab" * 17, "zz" * 16, "ab" * 15 + "a\n", "ab" * 16 + "\n"])
def test_b24_id_must_be_32_hex(b24_id):
    assert refused({**GOOD, "b24_id": b24_id}) == "b24_id: must be 32 hex characters"


@pytest.mark.parametrize("body", ["", "a" * (MAX_TEXT + 1)])
def test_text_must_be_1_to_max_characters(body):
    assert refused({**GOOD, "text": body}) == f"text: must be 1 to {MAX_TEXT} characters"


def test_text_of_max_length_is_accepted():
    assert IntakeRequest.from_params({**GOOD, "text": "a" * MAX_TEXT}).text == "a" * MAX_TEXT
