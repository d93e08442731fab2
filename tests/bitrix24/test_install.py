"""The local app's life through the real shim and daemon against simulated portals:
install → register → post → status, update, uninstall, forged events, several portals,
token expiry mid-run."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from types import MappingProxyType

import pytest

from smppd.sims.bitrix24 import SimulatedPortal
from smppd.cli.demo import FINAL_B24, start_daemon, stop_rig

from tests.rigs.install_rig import (app_for, event_url, install, owed_delivered, post_form, rig, send,  # noqa: F401 (rig: the fixture)
                          settled, start_app_rig, stored_events, stored_portal, until)

pytestmark = pytest.mark.integration  # starts servers, processes or sockets (see tests/conftest.py)


async def test_install_register_post_status(rig):
    portal = rig.portal
    portal.senders.clear()
    await install(rig, portal)
    stored = stored_portal(rig, portal.member_id)
    assert stored == (portal.application_token, portal.access_token, portal.refresh_token)
    handler = portal.senders["by_life"]["HANDLER"]
    assert handler.startswith(f"{rig.shim_url}/bitrix24/by_life?key=")
    assert portal.senders["by_life"]["NAME"] == "SMS via life:)"
    ids = []
    for code in ("by_life", "by_mts"):
        b24_id, status = await send(portal, code)
        assert status == 200
        ids.append(b24_id)
    await until(lambda: all(portal.messages[i].status in FINAL_B24 for i in ids))
    assert all(portal.messages[i].status == "delivered" for i in ids)
    assert all(portal.messages[i].regressions() == [] for i in ids)


async def test_install_is_idempotent_and_register_readds_what_is_missing(rig):
    portal = rig.portal
    await install(rig, portal)
    status, _ = await post_form(event_url(rig), portal.install_event())  # a second install event
    assert status == 200
    await settled(rig)
    await asyncio.sleep(0.2)  # the registration the install started
    assert rig.rpc is not None
    result = await rig.rpc.call("register", {})
    assert result["portals"][0]["present"] == ["by_life", "by_mts"] and result["portals"][0]["added"] == []
    del portal.senders["by_mts"]  # e.g. removed by hand in the portal
    result = await rig.rpc.call("register", {"portal": portal.member_id})
    assert result["portals"][0]["added"] == ["by_mts"] and result["portals"][0]["ok"]
    result = await rig.rpc.call("unregister", {})
    assert sorted(result["portals"][0]["removed"]) == ["by_life", "by_mts"] and portal.senders == {}


async def test_app_update_rotates_the_token_and_reregisters(rig):
    portal = rig.portal
    await install(rig, portal)
    old_token = portal.application_token
    old_handler = portal.senders["by_life"]["HANDLER"]
    form = portal.update_app()  # the core drops every provider on update
    assert portal.senders == {}
    status, _ = await post_form(event_url(rig), form)
    assert status == 200
    await settled(rig)
    await until(lambda: set(portal.senders) == {"by_life", "by_mts"})
    assert stored_portal(rig, portal.member_id)[0] == portal.application_token != old_token
    b24_id, status = await send(portal, "by_life")
    assert status == 200
    # A post still carrying the previous application_token is now a forgery.
    _, form = portal.create_message("by_life", "+375291234567", "x")
    form = [(k, old_token if k == "auth[application_token]" else v) for k, v in form]
    status, _ = await post_form(old_handler, form)
    assert status == 403


async def test_uninstall_forgets_the_portal(rig):
    portal = rig.portal
    await install(rig, portal)
    forged = [(k, "0" * 32 if k == "auth[application_token]" else v) for k, v in portal.uninstall_app()]
    status, _ = await post_form(event_url(rig), forged)
    assert status == 200  # stored, then refused: the application_token is not ours
    await settled(rig)
    assert stored_portal(rig, portal.member_id) is not None
    handler = portal.senders.get("by_life") or None
    status, _ = await post_form(event_url(rig), [(k, v) for k, v in forged if k != "auth[application_token]"]
                                + [("auth[application_token]", portal.application_token)])
    assert status == 200
    await settled(rig)  # the portal no longer takes our tokens: the app is gone
    assert stored_portal(rig, portal.member_id) is None
    assert handler is None  # the portal dropped our providers itself
    _, form = portal.create_message("by_life", "+375291234567", "x")
    url = f"{rig.shim_url}/bitrix24/by_life?key={rig.config.shim.handler_key}"
    status, _ = await post_form(url, form)
    assert status == 403
    assert rig.daemon is not None and portal.member_id not in rig.daemon.pushers


@pytest.mark.parametrize("forgery", ["key", "domain", "refresh_token", "client_endpoint", "server_endpoint",
                                     "other_app"])
async def test_forged_install_is_refused_and_nothing_is_stored(rig, forgery):
    portal = rig.portal
    form = dict(portal.install_event())
    url = event_url(rig)
    expected = 200  # stored, answered, then refused in the background
    if forgery == "key":
        url, expected = event_url(rig, "x" * 32), 401
    elif forgery == "domain":  # kept waiting (unused) until an [[app]] for it exists; see below
        form["auth[domain]"] = "evil.bitrix24.by"
    elif forgery == "refresh_token":  # the access token alone proves nothing: every post carries one
        form["auth[refresh_token]"] = secrets.token_hex(35)
    elif forgery == "client_endpoint":
        form["auth[client_endpoint]"] = "https://evil.example.com/rest/"
    elif forgery == "server_endpoint":  # would receive our client_secret on every refresh
        form["auth[server_endpoint]"] = "https://evil.example.com/rest/"
    elif forgery == "other_app":  # a valid token of this portal, but of another application
        portal.client_id = "local.someoneelse.1"
    status, _ = await post_form(url, form)
    assert status == expected
    await settled(rig)
    assert stored_portal(rig, portal.member_id) is None
    assert stored_events(rig) == ([("ONAPPINSTALL", "evil.bitrix24.by")] if forgery == "domain" else [])
    assert rig.daemon is not None and rig.daemon.pushers == {}
    assert portal.method_calls["messageservice.sender.add"] == 0


async def test_malformed_event_names_the_field(rig):
    form = [(k, v) for k, v in rig.portal.install_event() if k != "auth[refresh_token]"]
    status, body = await post_form(event_url(rig), form)
    assert status == 400 and "auth[refresh_token]" in body["message"]
    status, body = await post_form(event_url(rig), [("event", "ONSOMETHING")])
    assert status == 400 and "event" in body["message"]


async def test_two_portals_one_daemon(tmp_path):
    a, b = SimulatedPortal(domain="a.bitrix24.by"), SimulatedPortal(domain="b.bitrix24.by")
    rig = await start_app_rig(tmp_path, [a, b])
    try:
        await install(rig, a)
        await install(rig, b)
        ids_a = [(await send(a, "by_life", f"a{i}"))[0] for i in range(3)]
        ids_b = [(await send(b, "by_mts", f"b{i}"))[0] for i in range(3)]
        await until(lambda: all(a.messages[i].status == "delivered" for i in ids_a)
                    and all(b.messages[i].status == "delivered" for i in ids_b))
        # b's message signed with a's application_token is refused.
        _, form = b.create_message("by_life", "+375291234567", "x")
        form = [(k, a.application_token if k == "auth[application_token]" else v) for k, v in form]
        status, _ = await post_form(b.senders["by_life"]["HANDLER"], form)
        assert status == 403
        assert rig.daemon is not None and set(rig.daemon.pushers) == {a.member_id, b.member_id}
    finally:
        await stop_rig(rig)
        await b.stop()


async def test_token_expiry_mid_run(rig):
    portal = rig.portal
    await install(rig, portal)
    first = [(await send(portal, "by_life", f"m{i}"))[0] for i in range(3)]
    await until(lambda: all(portal.messages[i].status == "delivered" for i in first))
    portal.expire_access_token()
    refreshes = portal.refreshes  # one already: the install's proof spent the event's refresh token
    later = [(await send(portal, "by_life", f"n{i}"))[0] for i in range(3)]
    await until(lambda: all(portal.messages[i].status == "delivered" for i in later))
    assert portal.refreshes == refreshes + 1
    # The rotated pair was persisted: a restart would use the only valid refresh token.
    assert stored_portal(rig, portal.member_id)[1:] == (portal.access_token, portal.refresh_token)


async def test_install_before_the_app_is_configured_waits_then_activates(tmp_path):
    """Bitrix24 installs a server-side local app when the admin saves it, before its
    client_id/secret can be in [[app]]: the event is kept pending and verified at the
    next start, with the access token long expired by then (the refresh token is used)."""
    portal = SimulatedPortal()
    rig = await start_app_rig(tmp_path, [portal], configured=False)
    try:
        status, body = await post_form(event_url(rig), portal.install_event())
        assert status == 200 and body["stored"] is True
        await settled(rig)
        assert stored_events(rig) == [("ONAPPINSTALL", portal.domain)]
        portal.senders.clear()
        assert rig.daemon is not None and rig.daemon.pushers == {}
        _, form = portal.create_message("by_life", "+375291234567", "x")
        status, _ = await post_form(f"{rig.shim_url}/bitrix24/by_life?key={rig.config.shim.handler_key}", form)
        assert status == 403  # a pending portal serves nothing
        await rig.daemon.stop()
        portal.expire_access_token()
        rig.config = dataclasses.replace(rig.config, apps=MappingProxyType({portal.domain: app_for(portal)}))
        await start_daemon(rig)
        await settled(rig)
        assert set(rig.daemon.pushers) == {portal.member_id} and stored_events(rig) == []
        await until(lambda: set(portal.senders) == {"by_life", "by_mts"})
        assert portal.refreshes == 1
        assert stored_portal(rig, portal.member_id)[2] == portal.refresh_token
        b24_id, status = await send(portal, "by_life")
        assert status == 200
        await until(lambda: portal.messages[b24_id].status == "delivered")
    finally:
        await stop_rig(rig)


async def test_pending_install_with_a_forged_token_is_never_activated(tmp_path):
    portal = SimulatedPortal()
    rig = await start_app_rig(tmp_path, [portal], configured=False)
    try:
        form = [(k, secrets.token_hex(35) if k in ("auth[access_token]", "auth[refresh_token]") else v)
                for k, v in portal.install_event()]
        status, _ = await post_form(event_url(rig), form)
        assert status == 200
        assert rig.daemon is not None
        await rig.daemon.stop()
        rig.config = dataclasses.replace(rig.config, apps=MappingProxyType({portal.domain: app_for(portal)}))
        await start_daemon(rig)
        await settled(rig)
        assert rig.daemon.pushers == {} and stored_events(rig) == []
    finally:
        await stop_rig(rig)


async def test_smppd_register_and_unregister_commands(rig, monkeypatch, capsys):
    """The admin commands end to end: through the daemon's socket to the portal and back."""
    from smppd.cli import main as cli

    portal = rig.portal
    await install(rig, portal)
    monkeypatch.setattr(cli, "_load", lambda path: rig.config)
    del portal.senders["by_mts"]
    assert await asyncio.to_thread(cli.main, ["register", "-c", "x.toml"]) == 0
    out = capsys.readouterr().out
    assert f"{portal.domain}: added by_mts; already there: by_life" in out
    assert set(portal.senders) == {"by_life", "by_mts"}
    assert await asyncio.to_thread(cli.main, ["unregister", "-c", "x.toml"]) == 0
    assert portal.senders == {} and "removed by_life, by_mts" in capsys.readouterr().out
    portal.overloaded = True
    assert await asyncio.to_thread(cli.main, ["register", "-c", "x.toml"]) == 1
    assert "OVERLOAD_LIMIT" in capsys.readouterr().err
    assert await asyncio.to_thread(cli.main, ["register", "-c", "x.toml", "--portal", "nope"]) == 2


async def test_portal_outage_then_drain_through_the_daemon(rig, monkeypatch):
    """Bitrix24 refuses every request (503 OVERLOAD_LIMIT) while messages flow: the shim
    still answers 200, the statuses wait in the outbox, and leave in batches afterwards."""
    from smppd.bitrix24 import pusher as pusher_mod

    monkeypatch.setattr(pusher_mod, "RETRY_MIN", 0.02)
    monkeypatch.setattr(pusher_mod, "OUTAGE_MAX", 0.1)
    portal = rig.portal
    await install(rig, portal)
    portal.overloaded = True
    ids = []
    for i in range(60):
        b24_id, status = await send(portal, "by_life", f"m{i}")
        assert status == 200
        ids.append(b24_id)
    assert rig.daemon is not None
    pusher = rig.daemon.pushers[portal.member_id]
    await until(lambda: pusher.failures >= 3 and owed_delivered(rig) == 60)  # every receipt is in
    assert all(portal.messages[i].status == "sent" for i in ids)  # nothing got through
    portal.overloaded = False
    before = portal.requests
    await until(lambda: all(portal.messages[i].status == "delivered" for i in ids))
    assert portal.requests - before == 2  # 50 + 10: the backlog leaves in full batches
    assert all(portal.messages[i].regressions() == [] for i in ids)


async def test_rate_limit_storm_through_the_daemon(tmp_path):
    """The daemon believes in an Enterprise bucket; the portal has a tiny one: 503 storms,
    and still every status arrives, forward only."""
    portal = SimulatedPortal(rate=10.0, burst=2)
    rig = await start_app_rig(tmp_path, [portal])
    apps = {portal.domain: dataclasses.replace(app_for(portal), rate=100.0, burst=250)}
    assert rig.daemon is not None
    await rig.daemon.stop()
    rig.config = dataclasses.replace(rig.config, apps=MappingProxyType(apps))
    await start_daemon(rig)
    try:
        await install(rig, portal)
        ids = [(await send(portal, code, f"m{i}"))[0] for i in range(40) for code in ("by_life", "by_mts")]
        await until(lambda: all(portal.messages[i].status == "delivered" for i in ids), timeout=20)
        assert portal.rejected_rate_limited > 0
        assert all(portal.messages[i].regressions() == [] for i in ids)
    finally:
        await stop_rig(rig)


async def test_restart_restores_providers_lost_with_a_missed_event(rig):
    """Bitrix24 never resends an event: if the providers vanished while we were down (a
    missed ONAPPUPDATE drops them), the next start puts them back."""
    portal = rig.portal
    await install(rig, portal)
    assert rig.daemon is not None
    await rig.daemon.stop()
    portal.senders.clear()
    await start_daemon(rig)
    await until(lambda: set(portal.senders) == {"by_life", "by_mts"})
