"""Attacks on the app-event door and the missed-update recovery, through the real shim and
daemon against the simulated portal (issue 18 §1-§4). Prints one row per attack: cases
tried, cases accepted (the portal's stored state changed, or a forged post was stored),
and, for the busy-portal drill, how long the stored event waited before it was applied.

    python bench/app_event_attacks.py                      # short: 20 cases, 200 installs, 10 s of 503s
    python bench/app_event_attacks.py --flood-seconds 180  # the issue's "for minutes" drill

The attacker holds one captured HANDLER post: its URL key, an author's (non-admin) access
token and the portal's application_token.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import secrets
import sqlite3
import tempfile
import time
from pathlib import Path
from types import MappingProxyType

import aiohttp
import structlog

from smppd.sims.bitrix24 import SimulatedPortal
from smppd.config import AppConfig, AppEventsConfig
from smppd.cli.demo import Rig, make_config, start_daemon, start_shim, stop_rig
from smppd.sims.smpp import SimulatorConfig, SmscSimulator


def app_for(portal: SimulatedPortal) -> AppConfig:
    return AppConfig(domain=portal.domain, client_id=portal.client_id, client_secret=portal.client_secret,
                     client_endpoint=portal.client_endpoint, server_endpoint=portal.server_endpoint)


async def start(tmp: Path, portal: SimulatedPortal, max_unknown: int) -> Rig:
    await portal.start()
    smscs = {name: SmscSimulator(SimulatorConfig(system_id=name.upper(), accounts={"smppd": "secret"},
                                                 outcomes={"DELIVRD": 1.0}, id_format="hex"))
             for name in ("life", "mts")}
    for smsc in smscs.values():
        await smsc.start()
    cfg = make_config(tmp, portal, smscs, handler_key=secrets.token_urlsafe(24))
    cfg = dataclasses.replace(cfg, portals=MappingProxyType({}), apps=MappingProxyType({portal.domain: app_for(portal)}),
                              app_events=AppEventsConfig(max_unknown=max_unknown))
    rig = Rig(tmp, portal, smscs, cfg)
    await start_shim(rig)
    rig.config = dataclasses.replace(cfg, shim=dataclasses.replace(cfg.shim, public_url=rig.shim_url))
    await start_daemon(rig)
    return rig


async def post(http: aiohttp.ClientSession, url: str, form: list[tuple[str, str]]) -> int:
    async with http.post(url, data=form) as resp:
        await resp.read()
        return resp.status


async def settled(rig: Rig, timeout: float = 600.0) -> None:
    assert rig.daemon is not None and rig.daemon.app_events is not None
    deadline = time.monotonic() + timeout
    while any(e.next_at != float("inf") for e in rig.daemon.app_events.events):
        if time.monotonic() > deadline:
            raise TimeoutError("app events not settled")
        await asyncio.sleep(0.05)


def stored(rig: Rig, member_id: str) -> tuple[str, ...] | None:
    conn = sqlite3.connect(rig.config.daemon.database)
    try:
        return conn.execute("SELECT application_token, access_token, refresh_token FROM portal WHERE member_id=?",
                            (member_id,)).fetchone()
    finally:
        conn.close()


def count(rig: Rig, table: str) -> int:
    conn = sqlite3.connect(rig.config.daemon.database)
    try:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


def event(portal: SimulatedPortal, name: str, **auth: str) -> list[tuple[str, str]]:
    fields = {"member_id": portal.member_id, "domain": portal.domain, "client_endpoint": portal.client_endpoint,
              "server_endpoint": portal.server_endpoint, **auth}
    return [("event", name), *((f"auth[{k}]", v) for k, v in fields.items())]


def captured(portal: SimulatedPortal) -> dict[str, str]:
    _, form = portal.create_message("by_life", "+375291234567", "captured")
    return {k[5:-1]: v for k, v in form if k.startswith("auth[")}


async def drill(args: argparse.Namespace) -> list[tuple[str, int, int | str, str]]:
    rows: list[tuple[str, int, int | str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        portal = SimulatedPortal(rate=2.0, domain=args.domain)
        rig = await start(Path(tmp), portal, args.max_unknown)
        try:
            async with aiohttp.ClientSession() as http:
                url = f"{rig.shim_url}/bitrix24-app?key={rig.config.shim.handler_key}"
                status = await post(http, url, portal.install_event())
                await settled(rig)
                rows.append((f"ONAPPINSTALL (genuine), domain {args.domain}", 1,
                             "applied" if stored(rig, portal.member_id) else "LOST", f"answered {status}"))
                handler = portal.senders["by_life"]["HANDLER"]

                # A genuine ONAPPUPDATE lost on its way; the next genuine post teaches its token, once.
                portal.update_app()
                _, form = portal.create_message("by_life", "+375291234567", "after a missed update")
                status = await post(http, handler, form)
                learned = stored(rig, portal.member_id)[0] == portal.application_token  # type: ignore[index]
                rows.append(("post after a lost ONAPPUPDATE (genuine)", 1, "recovered" if learned else "LOST",
                             f"answered {status}; the token learned once, logged at warning level"))
                await settled(rig)

                async def attack(name: str, forms: list[list[tuple[str, str]]], note: str = "") -> None:
                    before = stored(rig, portal.member_id)
                    answered = [await post(http, url, f) for f in forms]
                    await settled(rig)
                    changed = int(stored(rig, portal.member_id) != before)
                    rows.append((name, len(forms), changed, note or f"answered {sorted(set(answered))}"))

                n = args.cases
                await attack("ONAPPUPDATE: captured non-admin access token, junk refresh token, own app token",
                             [event(portal, "ONAPPUPDATE", access_token=captured(portal)["access_token"],
                                    refresh_token=secrets.token_hex(35), application_token=secrets.token_hex(16))
                              for _ in range(n)])
                pairs = [portal.user_oauth_pair(user_id=7) for _ in range(n)]
                await attack("ONAPPUPDATE: a real pair of our app for a non-admin user",
                             [event(portal, "ONAPPUPDATE", access_token=a, refresh_token=r,
                                    application_token=secrets.token_hex(16)) for a, r in pairs])
                await attack("ONAPPUNINSTALL: captured application_token",
                             [event(portal, "ONAPPUNINSTALL", application_token=captured(portal)["application_token"])
                              for _ in range(n)])
                await attack("ONAPPINSTALL, configured domain: junk tokens",
                             [event(portal, "ONAPPINSTALL", access_token=secrets.token_hex(35),
                                    refresh_token=secrets.token_hex(35), application_token=secrets.token_hex(16))
                              for _ in range(n)])
                portals_before = count(rig, "portal")
                flood = [event(portal, "ONAPPINSTALL", domain=f"evil{i}.bitrix24.by", member_id=secrets.token_hex(16),
                               access_token="a", refresh_token="r", application_token="t")
                         for i in range(args.installs)]
                await attack("ONAPPINSTALL flood, unknown domains", flood)
                rows[-1] = (rows[-1][0], rows[-1][1], count(rig, "portal") - portals_before,
                            f"kept {count(rig, 'app_event')} unproven (bound {args.max_unknown}),"
                            f" portals created {count(rig, 'portal') - portals_before}")
                # Posts with an unknown application_token and a genuine author's access token, no update missed.
                accepted = 0
                for _ in range(n):
                    _, form = portal.create_message("by_life", "+375291234567", "forged")
                    form = [(k, secrets.token_hex(16) if k == "auth[application_token]" else v) for k, v in form]
                    accepted += await post(http, handler, form) == 200
                rows.append(("post: unknown application_token, captured access token, no missed update", n,
                             accepted, "recovery refused: app version unchanged"))
                assert stored(rig, portal.member_id) is not None
                # The busy portal: every REST request answers 503 QUERY_LIMIT_EXCEEDED for a long while.
                portal.flood(args.flood_seconds)
                t0 = time.monotonic()
                status = await post(http, url, portal.update_app())
                answered_in = time.monotonic() - t0
                await settled(rig, timeout=args.flood_seconds + 300)
                applied_after = time.monotonic() - t0
                learned = stored(rig, portal.member_id)[0] == portal.application_token  # type: ignore[index]
                rows.append((f"ONAPPUPDATE (genuine) while the portal answers QUERY_LIMIT_EXCEEDED for"
                             f" {args.flood_seconds:g} s", 1, "applied" if learned else "LOST",
                             f"answered {status} in {answered_in * 1e3:.0f} ms; applied after {applied_after:.1f} s;"
                             f" {portal.rejected_rate_limited} requests refused meanwhile"))
        finally:
            await stop_rig(rig)
            await portal.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=20, help="forged events/posts per attack")
    parser.add_argument("--installs", type=int, default=200, help="unproven installs for made-up domains")
    parser.add_argument("--max-unknown", type=int, default=20, help="[app_events] max_unknown")
    parser.add_argument("--domain", default="crm.example.by:8443", help="the portal's domain (host[:port])")
    parser.add_argument("--flood-seconds", type=float, default=10.0,
                        help="how long the portal answers QUERY_LIMIT_EXCEEDED (the issue: minutes, e.g. 180)")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    rows = asyncio.run(drill(args))
    print("| attack | cases | accepted | notes |")
    print("|---|---:|---:|---|")
    for name, cases, accepted, note in rows:
        print(f"| {name} | {cases} | {accepted} | {note} |")


if __name__ == "__main__":
    main()
