"""The one-pass sorting of bracket keys gives exactly what three full scans gave.

``_reference_*`` are the scans as they were before: each walked every key of
the form with its pattern.  Random forms (PHP bracket keys right and wrong,
repeated keys, files where text belongs, bad integers, missing halves) must
come out of ``parse_handler_post`` the same, or fail naming the same field.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import pytest
from multidict import MultiDict, MultiDictProxy

from shim import bitrix_form as bf


def _reference_integer(key: str, value: str) -> int:
    if not bf._INT.fullmatch(value.strip()):
        raise bf.FormError(key, "must be an integer")
    return int(value)


@pytest.mark.parametrize(
    "value",
    ["0", "7", "0042", "9" * 18, "9" * 19, "-5", "+5", " 5", "5 ", "\u00a05", "", "1e3", "x", "١٢", "²", "5\n", "--5"],
)
def test_integer_fast_path_answers_as_the_pattern(value: str) -> None:
    def outcome(parse: Any) -> Any:
        try:
            return parse("ts", value)
        except bf.FormError as exc:
            return (exc.field, exc.problem)

    assert outcome(bf._integer) == outcome(_reference_integer)


def test_known_bracket_keys_are_what_their_patterns_give() -> None:
    for key, (n, part) in bf._KNOWN_BINDING_KEYS.items():
        match = bf._BINDING_KEY.fullmatch(key)
        assert match is not None and (int(match[1]), match[2]) == (n, part)
    for key, name in bf._KNOWN_AUTH_KEYS.items():
        match = bf._AUTH_KEY.fullmatch(key)
        assert match is not None and match[1] == name
    assert len(bf._KNOWN_BINDING_KEYS) == 20 and "auth[application_token]" in bf._KNOWN_AUTH_KEYS


def _reference_bindings(form: Mapping[str, Any]) -> tuple[bf.Binding, ...]:
    halves: dict[int, dict[str, int]] = {}
    for key in form:
        match = bf._BINDING_KEY.fullmatch(key)
        if match is None:
            continue
        value = bf._required(form, key)
        halves.setdefault(int(match[1]), {})[match[2]] = _reference_integer(key, value)
    bindings = []
    for n in sorted(halves):
        pair = halves[n]
        for part in ("OWNER_TYPE_ID", "OWNER_ID"):
            if part not in pair:
                raise bf.FormError(f"bindings[{n}][{part}]", "missing")
        bindings.append(bf.Binding(pair["OWNER_TYPE_ID"], pair["OWNER_ID"]))
    return tuple(bindings)


def _reference_auth(form: Mapping[str, Any]) -> Mapping[str, str]:
    auth = {}
    for key in form:
        match = bf._AUTH_KEY.fullmatch(key)
        if match is not None:
            auth[match[1]] = bf._required(form, key)
    return MappingProxyType(auth)


def _reference_document_id(form: Mapping[str, Any]) -> tuple[str, ...] | None:
    parts = {}
    for key in form:
        match = bf._DOCUMENT_ID_KEY.fullmatch(key)
        if match is not None:
            parts[int(match[1])] = bf._required(form, key)
    if not parts:
        return None
    return tuple(parts[n] for n in sorted(parts))


def _reference_parse(form: Mapping[str, Any]) -> bf.HandlerPost:
    values = {key: bf._required(form, key) for key in bf.REQUIRED}
    for key in ("code", "message_to"):
        if not values[key].strip():
            raise bf.FormError(key, "empty")
    if not bf._MESSAGE_ID.fullmatch(values["message_id"]):
        raise bf.FormError("message_id", "must be 32 hexadecimal characters")
    message_type = bf._text(form, "type")
    if message_type is not None and message_type != "SMS":
        raise bf.FormError("type", "must be SMS")
    ts = bf._text(form, "ts")
    return bf.HandlerPost(
        code=values["code"],
        message_id=values["message_id"].lower(),
        message_to=values["message_to"],
        message_body=values["message_body"],
        type=message_type,
        module_id=bf._text(form, "module_id") or "",
        bindings=_reference_bindings(form),
        ts=_reference_integer("ts", ts) if ts is not None and ts != "" else None,
        auth=_reference_auth(form),
        workflow_id=bf._text(form, "workflow_id"),
        document_id=_reference_document_id(form),
    )


_KEYS = [
    "bindings[0][OWNER_TYPE_ID]", "bindings[0][OWNER_ID]", "bindings[1][OWNER_TYPE_ID]", "bindings[1][OWNER_ID]",
    "bindings[10][OWNER_ID]", "bindings[2][owner_id]", "bindings[x][OWNER_ID]", "bindings[1234567][OWNER_ID]",
    "bindings[0]", "bindings[", "bindingsX", "bindings[0][OWNER_ID]x",
    "bindings[9][OWNER_TYPE_ID]", "bindings[09][OWNER_ID]", "bindings[9][OWNER_ID]", "auth[refresh_token]", "auth[other]",
    "auth[member_id]", "auth[domain]", "auth[application_token]", "auth[access_token]", "auth[]", "auth[a][b]",
    "auth", "auth[x", "authority[x]",
    "document_id[0]", "document_id[1]", "document_id[2]", "document_id[1000]", "document_id[a]", "document_id",
    "document_type[0]", "properties[phone_number]", "workflow_id", "module_id", "ts", "type", "a", "",
]
_VALUES = ["3", "877", "-5", " 42 ", "1e3", "", "x", "9" * 19, "crm", "CCrmDocumentLead", "LEAD_98", "SMS"]


class _File:
    """What aiohttp gives for a multipart file field."""


def _random_form(rng: random.Random) -> MultiDictProxy[Any]:
    pairs: list[tuple[str, Any]] = [
        ("code", "by_sms_main"), ("message_id", "%032x" % rng.getrandbits(128)),
        ("message_to", "+375291234567"), ("message_body", "Привет"),
    ]
    for _ in range(rng.randrange(0, 14)):
        value: Any = _File() if rng.random() < 0.03 else rng.choice(_VALUES)
        pairs.append((rng.choice(_KEYS), value))
    rng.shuffle(pairs)
    return MultiDictProxy(MultiDict(pairs))


def _outcome(parse: Any, form: Mapping[str, Any]) -> Any:
    try:
        post = parse(form)
    except bf.FormError as exc:
        return ("error", exc.field, exc.problem)
    return ("ok", post, dict(post.auth))


@pytest.mark.parametrize("seed", range(4))
def test_one_pass_gives_what_three_scans_gave(seed: int) -> None:
    rng = random.Random(seed)
    kinds = {"ok": 0, "error": 0}
    for _ in range(2500):
        form = _random_form(rng)
        got = _outcome(bf.parse_handler_post, form)
        assert got == _outcome(_reference_parse, form), list(form.items())
        kinds[got[0]] += 1
    assert min(kinds.values()) > 300  # both paths exercised, not only refusals


def test_bracket_keys_are_sorted_out_in_form_order() -> None:
    form = MultiDict([("auth[member_id]", "m"), ("bindings[0][OWNER_ID]", "1"), ("document_id[0]", "crm"),
                      ("auth[domain]", "e"), ("module_id", "crm"), ("authority", "x"), ("bindings", "2")])
    assert bf._bracket_keys(form) == (["bindings[0][OWNER_ID]"], ["auth[member_id]", "auth[domain]"],
                                      ["document_id[0]"])


@pytest.mark.parametrize("seed", range(2))
def test_a_decoded_body_parses_as_aiohttps_form(seed: int) -> None:
    """The shim's own body decoding (a dict, first value of a repeated key)
    and aiohttp's MultiDict of the same body parse to the same post or the
    same refusal, repeated and malformed bracket keys included."""
    from urllib.parse import urlencode

    from yarl._parse import query_to_pairs

    rng = random.Random(seed)
    for _ in range(2500):
        pairs = [(k, v) for k, v in _random_form(rng).items() if isinstance(v, str)]
        body = urlencode(pairs).encode()
        aiohttp_form = MultiDictProxy(MultiDict(query_to_pairs(body.decode())))
        assert _outcome(bf.parse_handler_post, bf.decode_form(body)) == _outcome(bf.parse_handler_post, aiohttp_form)


def test_a_post_is_immutable_and_its_repr_keeps_the_number_text_and_auth_out() -> None:
    post = bf.HandlerPost(code="by_sms_main", message_id="a" * 32, message_to="+375291234567",
                          message_body="secret text", bindings=(bf.Binding(2, 7),), ts=5,
                          auth=MappingProxyType({"application_token": "tok3n"}), document_id=("crm", "D_1"))
    assert repr(post) == str(post) == (
        "HandlerPost(code='by_sms_main', message_id='" + "a" * 32 + "', type=None, module_id='', "
        "bindings=(Binding(owner_type_id=2, owner_id=7),), ts=5, workflow_id=None, document_id=('crm', 'D_1'))"
    )
    with pytest.raises(AttributeError):
        post.message_to = "+375290000000"  # type: ignore[misc]
    assert bf.HandlerPost(code="c", message_id="b", message_to="t", message_body="x").auth == {}
