"""``decode_form``, the shim's own reading of a urlencoded body, gives exactly
what aiohttp's ``request.post()`` gave: yarl's ``query_to_pairs`` into a
MultiDict, read by ``get`` (the first of repeated keys).

Random bodies are drawn from the pieces that make form decoding go wrong:
escaped separators, '+', lower- and upper-case escapes, broken escapes,
escapes of invalid or cut UTF-8, raw non-ASCII, empty keys and values.
"""

from __future__ import annotations

import random
from typing import Any
from urllib.parse import urlencode

import pytest
from multidict import MultiDict
from yarl._parse import query_to_pairs

from shim import bitrix_form as bf

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
    from tests.test_shim import EXAMPLE

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
