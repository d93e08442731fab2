"""The intake params the shim forwards (and spools) are the params dict the daemon's
``intake`` expects, encoded as the RPC client encodes params (UTF-8 JSON, no spaces),
for any post the form parser lets through.

``_reference_params`` is that dict, written out field by field; the RPC client encodes
params with ``smppd.rpc.wire.encode_json``.
"""

from __future__ import annotations

import json
import random
from types import MappingProxyType
from typing import Any

import pytest

from shim import bitrix_form as bf
from shim.app import _intake_json
from smppd.rpc import wire

from tests.rigs.form_rig import random_form


def _reference_params(post: bf.HandlerPost) -> dict[str, Any]:
    auth = post.auth
    params: dict[str, Any] = {
        "member_id": auth.get("member_id"),
        "domain": auth.get("domain"),
        "application_token": auth.get("application_token"),
        "access_token": auth.get("access_token"),
        "code": post.code,
        "b24_id": post.b24_id,
        "to": post.message_to,
        "text": post.message_body,
        "module_id": post.module_id,
        "bindings": [
            {"owner_type_id": b.owner_type_id, "owner_id": b.owner_id} for b in post.bindings
        ],
        "ts": post.ts,
    }
    if post.document_id:
        params["document_id"] = list(post.document_id)
    return params


def _check(post: bf.HandlerPost) -> None:
    encoded = _intake_json(post)
    assert json.loads(encoded) == _reference_params(post), post
    assert encoded == wire.encode_json(_reference_params(post)).encode(), post


_AWKWARD = ['', 'plain', 'Ваш заказ готов', '"quoted" \\ back\\slash', 'tab\tnew\nline\r\x00\x1f\x7f',
            '\u2028\u2029', '😀 emoji', '\ufffd', '</script>', '%s %d %b %%']


@pytest.mark.parametrize("text", _AWKWARD)
def test_awkward_strings_are_quoted_as_json_quotes_them(text: str) -> None:
    auth = MappingProxyType({"member_id": text, "domain": text, "application_token": text})
    _check(bf.HandlerPost(code=text, b24_id="a" * 32, message_to=text, message_body=text, module_id=text,
                          bindings=(bf.Binding(-5, 10**17), bf.Binding(0, 7)), ts=-1, auth=auth,
                          document_id=(text, "crm", text)))


def test_absent_parts_are_null_or_left_out() -> None:
    post = bf.HandlerPost(code="c", b24_id="a" * 32, message_to="+375291234567", message_body="x")
    _check(post)
    assert b'"member_id":null' in _intake_json(post) and b'"ts":null' in _intake_json(post)
    assert b"document_id" not in _intake_json(post) and b'"bindings":[]' in _intake_json(post)
    _check(bf.HandlerPost(code="c", b24_id="a" * 32, message_to="1", message_body="x", document_id=()))


@pytest.mark.parametrize("seed", range(2))
def test_random_posts_encode_as_their_params_dict(seed: int) -> None:
    rng = random.Random(seed)
    checked = 0
    for _ in range(2000):
        form = random_form(rng)
        try:
            post = bf.parse_handler_post(form)
        except bf.FormError:
            continue
        _check(post)
        checked += 1
    assert checked > 300
