"""RestClient against the simulated portal on loopback (and the simulator's own wire format)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web

from smppd.sims.bitrix24 import SimulatedPortal
from smppd.bitrix24.rest import RestClient, RestError, encode_params, refresh_tokens, token_url
from smppd.model import PortalRecord

CODE = "by_sms_main"
UPDATE = "messageservice.message.status.update"


# ---------------------------------------------------------------------- fixtures


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def portal():
    async with SimulatedPortal(rate=None) as sim:
        yield sim


def auth_of(sim: SimulatedPortal) -> PortalRecord:
    return PortalRecord(**sim.install_auth())


def make_client(http: aiohttp.ClientSession, sim: SimulatedPortal, **kw) -> RestClient:
    kw.setdefault("rate", None)
    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("backoff_max", 0.05)
    return RestClient(http, auth_of(sim), **kw)


def new_message(sim: SimulatedPortal, code: str = CODE) -> str:
    b24_id, _ = sim.create_message(code, "+375291234567", "Ваш заказ готов")
    return b24_id


async def raw(http: aiohttp.ClientSession, sim: SimulatedPortal, method: str, **kw) -> tuple[int, dict]:
    async with http.post(f"{sim.client_endpoint}{method}", **kw) as resp:
        return resp.status, json.loads(await resp.text())


# ---------------------------------------------------------------------- status.update


@pytest.mark.integration
async def test_status_update_ok(http, portal):
    client = make_client(http, portal)
    b24_id = new_message(portal)
    result = await client.call(UPDATE, {"CODE": CODE, "MESSAGE_ID": b24_id, "STATUS": "delivered"})
    assert result is True
    message = portal.messages[b24_id]
    assert message.status == "delivered"
    assert [s for _, s in message.history] == ["sent", "delivered"]
    assert portal.updates_applied == 1
    assert client.last_time is not None and {"start", "finish", "duration", "processing", "date_start",
                                             "date_finish", "operating", "operating_reset_at"} <= set(client.last_time)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("params", "code", "description"),
    [
        ({"CODE": CODE, "MESSAGE_ID": "0" * 32, "STATUS": "delivered"}, "ERROR_MESSAGE_NOT_FOUND",
         "Message not found!"),
        ({"CODE": "other_code", "MESSAGE_ID": None, "STATUS": "delivered"}, "ERROR_MESSAGE_NOT_FOUND",
         "Message not found!"),
        ({"MESSAGE_ID": None, "STATUS": "delivered"}, "ERROR_SENDER_VALIDATION_FAILURE", "Empty sender code!"),
        ({"CODE": CODE, "MESSAGE_ID": None, "STATUS": "DELIVERED"}, "ERROR_MESSAGE_STATUS_INCORRECT",
         "Message status incorrect!"),
        ({"CODE": CODE, "MESSAGE_ID": None, "STATUS": "read"}, "ERROR_MESSAGE_STATUS_INCORRECT",
         "Message status incorrect!"),
    ],
)
async def test_status_update_errors(http, portal, params, code, description):
    client = make_client(http, portal)
    b24_id = new_message(portal)
    params = {k: (b24_id if k == "MESSAGE_ID" and v is None else v) for k, v in params.items()}
    with pytest.raises(RestError) as info:
        await client.call(UPDATE, params)
    assert (info.value.code, info.value.description, info.value.http_status) == (code, description, 400)
    assert portal.messages[b24_id].status == "sent"
    assert portal.requests == 1  # not retried


@pytest.mark.integration
async def test_purged_message_is_not_found(http, portal):
    client = make_client(http, portal)
    b24_id = new_message(portal)
    await client.call(UPDATE, {"CODE": CODE, "MESSAGE_ID": b24_id, "STATUS": "queued"})
    portal.purge(b24_id)
    with pytest.raises(RestError) as info:
        await client.call(UPDATE, {"CODE": CODE, "MESSAGE_ID": b24_id, "STATUS": "delivered"})
    assert info.value.code == "ERROR_MESSAGE_NOT_FOUND"
    assert b24_id not in portal.messages and b24_id in portal.purged


@pytest.mark.integration
async def test_simulator_applies_backwards_moves_and_records_them(http, portal):
    """Like the real core there is no monotonic guard; the history must show the regression."""
    client = make_client(http, portal)
    b24_id = new_message(portal)
    for status in ("delivered", "sent"):
        assert await client.call(UPDATE, {"CODE": CODE, "MESSAGE_ID": b24_id, "STATUS": status}) is True
    message = portal.messages[b24_id]
    assert message.status == "sent"
    assert message.regressions() == [("delivered", "sent")]


@pytest.mark.integration
async def test_same_status_is_a_noop(http, portal):
    client = make_client(http, portal)
    b24_id = new_message(portal)
    for _ in range(2):
        await client.call(UPDATE, {"CODE": CODE, "MESSAGE_ID": b24_id, "STATUS": "delivered"})
    assert [s for _, s in portal.messages[b24_id].history] == ["sent", "delivered"]
    assert (portal.updates_applied, portal.updates_noop) == (1, 1)
    assert portal.messages[b24_id].regressions() == []


@pytest.mark.integration
async def test_params_are_case_insensitive_and_auth_travels_in_the_body(portal):
    urls: list[str] = []

    async def on_start(session, ctx, params):
        urls.append(str(params.url))

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    async with aiohttp.ClientSession(trace_configs=[trace]) as http:
        client = make_client(http, portal)
        b24_id = new_message(portal)
        assert await client.call(UPDATE, {"code": CODE, "message_id": b24_id, "status": "failed"}) is True
    assert portal.messages[b24_id].status == "failed"
    assert urls == [f"{portal.client_endpoint}{UPDATE}"]
    assert all(portal.access_token not in u and "auth=" not in u for u in urls)


@pytest.mark.integration
async def test_simulator_accepts_get_json_suffix_and_json_body(http, portal):
    b24_id = new_message(portal)
    query = urlencode({"auth": portal.access_token, "CODE": CODE, "MESSAGE_ID": b24_id, "STATUS": "queued"})
    async with http.get(f"{portal.client_endpoint}{UPDATE}.json?{query}") as resp:
        assert resp.status == 200
        assert (await resp.json())["result"] is True
    body = {"auth": portal.access_token, "code": CODE, "message_id": b24_id, "status": "delivered"}
    status, data = await raw(http, portal, UPDATE, json=body)
    assert (status, data["result"]) == (200, True)
    assert portal.messages[b24_id].status == "delivered"


@pytest.mark.integration
async def test_missing_and_unknown_token(http, portal):
    status, data = await raw(http, portal, "messageservice.sender.list", data={})
    assert (status, data["error"]) == (401, "NO_AUTH_FOUND")
    status, data = await raw(http, portal, "no.such.method", data={"auth": portal.access_token})
    assert (status, data) == (404, {"error": "ERROR_METHOD_NOT_FOUND", "error_description": "Method not found!"})


@pytest.mark.integration
async def test_author_token_is_not_admin(http, portal):
    """The handler post carries the *author's* token: fine for its own message, not for admin methods."""
    b24_id, form = portal.create_message(CODE, "+375291234567", "hi")
    author_token = dict(form)["auth[access_token]"]
    status, data = await raw(http, portal, UPDATE, data={"auth": author_token, "CODE": CODE,
                                                          "MESSAGE_ID": b24_id, "STATUS": "delivered"})
    assert (status, data["result"]) == (200, True)
    status, data = await raw(http, portal, "messageservice.sender.list", data={"auth": author_token})
    assert (status, data["error"]) == (403, "ACCESS_DENIED")


# ---------------------------------------------------------------------- batch


@pytest.mark.integration
async def test_batch_of_50_with_mixed_results(http, portal):
    client = make_client(http, portal)
    known = [new_message(portal) for _ in range(40)]
    commands = {f"m{i}": (UPDATE, {"CODE": CODE, "MESSAGE_ID": mid, "STATUS": "delivered"})
                for i, mid in enumerate(known)}
    commands |= {f"x{i}": (UPDATE, {"CODE": CODE, "MESSAGE_ID": f"{i:032x}", "STATUS": "delivered"})
                 for i in range(10)}
    results, errors = await client.batch(commands)
    assert results == {f"m{i}": True for i in range(40)}
    assert set(errors) == {f"x{i}" for i in range(10)}
    assert {(e.code, e.description) for e in errors.values()} == {("ERROR_MESSAGE_NOT_FOUND", "Message not found!")}
    assert all(portal.messages[mid].status == "delivered" for mid in known)
    assert portal.requests == 1 and portal.method_calls["batch"] == 1 and portal.method_calls[UPDATE] == 50


@pytest.mark.integration
async def test_batch_of_51_is_refused_before_sending(http, portal):
    client = make_client(http, portal)
    commands = {f"m{i}": (UPDATE, {"CODE": CODE, "MESSAGE_ID": "x", "STATUS": "sent"}) for i in range(51)}
    with pytest.raises(ValueError):
        await client.batch(commands)
    assert portal.requests == 0


@pytest.mark.integration
async def test_batch_halt_stops_at_first_error(http, portal):
    client = make_client(http, portal)
    ids = [new_message(portal) for _ in range(4)]
    ids[1] = "f" * 32
    commands = {f"k{i}": (UPDATE, {"CODE": CODE, "MESSAGE_ID": mid, "STATUS": "delivered"})
                for i, mid in enumerate(ids)}
    results, errors = await client.batch(commands, halt=True)
    assert results == {"k0": True}
    assert list(errors) == ["k1"]
    assert portal.messages[ids[2]].status == "sent"  # never ran


@pytest.mark.integration
async def test_batch_numeric_keys_come_back_as_php_lists(http, portal):
    client = make_client(http, portal)
    ids = [new_message(portal) for _ in range(3)]
    commands = {str(i): (UPDATE, {"CODE": CODE, "MESSAGE_ID": mid, "STATUS": "undelivered"})
                for i, mid in enumerate(ids)}
    results, errors = await client.batch(commands)
    assert results == {"0": True, "1": True, "2": True} and errors == {}


@pytest.mark.integration
async def test_batch_wire_format(http, portal):
    """Form ``cmd[key]=method?query`` (encoded once more); empty maps are PHP ``[]``."""
    ok_id = new_message(portal)
    inner = urlencode({"CODE": CODE, "MESSAGE_ID": ok_id, "STATUS": "delivered"})
    body = urlencode([("auth", portal.access_token), ("halt", "0"), ("cmd[m1]", f"{UPDATE}?{inner}")])
    assert "cmd%5Bm1%5D=messageservice.message.status.update%3FCODE%3Dby_sms_main%26MESSAGE_ID%3D" in body
    status, data = await raw(http, portal, "batch", data=body,
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200
    block = data["result"]
    assert block["result"] == {"m1": True}
    assert block["result_error"] == [] and block["result_total"] == [] and block["result_next"] == []
    assert set(block["result_time"]["m1"]) >= {"start", "finish", "duration", "processing"}
    assert set(data["time"]) >= {"start", "finish", "duration", "processing", "date_start", "date_finish",
                                 "operating", "operating_reset_at"}

    json_body = {"auth": portal.access_token, "halt": 0,
                 "cmd": {"a": f"{UPDATE}?CODE={CODE}&MESSAGE_ID={'0' * 32}&STATUS=failed",
                         "b": "batch?cmd[x]=messageservice.sender.list"}}
    status, data = await raw(http, portal, "batch", json=json_body)
    assert status == 200
    assert data["result"]["result"] == [] and data["result"]["result_time"] == []
    assert data["result"]["result_error"] == {
        "a": {"error": "ERROR_MESSAGE_NOT_FOUND", "error_description": "Message not found!"},
        "b": {"error": "ERROR_BATCH_METHOD_NOT_ALLOWED", "error_description": "Method is not allowed for batch usage"},
    }


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["per_command", "http_400"])
async def test_simulator_batch_overflow_modes(http, mode):
    async with SimulatedPortal(rate=None, batch_overflow=mode) as sim:
        cmd = {f"c{i}": "messageservice.sender.list" for i in range(51)}
        status, data = await raw(http, sim, "batch", json={"auth": sim.access_token, "cmd": cmd})
    if mode == "http_400":
        assert (status, data["error"]) == (400, "ERROR_BATCH_LENGTH_EXCEEDED")
    else:
        assert status == 200
        assert len(data["result"]["result"]) == 50
        assert data["result"]["result_error"] == {
            "c50": {"error": "ERROR_BATCH_LENGTH_EXCEEDED", "error_description": "Max batch length exceeded"}}


def test_encode_params_is_php_style():
    assert encode_params({"a": {"b": [1, True]}, "n": None, "s": "x y"}) == [("a[b][0]", "1"), ("a[b][1]", "1"),
                                                                           ("s", "x y")]


# ---------------------------------------------------------------------- OAuth


def test_token_url_is_derived_from_server_endpoint():
    assert token_url("https://oauth.bitrix.info/rest/") == "https://oauth.bitrix.info/oauth/token/"
    assert token_url("https://oauth.bitrix24.tech/rest/") == "https://oauth.bitrix24.tech/oauth/token/"


@pytest.mark.integration
async def test_expired_token_refreshes_exactly_once_for_20_concurrent_calls(http, portal):
    persisted: list[PortalRecord] = []

    async def on_tokens(new: PortalRecord) -> None:
        # The rotated pair reaches us before anyone has used it.
        assert portal.uses_of(new.access_token) == 0
        assert new.refresh_token == portal.refresh_token
        await asyncio.sleep(0.01)  # a slow disk: concurrent callers must wait, not refresh again
        persisted.append(new)

    client = make_client(http, portal, on_tokens=on_tokens)
    old = client.portal
    ids = [new_message(portal) for _ in range(21)]
    await client.call(UPDATE, {"CODE": CODE, "MESSAGE_ID": ids[0], "STATUS": "delivered"})
    portal.expire_access_token()

    await asyncio.gather(*(client.call(UPDATE, {"CODE": CODE, "MESSAGE_ID": mid, "STATUS": "delivered"})
                           for mid in ids[1:]))

    assert portal.refreshes == 1 and len(persisted) == 1
    assert client.portal == persisted[0] and client.portal.access_token != old.access_token
    assert client.portal.domain == portal.domain  # not the OAuth server's host from the token response
    assert all(portal.messages[mid].status == "delivered" for mid in ids)
    with pytest.raises(RestError) as info:
        await refresh_tokens(http, old)  # the rotated-away refresh token is dead
    assert info.value.code == "invalid_grant"


@pytest.mark.integration
async def test_second_expiry_in_one_call_is_not_refreshed_again(http, portal):
    client = make_client(http, portal, on_tokens=None)
    portal.access_ttl = -1  # every issued token is born expired
    portal.expire_access_token()
    with pytest.raises(RestError) as info:
        await client.call("messageservice.sender.list")
    assert info.value.code == "expired_token" and portal.refreshes == 1


@pytest.mark.integration
async def test_refresh_with_wrong_client_secret(http, portal):
    from dataclasses import replace

    client = RestClient(http, replace(auth_of(portal), client_secret="nope"), rate=None)
    portal.expire_access_token()
    with pytest.raises(RestError) as info:
        await client.call("messageservice.sender.list")
    assert info.value.code == "invalid_client"


@pytest.mark.integration
async def test_failed_persist_keeps_new_tokens_pending(http, portal):
    calls = 0

    async def flaky(new: PortalRecord) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("disk full")

    client = make_client(http, portal, on_tokens=flaky)
    portal.expire_access_token()
    with pytest.raises(RestError) as info:
        await client.call("messageservice.sender.list")
    assert info.value.code == "token_persist_failed"
    assert portal.uses_of(portal.access_token) == 0  # never used unpersisted
    assert await client.call("messageservice.sender.list") == []
    assert calls == 2 and portal.refreshes == 1 and client.portal.access_token == portal.access_token


# ---------------------------------------------------------------------- limits and retries


@pytest.mark.integration
async def test_rate_limit_storm_is_ridden_out(http):
    started = time.monotonic()
    async with SimulatedPortal(rate=20.0, burst=5) as sim:
        client = make_client(http, sim, rate=100.0, burst=100, backoff_base=0.05, backoff_max=0.2,
                             max_attempts=40)
        ids = [new_message(sim) for _ in range(25)]
        results = await asyncio.gather(*(client.call(UPDATE, {"CODE": CODE, "MESSAGE_ID": mid, "STATUS": "delivered"})
                                         for mid in ids))
    assert results == [True] * 25
    assert sim.rejected_rate_limited > 0
    assert sim.updates_applied == 25
    assert time.monotonic() - started < 3.0


@pytest.mark.integration
async def test_client_bucket_keeps_under_the_portal_limit(http):
    # Three requests of headroom under the portal's burst: a loaded CI machine can wake the
    # client's sleepers 100 ms late, and they then go out together. Without the bucket, 7 of
    # the 12 are refused at once (and more on their retries).
    async with SimulatedPortal(rate=20.0, burst=5) as sim:
        client = make_client(http, sim, rate=20.0, burst=2)
        await asyncio.gather(*(client.call("messageservice.sender.list") for _ in range(12)))
    assert sim.rejected_rate_limited == 0


@pytest.mark.integration
async def test_overload_limit_is_not_retried(http, portal):
    client = make_client(http, portal)
    portal.overloaded = True
    with pytest.raises(RestError) as info:
        await client.call("messageservice.sender.list")
    assert (info.value.code, info.value.http_status) == ("OVERLOAD_LIMIT", 503)
    assert portal.requests == 1


@pytest.mark.integration
async def test_operation_time_limit_backs_off_until_unblocked(http, portal):
    client = make_client(http, portal, max_attempts=50)
    portal.block_method("messageservice.sender.list", 0.15)
    assert await client.call("messageservice.sender.list") == []
    assert portal.requests > 1


@pytest.mark.integration
async def test_operation_time_limit_waits_until_operating_reset_at(http, portal):
    slept: list[float] = []

    async def fake_sleep(delay: float) -> None:
        slept.append(delay)
        portal.unblock_method("messageservice.sender.list")

    client = make_client(http, portal, sleep=fake_sleep)
    await client.call("messageservice.sender.list")  # learns operating_reset_at (first use + 600 s)
    portal.block_method("messageservice.sender.list", 600)
    await client.call("messageservice.sender.list")
    assert len(slept) == 1 and 590 < slept[0] <= 600


@pytest.mark.integration
async def test_network_errors_retry_then_raise(http):
    slept: list[float] = []

    async def fake_sleep(delay: float) -> None:
        slept.append(delay)

    async with SimulatedPortal(rate=None) as sim:
        auth = auth_of(sim)
    client = RestClient(http, auth, rate=None, sleep=fake_sleep, max_attempts=4, backoff_base=0.5)
    with pytest.raises(RestError) as info:
        await client.call("messageservice.sender.list")
    assert info.value.code == "network"
    assert len(slept) == 3 and slept[0] <= 0.5 and slept[-1] > slept[0] / 2


# ---------------------------------------------------------------------- HANDLER form and senders


@pytest.mark.integration
async def test_create_message_form_has_the_section_4_layout(http, portal):
    received: list[dict[str, str]] = []

    async def handler(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-www-form-urlencoded"
        received.append({k: v for k, v in (await request.post()).items()})
        return web.Response(text="OK")

    app = web.Application()
    app.router.add_post("/b24/handler", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        b24_id, form = portal.create_message(CODE, "+375291234567", "Ваш заказ готов")
        status, body = await portal.post_to_handler(http, f"http://{host}:{port}/b24/handler?k=s3cret", form)
    finally:
        await runner.cleanup()
    assert (status, body) == (200, "OK")
    keys = [k for k, _ in form]
    assert keys[:5] == ["module_id", "bindings[0][OWNER_TYPE_ID]", "bindings[0][OWNER_ID]",
                        "bindings[1][OWNER_TYPE_ID]", "bindings[1][OWNER_ID]"]
    assert keys[5:13] == ["properties[phone_number]", "properties[message_text]", "type", "code", "message_id",
                          "message_to", "message_body", "ts"]
    for key in ("application_token", "member_id", "domain", "access_token", "expires_in", "scope", "user_id",
                "client_endpoint", "server_endpoint"):
        assert f"auth[{key}]" in keys
    assert "auth[refresh_token]" not in keys and "message_from" not in keys
    got = received[0]
    assert re.fullmatch(r"[0-9a-f]{32}", got["message_id"]) and got["message_id"] == b24_id
    assert got["code"] == CODE and got["type"] == "SMS" and got["message_body"] == "Ваш заказ готов"
    assert got["properties[phone_number]"] == got["message_to"] == "+375291234567"
    assert got["auth[application_token]"] == portal.application_token
    assert got["auth[member_id]"] == portal.member_id and got["auth[domain]"] == portal.domain
    assert portal.messages[b24_id].status == "sent"


@pytest.mark.integration
def test_create_message_bizproc_and_no_author(portal):
    _, form = portal.create_message(CODE, "+79161234567", "x", module_id="bizproc", author=False)
    data = dict(form)
    assert data["module_id"] == "bizproc" and "workflow_id" in data
    assert [data[f"document_id[{i}]"] for i in range(3)] == ["crm", "CCrmDocumentLead", "LEAD_98"]
    assert [data[f"document_type[{i}]"] for i in range(3)] == ["crm", "CCrmDocumentLead", "LEAD"]
    assert not any(k.startswith(("bindings", "auth[")) for k in data)


@pytest.mark.integration
async def test_sender_add_list_delete(http, portal):
    client = make_client(http, portal)
    handler = f"{portal.base_url}/b24/handler?k=secret"
    add = {"CODE": CODE, "TYPE": "SMS", "HANDLER": handler, "NAME": {"en": "SMS BY", "ru": "SMS BY"}}
    assert await client.call("messageservice.sender.add", add) is True
    assert await client.call("messageservice.sender.list") == [CODE]
    assert portal.senders[CODE]["HANDLER"] == handler

    failures = [
        (add, "ERROR_SENDER_ALREADY_INSTALLED", "Sender already installed!"),
        ({**add, "CODE": "bad code!"}, "ERROR_SENDER_VALIDATION_FAILURE", "Wrong sender code!"),
        ({**add, "CODE": "b", "TYPE": "MMS"}, "ERROR_SENDER_VALIDATION_FAILURE", "Unknown sender message TYPE!"),
        ({**add, "CODE": "b", "NAME": ""}, "ERROR_SENDER_VALIDATION_FAILURE", "Empty sender NAME!"),
        ({**add, "CODE": "b", "HANDLER": "http://localhost/x"}, "ERROR_WRONG_HANDLER_URL", "Wrong handler URL"),
        ({**add, "CODE": "b", "HANDLER": "ftp://sms.example.by/x"}, "ERROR_UNSUPPORTED_PROTOCOL",
         "Unsupported handler protocol"),
    ]
    for params, code, description in failures:
        with pytest.raises(RestError) as info:
            await client.call("messageservice.sender.add", params)
        assert (info.value.code, info.value.description) == (code, description)

    assert await client.call("messageservice.sender.delete", {"code": CODE}) is True
    assert await client.call("messageservice.sender.list") == []
    with pytest.raises(RestError) as info:
        await client.call("messageservice.sender.delete", {"CODE": CODE})
    assert (info.value.code, info.value.description) == ("ERROR_SENDER_NOT_FOUND", "Sender not found!")


@pytest.mark.integration
async def test_sender_add_refuses_loopback_like_the_cloud(http):
    async with SimulatedPortal(rate=None, allow_local_handler=False) as sim:
        client = make_client(http, sim)
        with pytest.raises(RestError) as info:
            await client.call("messageservice.sender.add", {"CODE": CODE, "TYPE": "SMS", "NAME": "x",
                                                            "HANDLER": f"{sim.base_url}/h"})
        assert info.value.code == "ERROR_WRONG_HANDLER_URL"
        assert await client.call("messageservice.sender.add", {"CODE": CODE, "TYPE": "SMS", "NAME": "x",
                                                               "HANDLER": "https://sms.example.by/h"}) is True


def test_form_urlencode_is_urlencode_byte_for_byte():
    """The pusher's fast form encoder must put exactly what urllib would on the wire."""
    import random
    from urllib.parse import urlencode

    from smppd.bitrix24.rest import form_urlencode

    alphabet = [chr(c) for c in range(0x250)] + list("привет€ &=?+%[]#/") + ["\U0001F600", "\u00ff", "\u0100"]
    rng = random.Random(7)
    for _ in range(5000):
        pairs = [("".join(rng.choices(alphabet, k=rng.randint(0, 10))), "".join(rng.choices(alphabet, k=rng.randint(0, 40))))
                 for _ in range(rng.randint(0, 4))]
        assert form_urlencode(pairs) == urlencode(pairs), pairs
    with pytest.raises(UnicodeEncodeError):  # a lone surrogate fails as in urllib, never goes out mangled
        form_urlencode([("k", "\ud800")])


def test_command_value_is_the_command_encoded_twice():
    """A batch command's form value, built piecewise, equals quoting the whole command (rest/form.py)."""
    import random

    from smppd.bitrix24.rest import command_value, encode_params, form_urlencode

    rng = random.Random(11)
    alphabet = "aZ09_.-~ +&=?%[]#/\\\"'ёЖ€😀\x00\n"

    def word() -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 8)))

    def value(depth: int = 0):
        kind = rng.randrange(7 if depth < 2 else 5)
        return [word, lambda: None, lambda: rng.choice([True, False]), lambda: rng.randrange(-5, 10**6),
                lambda: "delivered", lambda: {word(): value(depth + 1) for _ in range(rng.randrange(3))},
                lambda: [value(depth + 1) for _ in range(rng.randrange(3))]][kind]()

    for _ in range(3000):
        method = rng.choice(["messageservice.message.status.update", "crm.deal.get", "a b&c"])
        params = {rng.choice(["CODE", "MESSAGE_ID", "STATUS", word()]): value() for _ in range(rng.randrange(5))}
        whole = form_urlencode([("x", f"{method}?{form_urlencode(encode_params(params))}")])
        assert command_value(method, params) == whole[2:], (method, params)


def test_a_moved_portal_keeps_the_port_of_its_domain():
    """An on-premise portal on its own port (issue 18 §4): the domain taken from a token
    answer's client_endpoint is host:port, as Bitrix24 reports it in auth[domain]."""
    import json as _json

    from smppd.bitrix24.rest.oauth import parse_token_response

    auth = PortalRecord(member_id="m", domain="crm.example.by:8443", client_endpoint="https://old.example.by:8443/rest/",
                        server_endpoint="https://oauth.bitrix.info/rest/", access_token="a", refresh_token="r",
                        client_id="c", client_secret="s", application_token="app")
    answer = {"access_token": "a2", "refresh_token": "r2", "member_id": "m",
              "client_endpoint": "https://CRM.example.by:8443/rest/"}
    assert parse_token_response(auth, 200, _json.dumps(answer)).domain == "crm.example.by:8443"
    answer["client_endpoint"] = "https://new.bitrix24.by/rest/"
    assert parse_token_response(auth, 200, _json.dumps(answer)).domain == "new.bitrix24.by"


@pytest.mark.integration
async def test_refresh_retries_only_what_never_reached_the_oauth_server(http):
    """A refresh that may have reached the server is never sent again: the server may have
    rotated (spent) the refresh token, and a second try would only turn into invalid_grant.
    One that could not connect is retried (http_client.Unavailable)."""
    import socket

    record = PortalRecord("m", "shop.bitrix24.by", "http://127.0.0.1:1/rest/", "", "c", "s", "app", "a", "r")
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(RestError) as info:
        await refresh_tokens(http, dataclasses.replace(record, server_endpoint=f"http://127.0.0.1:{port}/rest/"))
    assert (info.value.code, info.value.description) == ("network", "ClientConnectorError")

    connections: list[asyncio.StreamWriter] = []

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)  # reads the request, never answers

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(RestError) as info:
            await refresh_tokens(http, dataclasses.replace(record, server_endpoint=f"http://127.0.0.1:{port}/rest/"),
                                 timeout=aiohttp.ClientTimeout(total=0.3))
        assert info.value.code == "network" and len(connections) == 1
    finally:
        for w in connections:
            w.close()
        server.close()
        await server.wait_closed()
