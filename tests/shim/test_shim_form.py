"""``decode_form``, the shim's own reading of a urlencoded body, gives exactly
what aiohttp's ``request.post()`` gave: yarl's ``query_to_pairs`` into a
MultiDict, read by ``get`` (the first of repeated keys).

Random bodies are drawn from the pieces that make form decoding go wrong:
escaped separators, '+', lower- and upper-case escapes, broken escapes,
escapes of invalid or cut UTF-8, raw non-ASCII, empty keys and values.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import urlencode

import pytest
from multidict import MultiDict, MultiDictProxy
from yarl._parse import query_to_pairs

from shim import bitrix_form as bf

from tests.rigs.form_rig import random_form

_PIECES = [
    "a", "b", "code", "auth[x]", "bindings[0][OWNER_ID]", "7", "я", "€", " ", "+", "++", "&", "&&", "=", "==",
    "%26", "%3D", "%3d", "%2B", "%2b", "%20", "%25", "%2525", "%5B", "%5b", "%5D", "%", "%2", "%zz", "%G1",
    "%C3", "%A9", "%C3%A9", "%E2%82", "%E2%82%AC", "%FF", "%80", "%F0%9F%98", "%F0%9F%98%80", "%00", "%0A",
    "\n", "\t", "%D0%AF",
]


def _random_body(rng: random.Random) -> bytes:
    return "".join(rng.choice(_PIECES) for _ in range(rng.randrange(0, 30))).encode()


def _aiohttp_form(body: bytes) -> dict[str, Any]:
    """What request.post() gives for the body, read as the shim reads it."""
    form = MultiDict(query_to_pairs(body.rstrip().decode("utf-8"), encoding="utf-8"))
    return {key: form.get(key) for key in form}  # iteration order, first value


@pytest.mark.parametrize("seed", range(4))
def test_random_bodies_decode_as_aiohttp_decodes_them(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(5000):
        body = _random_body(rng)
        got = bf.decode_form(body)
        assert got == _aiohttp_form(body), body
        assert list(got) == list(_aiohttp_form(body)), body  # the same key order


def test_the_standard_library_fallback_unquotes_as_yarl_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without yarl's private unquoter (a yarl that moved it), decoding falls back to
    urllib's unquote_plus; it must give the same forms."""
    from urllib.parse import unquote_plus

    rng = random.Random(99)
    bodies = [_random_body(rng) for _ in range(3000)]
    expected = [bf.decode_form(body) for body in bodies]
    monkeypatch.setattr(bf, "_unquote_plus", unquote_plus)
    assert [bf.decode_form(body) for body in bodies] == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", {}),
        (b"  \r\n", {}),
        (b"&&=&", {"": ""}),
        (b"a=1&a=2&b&c=", {"a": "1", "b": "", "c": ""}),
        (b"a+b=c+d", {"a b": "c d"}),
        (b"a%2Bb=c%2bd+e", {"a+b": "c+d e"}),
        (b"k=a%26b%3Dc&k2=%3d", {"k": "a&b=c", "k2": "="}),  # escaped separators stay inside
        (b"a%3Db=c", {"a=b": "c"}),
        (b"t=%D0%AF%E2%82%AC", {"t": "Я€"}),
        (b"t=%C3&u=%A9", {"t": "\ufffd", "u": "\ufffd"}),  # cut UTF-8 on both sides of '&'
        (b"t=%ZZ%2", {"t": "%ZZ%2"}),
        ("t=я".encode(), {"t": "я"}),
        (b"a=1\n", {"a": "1"}),
    ],
)
def test_edge_cases(body: bytes, expected: dict[str, str]) -> None:
    assert bf.decode_form(body) == expected == _aiohttp_form(body)


def test_invalid_utf8_body_is_refused_as_aiohttp_refuses_it() -> None:
    with pytest.raises(UnicodeDecodeError):
        bf.decode_form(b"a=\xff")


def test_a_real_post_decodes_to_the_same_handler_post() -> None:
    from tests.rigs.shim_rig import EXAMPLE

    body = urlencode(EXAMPLE + [("message_body", "second value"), ("note", "a&b=c %")]).encode()
    form = bf.decode_form(body)
    assert form["message_body"] == "Ваш заказ готов"
    assert bf.parse_handler_post(form) == bf.parse_handler_post(MultiDict(query_to_pairs(body.decode())))


@pytest.mark.parametrize(
    "result",
    [
        {"id": 41, "status": "queued", "duplicate": False},
        {"id": 0, "status": "sent", "duplicate": True},
        {"id": -7, "status": "", "duplicate": False},
        {"id": 10**20, "status": 'q"u\\o\nte\x00', "duplicate": True},
        {"id": 1, "status": "очередь €😀\ud800", "duplicate": False},
        {"id": True, "status": "queued", "duplicate": False},  # not an int: json.dumps' own answer
        {"id": 1.5, "status": "queued", "duplicate": 0},
        {"id": "41", "status": None, "duplicate": False},
    ],
)
def test_stored_body_is_what_json_dumps_gives(result: dict[str, Any]) -> None:
    import json

    from shim.app import _stored_body

    expected = {"ok": True, "id": result["id"], "status": result["status"], "duplicate": result["duplicate"]}
    assert _stored_body(result) == json.dumps(expected).encode()


async def test_json_answer_is_json_response_byte_for_byte() -> None:
    from aiohttp import web

    from shim.app import _json_response

    for status, body in [(200, {"shim": "ok"}), (400, {"error": "bad_request", "message": "Ваш"})]:
        ours, theirs = _json_response(status, body), web.json_response(body, status=status)
        assert (ours.status, ours.body, dict(ours.headers)) == (theirs.status, theirs.body, dict(theirs.headers))


# --- from test_bitrix_form_fast.py: the fast path against the code it replaced --------------------
# The one-pass sorting of bracket keys gives exactly what three full scans gave.
#
# ``_reference_*`` are the scans as they were before: each walked every key of
# the form with its pattern.  Random forms (PHP bracket keys right and wrong,
# repeated keys, files where text belongs, bad integers, missing halves) must
# come out of ``parse_handler_post`` the same, or fail naming the same field.


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
    if not bf._B24_ID.fullmatch(values["message_id"]):
        raise bf.FormError("message_id", "must be 32 hexadecimal characters")
    message_type = bf._text(form, "type")
    if message_type is not None and message_type != "SMS":
        raise bf.FormError("type", "must be SMS")
    ts = bf._text(form, "ts")
    return bf.HandlerPost(
        code=values["code"],
        b24_id=values["message_id"].lower(),
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
        form = random_form(rng)
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
        pairs = [(k, v) for k, v in random_form(rng).items() if isinstance(v, str)]
        body = urlencode(pairs).encode()
        aiohttp_form = MultiDictProxy(MultiDict(query_to_pairs(body.decode())))
        assert _outcome(bf.parse_handler_post, bf.decode_form(body)) == _outcome(bf.parse_handler_post, aiohttp_form)


def test_a_post_is_immutable_and_its_repr_keeps_the_number_text_and_auth_out() -> None:
    post = bf.HandlerPost(code="by_sms_main", b24_id="a" * 32, message_to="+375291234567",
                          message_body="secret text", bindings=(bf.Binding(2, 7),), ts=5,
                          auth=MappingProxyType({"application_token": "tok3n"}), document_id=("crm", "D_1"))
    assert repr(post) == str(post) == (
        "HandlerPost(code='by_sms_main', b24_id='" + "a" * 32 + "', type=None, module_id='', "
        "bindings=(Binding(owner_type_id=2, owner_id=7),), ts=5, workflow_id=None, document_id=('crm', 'D_1'))"
    )
    with pytest.raises(AttributeError):
        post.message_to = "+375290000000"  # type: ignore[misc]
    assert bf.HandlerPost(code="c", b24_id="b", message_to="t", message_body="x").auth == {}
