"""shim.app: the Bitrix24 HANDLER endpoint against a real RpcServer with fake handlers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from shim.app import make_app
from shim.bitrix_form import Binding, FormError, parse_handler_post
from smppd.rpc import RpcClient, RpcError, RpcServer

from tests.rigs.shim_rig import (ACCESS_TOKEN, APP_TOKEN, CODE, EXAMPLE, FORM_CT, KEY, URL, FakeDaemon, body,  # noqa: F401
                       daemon, rpc, rpc_server, sock_path)  # (the fixtures, by import)


async def _client(rpc: RpcClient, **kwargs: Any) -> TestClient:
    app = make_app(handler_key=KEY, codes={CODE, "by_sms_promo"}, rpc=rpc, **kwargs)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.fixture
async def http(rpc_server: RpcServer, rpc: RpcClient) -> AsyncIterator[TestClient]:
    client = await _client(rpc)
    yield client
    await client.close()


@pytest.fixture
async def http_no_daemon(rpc: RpcClient) -> AsyncIterator[TestClient]:
    client = await _client(rpc)
    yield client
    await client.close()


async def post(http: TestClient, data: bytes, url: str = URL) -> tuple[int, dict[str, Any]]:
    response = await http.post(url, data=data, headers=FORM_CT)
    return response.status, await response.json()


# --------------------------------------------------------------------------
# the happy path


@pytest.mark.integration
async def test_real_form_is_stored(http: TestClient, daemon: FakeDaemon) -> None:
    with capture_logs() as logs:
        status, answer = await post(http, body())
    assert (status, answer) == (200, {"ok": True, "id": 41, "status": "queued", "duplicate": False})
    assert daemon.intakes == [
        {
            "member_id": "a223c6b3710f85df22e9377d6c4f7553",
            "domain": "example.bitrix24.by",
            "application_token": APP_TOKEN,
            "access_token": ACCESS_TOKEN,  # the daemon's recovery of a missed ONAPPUPDATE needs it
            "code": CODE,
            "b24_id": "72dd742c8270db0ddbbab92f98877537",
            "to": "+375291234567",
            "text": "Ваш заказ готов",
            "module_id": "crm",
            "bindings": [
                {"owner_type_id": 2, "owner_id": 1541},
                {"owner_type_id": 3, "owner_id": 877},
            ],
            "ts": 1767225600,
        }
    ]
    [line] = [e for e in logs if e["event"] == "bitrix24.post"]
    assert line == {
        "event": "bitrix24.post",
        "log_level": "debug",
        "code": CODE,
        "b24_id": "72dd742c8270db0ddbbab92f98877537",
        "to": "+37529*****67",
        "outcome": "stored",
        "http_status": 200,
    }
    dumped = repr(logs)
    for secret in (KEY, APP_TOKEN, ACCESS_TOKEN, "375291234567"):
        assert secret not in dumped


@pytest.mark.integration
async def test_at_info_level_the_shim_logs_refusals_not_stored_posts(http: TestClient, daemon: FakeDaemon) -> None:
    """The daemon logs every stored message (message_received); the shim's
    own line is for what the daemon never sees, with the number masked."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    try:
        with capture_logs() as logs:
            assert (await post(http, body()))[0] == 200
            assert (await post(http, body(code="by_sms_promo")))[0] == 400
            assert (await post(http, body(), url=f"/bitrix24/{CODE}?key=wrong"))[0] == 401
    finally:
        structlog.reset_defaults()
    assert [e for e in logs if e["event"] == "bitrix24.post"] == [
        {
            "event": "bitrix24.post",
            "log_level": "warning",
            "code": CODE,
            "b24_id": "72dd742c8270db0ddbbab92f98877537",
            "to": "+37529*****67",
            "outcome": "bad_request",
            "http_status": 400,
        },
        {"event": "bitrix24.post", "log_level": "warning", "code": CODE, "outcome": "unauthorized", "http_status": 401},
    ]
    assert len(daemon.intakes) == 1


@pytest.mark.integration
async def test_duplicate_is_reported(http: TestClient, daemon: FakeDaemon) -> None:
    await post(http, body())
    status, answer = await post(http, body())
    assert status == 200 and answer["duplicate"] is True


@pytest.mark.integration
async def test_post_without_auth_block_forwards_nones(http: TestClient, daemon: FakeDaemon) -> None:
    fields = [(k, v) for k, v in EXAMPLE if not k.startswith("auth[")]
    status, _ = await post(http, body(fields))
    assert status == 200
    params = daemon.intakes[0]
    assert (params["member_id"], params["domain"], params["application_token"]) == (
        None,
        None,
        None,
    )


@pytest.mark.integration
async def test_bizproc_post_without_bindings(http: TestClient, daemon: FakeDaemon) -> None:
    fields = [(k, v) for k, v in EXAMPLE if not k.startswith("bindings[")] + [
        ("workflow_id", "59ce38567ff2a5.26351167"),
        ("document_id[0]", "crm"),
        ("document_id[1]", "CCrmDocumentLead"),
        ("document_id[2]", "LEAD_98"),
        ("document_type[0]", "crm"),
        ("some_future_field", "x"),
    ]
    status, _ = await post(http, body(fields, module_id="bizproc", ts=None, type=None))
    assert status == 200
    params = daemon.intakes[0]
    assert (params["module_id"], params["bindings"], params["ts"]) == ("bizproc", [], None)
    assert params["document_id"] == ["crm", "CCrmDocumentLead", "LEAD_98"]  # the consent lookup's entity


# --------------------------------------------------------------------------
# refusals by the shim, in their contractual order


@pytest.mark.integration
@pytest.mark.parametrize(
    "url", [f"/bitrix24/{CODE}", f"/bitrix24/{CODE}?key=wrong", f"/bitrix24/{CODE}?key=ключ"]
)
async def test_bad_key_is_401(http: TestClient, daemon: FakeDaemon, url: str) -> None:
    status, answer = await post(http, body(), url)
    assert (status, answer) == (401, {"error": "unauthorized", "field": "key"})
    assert daemon.intakes == []


@pytest.mark.integration
async def test_bad_key_beats_unknown_code(http: TestClient) -> None:
    status, _ = await post(http, body(), "/bitrix24/nope?key=wrong")
    assert status == 401


@pytest.mark.integration
async def test_unknown_code_is_404(http: TestClient, daemon: FakeDaemon) -> None:
    status, answer = await post(http, body(code="nope"), f"/bitrix24/nope?key={KEY}")
    assert (status, answer["error"]) == (404, "unknown_code")
    assert daemon.intakes == []


@pytest.mark.integration
@pytest.mark.parametrize("field", ["code", "message_id", "message_to", "message_body"])
async def test_missing_required_field_is_400_naming_it(
    http: TestClient, daemon: FakeDaemon, field: str
) -> None:
    status, answer = await post(http, body(**{field: None}))
    assert status == 400
    assert (answer["error"], answer["field"]) == ("bad_request", field)
    assert daemon.intakes == []


@pytest.mark.integration
@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"message_id": "12345"}, "message_id"),
        ({"message_id": "72dd742c8270db0ddbbab92f9887753z"}, "message_id"),
        ({"message_id": "72dd742c8270db0ddbbab92f98877537a"}, "message_id"),
        ({"code": "by_sms_promo"}, "code"),  # known code, but not the URL's
        ({"message_body": ""}, "message_body"),
        ({"message_body": "  \n "}, "message_body"),
        ({"message_to": ""}, "message_to"),
        ({"type": "MMS"}, "type"),
        ({"ts": "yesterday"}, "ts"),
        ({"bindings[1][OWNER_ID]": "x"}, "bindings[1][OWNER_ID]"),
        ({"bindings[1][OWNER_ID]": None}, "bindings[1][OWNER_ID]"),
    ],
)
async def test_malformed_field_is_400(
    http: TestClient, daemon: FakeDaemon, changes: dict[str, str | None], field: str
) -> None:
    status, answer = await post(http, body(**changes))
    assert (status, answer["field"]) == (400, field)
    assert daemon.intakes == []


@pytest.mark.integration
async def test_body_over_limit_is_413(rpc_server: RpcServer, rpc: RpcClient, daemon: FakeDaemon) -> None:
    http = await _client(rpc, max_body=1024)
    try:
        big = body(message_body="я" * 600)  # 600 Cyrillic letters: 7200 bytes encoded
        assert len(big) > 1024
        status, answer = await post(http, big)
        assert (status, answer) == (413, {"error": "too_large", "field": "body", "limit": 1024})

        async def chunks() -> AsyncIterator[bytes]:
            yield big[:500]
            yield big[500:]

        response = await http.post(URL, data=chunks(), headers=FORM_CT)
        assert response.status == 413
        assert (await response.json()) == {"error": "too_large", "field": "body", "limit": 1024}

        status, _ = await post(http, body())  # a normal post still fits
        assert status == 200
        assert len(daemon.intakes) == 1
    finally:
        await http.close()


@pytest.mark.integration
async def test_key_checked_before_size(rpc: RpcClient) -> None:
    http = await _client(rpc, max_body=10)
    try:
        status, _ = await post(http, body(), f"/bitrix24/{CODE}?key=wrong")
        assert status == 401
    finally:
        await http.close()


# --------------------------------------------------------------------------
# the daemon's answers


@pytest.mark.integration
@pytest.mark.parametrize(
    ("error", "status", "expected"),
    [
        (RpcError("forbidden", "application_token mismatch"), 403, {"error": "forbidden"}),
        (
            RpcError("unknown_code", "code not configured"),
            404,
            {"error": "unknown_code", "message": "code not configured"},
        ),
        (
            RpcError("bad_request", "not a phone number", field="to"),
            400,
            {"error": "bad_request", "field": "message_to", "message": "not a phone number"},
        ),
        (
            RpcError("bad_request", "text: must be 1 to 1000 characters"),
            400,
            {
                "error": "bad_request",
                "field": "message_body",
                "message": "text: must be 1 to 1000 characters",
            },
        ),
        (
            RpcError("bad_request", "b24_id: must be 32 hex characters"),
            400,
            {
                "error": "bad_request",
                "field": "message_id",
                "message": "b24_id: must be 32 hex characters",
            },
        ),
        (
            RpcError("bad_request", "Text too long"),
            400,
            {"error": "bad_request", "message": "Text too long"},
        ),
        (RpcError("disk_full", "no space"), 500, {"error": "internal"}),
        (RuntimeError("boom"), 500, {"error": "internal"}),
    ],
)
async def test_daemon_refusals_are_mapped(
    http: TestClient, daemon: FakeDaemon, error: Exception, status: int, expected: dict[str, Any]
) -> None:
    daemon.error = error
    assert await post(http, body()) == (status, expected)


@pytest.mark.integration
async def test_daemon_down_is_503(http_no_daemon: TestClient) -> None:
    status, answer = await post(http_no_daemon, body())
    assert (status, answer) == (503, {"error": "unavailable"})


@pytest.mark.integration
async def test_daemon_down_stores_nothing_and_recovers(
    sock_path: str, rpc: RpcClient, daemon: FakeDaemon
) -> None:
    server = RpcServer(sock_path, {"intake": daemon.intake, "ping": daemon.ping})
    await server.start()
    http = await _client(rpc)
    try:
        assert (await post(http, body()))[0] == 200
        await server.close()
        assert (await post(http, body()))[0] == 503
        assert len(daemon.intakes) == 1
        await server.start()
        assert (await post(http, body()))[0] == 200
    finally:
        await http.close()
        await server.close()


@pytest.mark.integration
async def test_daemon_timeout_is_503(http: TestClient, daemon: FakeDaemon) -> None:
    daemon.delay = 2  # the client's timeout is 1 s
    status, answer = await post(http, body())
    assert (status, answer) == (503, {"error": "unavailable"})


@pytest.mark.integration
async def test_malformed_daemon_result_is_500(
    sock_path: str, rpc: RpcClient
) -> None:
    async def intake(params: dict[str, Any]) -> Any:
        return {"id": 1}

    server = RpcServer(sock_path, {"intake": intake})
    await server.start()
    http = await _client(rpc)
    try:
        assert (await post(http, body()))[0] == 500
    finally:
        await http.close()
        await server.close()


# --------------------------------------------------------------------------
# health


@pytest.mark.integration
async def test_healthz_ok(http: TestClient) -> None:
    response = await http.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"shim": "ok", "daemon": "ok"}


@pytest.mark.integration
async def test_healthz_daemon_down(http_no_daemon: TestClient) -> None:
    response = await http_no_daemon.get("/healthz")
    assert response.status == 503
    assert await response.json() == {"shim": "ok", "daemon": "unreachable"}


@pytest.mark.integration
async def test_requests_no_route_takes_are_aiohttps_404_and_405_after_the_guard(http: TestClient) -> None:
    """The guard is on each route, not a middleware (shim/body.py ``add_routes``): the 404 and
    405 aiohttp would give come from the guard's own routes, with the header checks first."""
    assert not http.server.app.middlewares  # a middleware costs every post two coroutine layers
    response = await http.get("/nowhere")
    assert (response.status, await response.text()) == (404, "404: Not Found")
    response = await http.get(f"/bitrix24/{CODE}?key={KEY}")  # a path of ours, another method
    assert (response.status, response.headers["Allow"]) == (405, "POST")
    response = await http.post("/healthz")
    assert (response.status, response.headers["Allow"]) == (405, "GET,HEAD")
    assert (await http.head("/healthz")).status == 200
    response = await http.get("/dlr/nowhere")  # routed for any route name: the door answers
    assert response.status == 401
    response = await http.post("/nowhere", data=b"{}", headers={"Content-Type": "application/json"})
    assert response.status == 415 and (await response.json())["field"] == "Content-Type"
    assert response.headers["Connection"] == "close"  # the body was never read


# --------------------------------------------------------------------------
# units


def test_parse_keeps_the_b24_id_a_lowercase_string() -> None:
    form = dict(EXAMPLE, message_id="00000000000000000000000000000123")
    post = parse_handler_post(form)
    assert post.b24_id == "00000000000000000000000000000123"
    assert post.bindings == (Binding(2, 1541), Binding(3, 877))
    assert post.auth["domain"] == "example.bitrix24.by"
    text = repr(post)
    assert APP_TOKEN not in text and ACCESS_TOKEN not in text and "375291234567" not in text


def test_parse_sorts_bindings_numerically() -> None:
    form = {k: v for k, v in EXAMPLE if not k.startswith("bindings[")}
    for n in (10, 2, 1):
        form[f"bindings[{n}][OWNER_TYPE_ID]"] = str(n)
        form[f"bindings[{n}][OWNER_ID]"] = str(100 + n)
    assert [b.owner_type_id for b in parse_handler_post(form).bindings] == [1, 2, 10]


def test_parse_error_names_the_field() -> None:
    with pytest.raises(FormError) as info:
        parse_handler_post({})
    assert info.value.field == "code"


@pytest.mark.integration
async def test_unexpected_shim_error_is_500_json(
    http: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shim.app

    def broken(post: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(shim.app, "_intake_json", broken)
    assert await post(http, body()) == (500, {"error": "internal"})


# --------------------------------------------------------------------------
# how the body is read: the shim's own decoding for Bitrix24's urlencoded
# UTF-8 posts, aiohttp's for everything else; the answers are the same


@pytest.mark.integration
async def test_repeated_field_counts_with_its_first_value(http: TestClient, daemon: FakeDaemon) -> None:
    data = body() + b"&message_body=second&message_to=%2B375290000000"
    assert (await post(http, data))[0] == 200
    assert (daemon.intakes[0]["text"], daemon.intakes[0]["to"]) == ("Ваш заказ готов", "+375291234567")


@pytest.mark.integration
async def test_invalid_utf8_body_is_400(http: TestClient, daemon: FakeDaemon) -> None:
    status, answer = await post(http, body() + b"&note=\xff\xfe")
    assert status == 400
    assert answer == {"error": "bad_request", "field": "body", "message": "not UTF-8"}  # no codec text, no bytes
    assert daemon.intakes == []


@pytest.mark.integration
async def test_invalid_utf8_inside_an_escape_is_replaced_not_refused(http: TestClient, daemon: FakeDaemon) -> None:
    assert (await post(http, body(message_body="x").replace(b"message_body=x", b"message_body=x%FF")))[0] == 200
    assert daemon.intakes[0]["text"] == "x\ufffd"


@pytest.mark.integration
@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded; charset=utf-8", "application/x-www-form-urlencoded; charset=UTF-8"],
)
async def test_urlencoded_with_utf8_charset(http: TestClient, daemon: FakeDaemon, content_type: str) -> None:
    response = await http.post(URL, data=body(), headers={"Content-Type": content_type})
    assert response.status == 200
    assert daemon.intakes[0]["text"] == "Ваш заказ готов"


@pytest.mark.integration
async def test_urlencoded_in_another_charset_is_read_by_aiohttp(http: TestClient, daemon: FakeDaemon) -> None:
    fields = [(k, "Grüße" if v == "Ваш заказ готов" else v) for k, v in EXAMPLE]
    data = urlencode(fields, encoding="latin-1").encode()
    response = await http.post(URL, data=data, headers={"Content-Type": "application/x-www-form-urlencoded; charset=latin-1"})
    assert response.status == 200
    assert daemon.intakes[0]["text"] == "Grüße"


@pytest.mark.integration
async def test_multipart_post_is_read_by_aiohttp(http: TestClient, daemon: FakeDaemon) -> None:
    import aiohttp

    form = aiohttp.FormData(EXAMPLE)
    response = await http.post(URL, data=form)
    assert response.status == 200
    assert daemon.intakes[0]["text"] == "Ваш заказ готов"


@pytest.mark.integration
async def test_post_with_a_content_type_that_is_no_form_is_415(http: TestClient, daemon: FakeDaemon) -> None:
    response = await http.post(URL, data=body(), headers={"Content-Type": "text/plain"})
    assert response.status == 415
    assert (await response.json())["field"] == "Content-Type"
    assert daemon.intakes == []


@pytest.mark.integration
async def test_too_many_fields_is_413(http: TestClient, daemon: FakeDaemon) -> None:
    data = body() + b"&x=1" * 1000
    response = await http.post(URL, data=data, headers=FORM_CT)
    assert response.status == 413  # aiohttp's field limit (1000), reported as before
    assert (await post(http, body() + b"&x=1" * 900))[0] == 200
