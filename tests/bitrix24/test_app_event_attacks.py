"""App events as an attacker and as a busy portal send them, through the real shim and
daemon (issue 18 §1, §3, §4): forged ONAPPUPDATE/ONAPPUNINSTALL built from one captured
HANDLER post, a flood of unproven installs, a domain with a port, and events while the
portal answers QUERY_LIMIT_EXCEEDED for a long while (and across a restart)."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import sqlite3
from types import MappingProxyType

import pytest
from prometheus_client import REGISTRY

from smppd.bitrix24 import install as install_mod
from smppd.sims.bitrix24 import SimulatedPortal
from smppd.config import AppEventsConfig
from smppd.cli.demo import start_daemon, stop_rig
from tests.rigs.install_rig import (app_for, event_url, install, post_form, rig, send, settled,  # noqa: F401
                          start_app_rig, stored_events, stored_portal, until)



def captured_post(portal: SimulatedPortal) -> dict[str, str]:
    """What an attacker holding one genuine HANDLER post has: its auth block (an author's,
    non-admin access token and the application_token)."""
    _, form = portal.create_message("by_life", "+375291234567", "captured")
    return {k[5:-1]: v for k, v in form if k.startswith("auth[")}


def forged_event(portal: SimulatedPortal, event: str, **auth: str) -> list[tuple[str, str]]:
    fields = {"member_id": portal.member_id, "domain": portal.domain, "client_endpoint": portal.client_endpoint,
              "server_endpoint": portal.server_endpoint, **auth}
    return [("event", event), *((f"auth[{k}]", v) for k, v in fields.items())]


async def genuine_post_accepted(portal: SimulatedPortal) -> bool:
    b24_id, status = await send(portal, "by_life", "still ours")
    return status == 200


@pytest.mark.integration
async def test_forged_update_with_a_non_admin_token_and_junk_refresh_token_changes_nothing(rig):
    portal = rig.portal
    await install(rig, portal)
    before = stored_portal(rig, portal.member_id)
    captured = captured_post(portal)
    attacker_token = secrets.token_hex(16)
    form = forged_event(portal, "ONAPPUPDATE", access_token=captured["access_token"],
                        refresh_token="junk", application_token=attacker_token)
    status, body = await post_form(event_url(rig), form)
    assert (status, body["stored"]) == (200, True)  # stored and answered like any event...
    await settled(rig)
    assert stored_portal(rig, portal.member_id) == before  # ...and never applied
    assert stored_events(rig) == []
    assert rig.daemon.app_events.outcomes == {"applied": 1, "refused": 1}
    assert await genuine_post_accepted(portal)
    _, form = portal.create_message("by_life", "+375291234567", "attacker")
    form = [(k, attacker_token if k == "auth[application_token]" else v) for k, v in form]
    status, _ = await post_form(portal.senders["by_life"]["HANDLER"], form)
    assert status == 403


@pytest.mark.integration
async def test_forged_update_with_a_real_refresh_token_of_a_non_admin_is_refused(rig):
    """A user who opened the app has a genuine pair of ours; user.admin tells them apart."""
    portal = rig.portal
    await install(rig, portal)
    before = stored_portal(rig, portal.member_id)
    access, refresh = portal.user_oauth_pair(user_id=7)
    form = forged_event(portal, "ONAPPUPDATE", access_token=access, refresh_token=refresh,
                        application_token=secrets.token_hex(16))
    status, _ = await post_form(event_url(rig), form)
    assert status == 200
    await settled(rig)
    assert stored_portal(rig, portal.member_id) == before
    assert portal.method_calls["user.admin"] >= 2  # the install's and the forgery's
    assert await genuine_post_accepted(portal)


@pytest.mark.integration
async def test_forged_uninstall_with_the_captured_application_token_is_refused(rig):
    portal = rig.portal
    await install(rig, portal)
    captured = captured_post(portal)
    form = forged_event(portal, "ONAPPUNINSTALL", application_token=captured["application_token"])
    status, _ = await post_form(event_url(rig), form)
    assert status == 200
    await settled(rig)
    assert stored_portal(rig, portal.member_id) is not None  # app.info: still installed
    assert portal.member_id in rig.daemon.pushers
    assert await genuine_post_accepted(portal)
    # The genuine uninstall that follows is applied: the portal no longer takes our tokens.
    status, _ = await post_form(event_url(rig), portal.uninstall_app())
    assert status == 200
    await settled(rig)
    assert stored_portal(rig, portal.member_id) is None


@pytest.mark.integration
async def test_flood_of_unproven_installs_is_bounded_and_summed_up_at_start(rig, capsys):
    portal = rig.portal
    await install(rig, portal)
    rig.daemon.app_events.config = dataclasses.replace(rig.config, app_events=AppEventsConfig(max_unknown=5))
    for i in range(40):  # made-up domains: kept (a genuine one may precede its [[app]]), but bounded
        form = forged_event(portal, "ONAPPINSTALL", domain=f"evil{i}.bitrix24.by", access_token="a" * 10,
                            refresh_token="r" * 10, application_token="t" * 10, member_id=secrets.token_hex(16))
        status, _ = await post_form(event_url(rig), form)
        assert status == 200
    for i in range(20):  # the configured domain with junk tokens: each refused at the OAuth server
        form = forged_event(portal, "ONAPPINSTALL", access_token=secrets.token_hex(35),
                            refresh_token=secrets.token_hex(35), application_token=secrets.token_hex(16))
        status, _ = await post_form(event_url(rig), form)
        assert status == 200
    await settled(rig)
    rows = stored_events(rig)
    assert len(rows) == 5 and rows[-1] == ("ONAPPINSTALL", "evil39.bitrix24.by")
    assert rig.daemon.app_events.outcomes["refused"] == 20
    assert REGISTRY.get_sample_value("smppd_app_events_waiting_config") == 5
    assert len(rig.daemon.pushers) == 1 and await genuine_post_accepted(portal)
    await rig.daemon.stop()
    capsys.readouterr()
    await start_daemon(rig)
    out = capsys.readouterr().out
    assert out.count("evil") == 0  # one summary line, not a line per waiting event
    assert "bitrix24.app_events.loaded" in out and "waiting_config=5" in out


@pytest.mark.integration
async def test_domain_with_a_port_installs_and_serves(tmp_path):
    portal = SimulatedPortal(domain="crm.example.by:8443")
    rig = await start_app_rig(tmp_path, [portal])
    try:
        await install(rig, portal)
        assert stored_events(rig) == []
        assert rig.daemon.pushers[portal.member_id].client.portal.domain == "crm.example.by:8443"
        b24_id, status = await send(portal, "by_life")
        assert status == 200
        await until(lambda: portal.messages[b24_id].status == "delivered")
    finally:
        await stop_rig(rig)


@pytest.mark.integration
async def test_waiting_install_is_completed_by_a_hand_written_portal_entry(tmp_path):
    """An install for a domain the config does not name waits; a [[portal]] written by hand
    for that member (with its client_id and secret) completes it at the next start."""
    from smppd.config import PortalConfig

    portal = SimulatedPortal(domain="crm.example.by:8443")
    rig = await start_app_rig(tmp_path, [portal], configured=False)
    try:
        status, _ = await post_form(event_url(rig), portal.install_event())
        assert status == 200
        await settled(rig)
        assert stored_events(rig) == [("ONAPPINSTALL", "crm.example.by:8443")]
        await rig.daemon.stop()
        hand = PortalConfig(member_id=portal.member_id, domain=portal.domain, client_endpoint=portal.client_endpoint,
                            server_endpoint=portal.server_endpoint, client_id=portal.client_id,
                            client_secret=portal.client_secret, application_token="written-by-hand")
        rig.config = dataclasses.replace(rig.config, portals=MappingProxyType({portal.member_id: hand}))
        await start_daemon(rig)
        await settled(rig)
        assert stored_events(rig) == []
        # The proven event's tokens win over the hand-written seed.
        assert stored_portal(rig, portal.member_id) == (portal.application_token, portal.access_token,
                                                        portal.refresh_token)
        assert await genuine_post_accepted(portal)
    finally:
        await stop_rig(rig)


@pytest.mark.integration
async def test_update_while_the_portal_answers_query_limit_exceeded(rig, monkeypatch):
    """The update is answered 200 at once, waits out the limit (and a restart), then applies."""
    monkeypatch.setattr(install_mod, "RETRY_MIN", 0.2)
    monkeypatch.setattr(install_mod, "RETRY_MAX", 1.0)
    portal = rig.portal
    await install(rig, portal)
    portal.flood(6.0)
    form = portal.update_app()
    status, body = await post_form(event_url(rig), form)
    assert (status, body["stored"]) == (200, True)
    await until(lambda: rig.daemon.app_events.events and rig.daemon.app_events.events[0].attempts >= 2)
    assert stored_portal(rig, portal.member_id)[0] != portal.application_token  # not proven yet
    assert rig.daemon.app_events.figures()[0] == 1
    assert REGISTRY.get_sample_value("smppd_app_events_unproven") == 1
    assert REGISTRY.get_sample_value("smppd_app_events_unproven_oldest_seconds") > 0
    await rig.daemon.stop()  # the event survives a restart in the store
    assert [e for e, _ in stored_events(rig)] == ["ONAPPUPDATE"]
    await start_daemon(rig)
    await until(lambda: stored_portal(rig, portal.member_id)[0] == portal.application_token, timeout=20)
    # the portal's new token and the event's removal are two commits: wait for the second
    await until(lambda: stored_events(rig) == [], timeout=5)
    await until(lambda: set(portal.senders) == {"by_life", "by_mts"}, timeout=20)
    assert await genuine_post_accepted(portal)


def test_migration_turns_a_pending_portal_row_into_a_waiting_event(tmp_path):
    """Version 7 kept an install for an unknown domain as a portal row without client_id,
    which blocked a hand-written [[portal]]; migration 8 makes it an event."""
    import asyncio

    from smppd.model import PortalRecord

    from smppd.store import MIGRATIONS, Store

    path = str(tmp_path / "old.db")
    conn = sqlite3.connect(path)
    for v in range(1, 8):
        conn.executescript(MIGRATIONS[v])
    conn.execute("PRAGMA user_version=7")
    conn.execute("INSERT INTO portal VALUES ('m1','crm.example.by:8443','https://c/rest/','https://o/rest/','',''"
                 ",'apptok','acc','ref',1.0)")
    conn.commit()
    conn.close()

    async def main() -> None:
        store = Store(path)
        await store.open()
        try:
            assert await store.portals() == []
            [event] = await store.app_events()
            assert (event.event, event.member_id, event.domain) == ("ONAPPINSTALL", "m1", "crm.example.by:8443")
            assert event.auth["refresh_token"] == "ref" and event.auth["application_token"] == "apptok"
            await store.seed_portal(PortalRecord("m1", "crm.example.by:8443", "https://c/rest/", "https://o/rest/",
                                                 "local.x", "s", "tok", "a", "r"))
            await store.seed_portal(PortalRecord("m1", "crm.example.by:8443", "https://c/rest/", "https://o/rest/",
                                                 "local.y", "s", "tok2", "a", "r"))  # the store's copy wins now
            [p] = await store.portals()
            assert (p.client_id, p.application_token) == ("local.x", "tok")
            # A row nothing can use (no client_id) never blocks a hand-written [[portal]].
            await store.execute(lambda c: c.execute(
                "INSERT INTO portal VALUES ('m2','b.bitrix24.by','https://c/rest/','https://o/rest/','','','t','a','r',1)"))
            await store.seed_portal(PortalRecord("m2", "b.bitrix24.by", "https://c/rest/", "https://o/rest/",
                                                 "local.z", "s", "tok3", "a", "r"))
            assert {p.member_id: p.client_id for p in await store.portals()} == {"m1": "local.x", "m2": "local.z"}
        finally:
            await store.close()

    asyncio.run(main())


# --- issue 18 §2, last bullet: a missed ONAPPUPDATE is recovered from a post, once ---------------

async def post_as(portal: SimulatedPortal, handler: str, application_token: str | None = None,
                  access_token: str | None = None) -> int:
    b24_id, form = portal.create_message("by_life", "+375291234567", "after the update")
    swap = {"auth[application_token]": application_token, "auth[access_token]": access_token}
    form = [(k, swap[k] if swap.get(k) is not None else v) for k, v in form]
    status, _ = await post_form(handler, form)
    return status


@pytest.mark.integration
async def test_missed_update_is_learned_from_a_genuine_post_once(rig, capsys):
    portal = rig.portal
    await install(rig, portal)
    handler = portal.senders["by_life"]["HANDLER"]
    portal.update_app()  # the ONAPPUPDATE form is lost on its way
    capsys.readouterr()
    assert await post_as(portal, handler) == 200  # recovered: the version moved, our tokens re-proved it
    assert stored_portal(rig, portal.member_id)[0] == portal.application_token
    out = capsys.readouterr().out
    assert out.count("bitrix24.token_recovery.learned") == 1 and "[warning" in out
    await until(lambda: set(portal.senders) == {"by_life", "by_mts"})  # providers registered again
    assert await post_as(portal, handler) == 200
    # Once: another unknown token for the same version teaches nothing.
    captured = captured_post(portal)
    assert await post_as(portal, handler, application_token=secrets.token_hex(16),
                         access_token=captured["access_token"]) == 403
    assert stored_portal(rig, portal.member_id)[0] == portal.application_token
    assert rig.daemon.token_recovery.learned == 1


@pytest.mark.integration
async def test_unknown_token_without_a_missed_update_is_refused(rig, monkeypatch):
    from smppd.bitrix24 import recovery

    monkeypatch.setattr(recovery, "RETRY_AFTER", 0.5)
    portal = rig.portal
    await install(rig, portal)
    handler = portal.senders["by_life"]["HANDLER"]
    before = stored_portal(rig, portal.member_id)
    captured = captured_post(portal)
    # A genuine author's access token with the attacker's application_token: the version is unchanged.
    assert await post_as(portal, handler, application_token=secrets.token_hex(16),
                         access_token=captured["access_token"]) == 403
    # More forged posts cost the portal nothing: our own app.info answer is kept a while.
    calls = portal.method_calls["app.info"]
    for _ in range(3):
        await asyncio.sleep(0.7)  # past the burst guard (recovery.RETRY_AFTER, patched)
        assert await post_as(portal, handler, application_token=secrets.token_hex(16),
                             access_token=secrets.token_hex(35)) == 403
    assert portal.method_calls["app.info"] == calls
    assert stored_portal(rig, portal.member_id) == before
    assert rig.daemon.token_recovery.learned == 0
    assert await genuine_post_accepted(portal)
