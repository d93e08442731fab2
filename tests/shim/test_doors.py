"""Issue 18 §2 and §5, tried from outside against the real ``smppd run`` and
``smppd-shim`` processes: forged and replayed HANDLER posts, posts without auth[],
the Bitrix24 address list, unsigned SMS.ru callbacks, and one key rotation for
every door."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import pytest_asyncio

from smppd.ops.logs import FLUSH_AFTER

from tests.rigs.doors_rig import DoorsRig, start_doors, stop_doors

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def rig(tmp_path_factory):
    r = await start_doors(tmp_path_factory.mktemp("doors"))
    yield r
    await stop_doors(r)


def _replace(form: list[tuple[str, str]], **fields: str | None) -> list[tuple[str, str]]:
    """The form with ``fields`` changed (None: removed); ``auth_x`` stands for ``auth[x]``."""
    names = {(f"auth[{k[5:]}]" if k.startswith("auth_") else k): v for k, v in fields.items()}
    out = [(k, names[k]) if k in names else (k, v) for k, v in form if names.get(k, "") is not None]
    out += [(k, v) for k, v in names.items() if v is not None and k not in dict(form)]
    return out


def _without_auth(form: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in form if not k.startswith("auth[")]


async def test_genuine_post_is_stored(rig: DoorsRig) -> None:
    b24_id, form = rig.genuine()
    status, body = await rig.post(rig.handler_url(), form)
    assert (status, body["duplicate"]) == (200, False) and rig.stored(b24_id)


@pytest.mark.parametrize("auth", [
    {"auth_member_id": None, "auth_application_token": "forged-token"},
    {"auth_member_id": None, "auth_application_token": ""},
    {"auth_member_id": None, "auth_domain": None, "auth_application_token": "x" * 32},
    {"auth_application_token": "forged-token"},  # the real member_id, a wrong token
    {"auth_member_id": "0" * 32},  # a portal we do not have
])
async def test_a_wrong_token_is_refused_and_nothing_is_stored_sent_or_pushed(rig: DoorsRig, auth) -> None:
    """§2: a token that opens no portal used to fall through to the only portal installed."""
    to = "+375291110001"
    b24_id, form = rig.genuine(to=to)
    status, body = await rig.post(rig.handler_url(), _replace(form, **auth))
    assert (status, body) == (403, {"error": "forbidden"})
    await asyncio.sleep(0.3)  # what would have been sent or pushed has had its chance
    assert not rig.stored(b24_id)
    assert not [s for s in rig.smsc.submitted if to[1:] in str(s)]
    assert rig.portal.messages[b24_id].history[-1][1] == "sent"  # no status pushed for it


async def test_the_right_token_without_member_id_names_its_portal(rig: DoorsRig) -> None:
    b24_id, form = rig.genuine()
    status, _ = await rig.post(rig.handler_url(), _replace(form, auth_member_id=None))
    assert status == 200 and rig.stored(b24_id)


# A shift from now is taken when the test runs, not when it is collected: the suite can run
# for minutes, and a ts fixed at collection drifts back into the window.
@pytest.mark.parametrize("ts,answer", [
    ("978307200", (403, "stale")),  # 2001
    (-86400 - 120, (403, "stale")),
    (86400 + 120, (403, "stale")),
    (None, (400, "bad_request")),  # every genuine post has one (bitrix24.md §4)
])
async def test_a_post_outside_the_ts_window_is_refused(rig: DoorsRig, ts, answer) -> None:
    if isinstance(ts, int):
        ts = str(int(time.time()) + ts)
    b24_id, form = rig.genuine()
    status, body = await rig.post(rig.handler_url(), _replace(form, ts=ts))
    assert (status, body["error"], body["field"]) == (*answer, "ts")
    assert not rig.stored(b24_id)


async def test_a_post_a_few_minutes_late_or_early_is_kept(rig: DoorsRig) -> None:
    for shift in (-3600, -60, 0, 90):
        b24_id, form = rig.genuine()
        status, _ = await rig.post(rig.handler_url(), _replace(form, ts=str(int(time.time()) + shift)))
        assert status == 200 and rig.stored(b24_id)


async def test_a_captured_post_replayed_later_is_refused(rig: DoorsRig) -> None:
    """A post captured yesterday, replayed with another number, text and message id."""
    b24_id, form = rig.genuine()
    assert (await rig.post(rig.handler_url(), form))[0] == 200
    replay = _replace(form, message_to="+375299999999", message_body="pay here", message_id="f" * 32,
                      ts=str(int(time.time()) - 2 * 86400))
    assert (await rig.post(rig.handler_url(), replay))[0] == 403
    assert not rig.stored("f" * 32)
    # the same post again is the same message: not stored twice, not sent twice
    status, body = await rig.post(rig.handler_url(), form)
    assert (status, body["duplicate"]) == (200, True)


async def test_posts_without_auth_are_counted_logged_hourly_and_refusable(rig: DoorsRig) -> None:
    member = rig.portal.member_id
    ids = []
    for _ in range(3):
        b24_id, form = rig.genuine(author=False)
        assert (await rig.post(rig.handler_url(), form))[0] == 200
        ids.append(b24_id)
    assert all(rig.stored(i) for i in ids)
    metrics = await rig.metrics(rig.daemon_metrics)
    assert f'smppd_posts_without_auth_total{{portal="{member}",refused="false"}} 3.0' in metrics
    await rig.log_has("daemon", '"post_without_auth"')  # lines leave in batches (smppd/ops/logs.py)
    log = rig.log("daemon")
    assert log.count('"post_without_auth"') == 1  # one line per portal per hour, not per post
    # the admin's choice: refuse them
    await rig.hup_daemon(shim_extra='posts_without_auth = "refuse"')
    try:
        b24_id, form = rig.genuine(author=False)
        assert await rig.post(rig.handler_url(), form) == (403, {"error": "forbidden"})
        assert not rig.stored(b24_id)
        b24_id, form = rig.genuine()  # a post with its auth block is unaffected
        assert (await rig.post(rig.handler_url(), form))[0] == 200
    finally:
        await rig.hup_daemon(shim_extra="")


async def test_allow_from_admits_only_bitrix24_addresses(rig: DoorsRig) -> None:
    await rig.hup_shim(shim_extra='allow_from = ["203.0.113.0/24", "2001:db8::/32"]')
    try:
        b24_id, form = rig.genuine()
        # straight from 127.0.0.1, or through the proxy for an outside address
        for headers in (None, {"X-Forwarded-For": "198.51.100.7"},
                        {"X-Forwarded-For": "203.0.113.9, 198.51.100.7"}):  # the client's own claim comes first
            status, body = await rig.post(rig.handler_url(), form, headers=headers)
            assert (status, body["error"]) == (403, "address_not_allowed")
            status, body = await rig.post(rig.app_url(), {"event": "ONAPPUPDATE"}, headers=headers)
            assert (status, body["error"]) == (403, "address_not_allowed")
        assert not rig.stored(b24_id)
        # a queue server's post, as nginx passes it on
        status, _ = await rig.post(rig.handler_url(), form, headers={"X-Forwarded-For": "203.0.113.9"})
        assert status == 200 and rig.stored(b24_id)
        # providers call /dlr/ from their own addresses: not on Bitrix24's list, still served
        status, _ = await rig.post(rig.dlr_url(), rig.signed_smsru(["sms_status\n000-allow\n103"]))
        assert status == 200
    finally:
        await rig.hup_shim(shim_extra="")


async def test_unsigned_or_missigned_smsru_callbacks_change_nothing(rig: DoorsRig) -> None:
    rig.smsru.callback_url = None  # the test speaks for SMS.ru
    b24_id, form = rig.genuine(to="+375291112233", text="via SMS.ru", code="by_smsru")  # not a repeat
    assert (await rig.post(rig.handler_url("by_smsru"), form))[0] == 200
    deadline = time.monotonic() + 10
    pid = None
    while pid is None:
        with rig.db() as conn:
            row = conn.execute("SELECT s.smsc_id FROM segment s JOIN message m ON m.id = s.row_id"
                               " WHERE m.b24_id=?", (b24_id,)).fetchone()
        pid = row[0] if row else None
        assert time.monotonic() < deadline, "never accepted by SMS.ru"
        await asyncio.sleep(0.05)
    record = f"sms_status\n{pid}\n103"
    for form in ({"data[0]": record},  # the URL key alone
                 {"data[0]": record, "hash": "0" * 64},
                 {"data[0]": record, "hash": rig.signed_smsru([record + "\n1"])["hash"]}):
        status, body = await rig.post(rig.dlr_url(), form)
        assert (status, body["error"], body["field"]) == (403, "forbidden", "hash")
    with rig.db() as conn:
        assert conn.execute("SELECT status FROM message WHERE b24_id=?", (b24_id,)).fetchone()[0] != "delivered"
    assert await rig.post(rig.dlr_url(), rig.signed_smsru([record])) == (200, 100)
    with rig.db() as conn:
        assert conn.execute("SELECT status FROM message WHERE b24_id=?", (b24_id,)).fetchone()[0] == "delivered"


async def test_sighup_rotates_the_key_of_every_door_together(rig: DoorsRig) -> None:
    """§5: before, a SIGHUP rotated /bitrix24/ only; the old key kept opening the others."""
    old_key, old_route_key = rig.key, rig.route_key
    callback = rig.signed_smsru(["sms_status\n000-rotate\n103"])

    async def doors(key: str, route_key: str) -> list[int]:
        _, form = rig.genuine()
        return [(await rig.post(rig.handler_url(key=key), form))[0],
                (await rig.post(rig.app_url(key=key), {"event": "NOT_AN_EVENT"}))[0],
                (await rig.post(rig.dlr_url(key=route_key), callback))[0]]

    assert 401 not in await doors(old_key, old_route_key)
    await rig.hup_shim(key="door-key-" + "n" * 24, route_key="route-key-" + "m" * 24)
    assert await doors(old_key, old_route_key) == [401, 401, 401]
    assert 401 not in await doors(rig.key, rig.route_key)
    status, body = await rig.post(rig.handler_url(key=old_key), rig.genuine()[1])
    assert body == {"error": "unauthorized", "field": "key"}
    for name in ("shim.log", "daemon.log"):  # no key of any door in a log line
        text = rig.log(name.removesuffix(".log"))
        assert old_key not in text and rig.key not in text and old_route_key not in text


async def test_a_captured_handler_key_opens_no_callback_door(rig: DoorsRig) -> None:
    """SMSC.ru callbacks are not signed: before, on a route without its own callback_key
    the handler key (in every captured post's URL) opened /dlr/ and marked any message
    delivered.  Now a route's callback door opens with its callback_key only."""
    b24_id, form = rig.genuine(to="+375291114455", text="via SMSC", code="by_smsc")
    assert (await rig.post(rig.handler_url("by_smsc"), form))[0] == 200
    rid, _, digits = (await rig.smsc_id(b24_id)).partition(":")
    delivered = {"id": rid, "phone": digits, "status": "1", "err": "0"}
    for key in (rig.key, None, "", rig.route_key):  # the handler key, none, empty, another route's
        status, body = await rig.post(rig.smsc_dlr_url(key), delivered)
        assert (status, body) == (401, {"error": "unauthorized", "field": "key"}), key
    status, _ = await rig.post(rig.dlr_url(key=rig.key), rig.signed_smsru(["sms_status\n000-hk\n103"]))
    assert status == 401  # nor SMS.ru's, signed or not
    assert rig.status(b24_id) != "delivered"
    await rig.log_has("shim", "no_callback_key")  # the admin is told why the provider's calls fail
    log = rig.log("shim")
    assert log.count("no_callback_key") == 1 and rig.key not in log  # one line a minute, not one per call
    # the admin gives the route its own key (and the provider the URL check-config prints)
    smsc_key = "smsc-callback-" + "c" * 24
    await rig.hup_shim(smsc_callback=f'callback_key = "{smsc_key}"')
    assert (await rig.post(rig.smsc_dlr_url(rig.key), delivered))[0] == 401
    assert await rig.post(rig.smsc_dlr_url(smsc_key), delivered) == (200, "OK")
    assert rig.status(b24_id) == "delivered"
    # its message_final line names SMSC.ru's id, request:phone: the last test checks the number is masked
    await rig.log_has("daemon", f'"b24_id":"{b24_id}","route":"smsc","smsc_ids":["{rid}:')


async def test_a_key_rotation_loses_no_post_of_a_busy_portal(rig: DoorsRig) -> None:
    """Bitrix24 keeps posting to the old HANDLER URL until `smppd register --update`
    has run (and to the old app handler path until the admin edits it), and never
    resends a refused post: the old key, moved to handler_key_previous, keeps the two
    Bitrix24 doors open meanwhile; never the callback doors; and is refused once removed."""
    old, new = rig.key, "door-key-" + "q" * 24
    await rig.hup_shim(key=new, shim_extra=f'handler_key_previous = "{old}"')
    try:
        for key in (old, new):
            b24_id, form = rig.genuine()
            assert (await rig.post(rig.handler_url(key=key), form))[0] == 200 and rig.stored(b24_id)
            status, _ = await rig.post(rig.app_url(key=key), {"event": "NOT_AN_EVENT"})
            assert status != 401
        assert (await rig.post(rig.dlr_url(key=old), rig.signed_smsru(["sms_status\n000-prev\n103"])))[0] == 401
        await rig.log_has("shim", "door.previous_key_used")  # Bitrix24 still has the old URL: the admin is told
    finally:
        await rig.hup_shim(shim_extra="")
    b24_id, form = rig.genuine()
    assert (await rig.post(rig.handler_url(key=old), form))[0] == 401
    assert (await rig.post(rig.handler_url(key=new), form))[0] == 200


# the form fields whose values never reach a log line: secrets, numbers, texts
_NEVER_LOGGED = ("message_to", "message_body", "properties[phone_number]", "properties[message_text]",
                 "auth[access_token]", "auth[application_token]", "auth[refresh_token]")


async def test_zz_no_secret_number_or_text_of_any_post_reached_a_log_line(rig: DoorsRig) -> None:
    """Runs last: every post this module made, genuine or forged, against both logs.

    Keys (of every URL posted, right or wrong), tokens, full numbers and texts must
    not appear, neither raw nor as JSON escapes them."""
    from urllib.parse import parse_qsl, urlsplit

    values = {rig.portal.application_token, rig.portal.client_secret, rig.smsru.api_id, rig.smscru.psw}
    for url, form in rig.sent:
        values.update(v for k, v in parse_qsl(urlsplit(url).query) if k == "key")
        values.update(v for k, v in form if k in _NEVER_LOGGED)
        values.update(v.lstrip("+") for k, v in form if k == "message_to")
    values = {v for v in values if len(v) >= 8}
    assert len(values) > 20  # the module did post
    await asyncio.sleep(FLUSH_AFTER + 0.3)  # the last lines are written
    for name in ("shim.log", "daemon.log"):
        text = rig.log(name.removesuffix(".log"))
        leaked = [(v[:6] + "…", next(line[:300] for line in text.splitlines() if v in line or json.dumps(v)[1:-1] in line))
                  for v in values if v in text or json.dumps(v)[1:-1] in text]
        assert leaked == [], name
