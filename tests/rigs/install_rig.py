"""The local app's rig: the real shim and daemon with portals that arrive by install
events (no [[portal]] in the config), and what the install tests read back."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import sqlite3
import time
from types import MappingProxyType

import aiohttp
import pytest

from smppd.config import AppConfig
from smppd.cli.demo import Rig, make_config, start_daemon, start_shim, stop_rig
from smppd.sims.bitrix24 import SimulatedPortal
from smppd.sims.smpp import SimulatorConfig, SmscSimulator


def app_for(portal: SimulatedPortal) -> AppConfig:
    return AppConfig(domain=portal.domain, client_id=portal.client_id, client_secret=portal.client_secret,
                     client_endpoint=portal.client_endpoint, server_endpoint=portal.server_endpoint)


async def start_app_rig(tmp_path, portals: list[SimulatedPortal], *, configured: bool = True) -> Rig:
    """The demo rig, but no [[portal]] in the config: portals arrive by install events."""
    for p in portals:
        await p.start()
    smscs = {name: SmscSimulator(SimulatorConfig(system_id=name.upper(), accounts={"smppd": "secret"},
                                                 outcomes={"DELIVRD": 1.0}, id_format="hex"))
             for name in ("life", "mts")}
    for smsc in smscs.values():
        await smsc.start()
    cfg = make_config(tmp_path, portals[0], smscs, handler_key=secrets.token_urlsafe(24))
    cfg = dataclasses.replace(cfg, portals=MappingProxyType({}),
                              apps=MappingProxyType({p.domain: app_for(p) for p in portals if configured}))
    rig = Rig(tmp_path, portals[0], smscs, cfg)
    await start_shim(rig)  # first: the HANDLER registered in Bitrix24 needs the shim's URL
    rig.config = dataclasses.replace(cfg, shim=dataclasses.replace(cfg.shim, public_url=rig.shim_url))
    await start_daemon(rig)
    return rig


@pytest.fixture
async def rig(tmp_path):
    rig = await start_app_rig(tmp_path, [SimulatedPortal(rate=2.0)])
    yield rig
    await stop_rig(rig)


def event_url(rig: Rig, key: str | None = None) -> str:
    return f"{rig.shim_url}/bitrix24-app?key={key or rig.config.shim.handler_key}"


async def post_form(url: str, form) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=form) as resp:
            return resp.status, await resp.json(content_type=None)


async def until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def send(portal: SimulatedPortal, code: str, text: str = "hello", **kw) -> tuple[str, int]:
    """Post a message the way Bitrix24 does: to the HANDLER the portal has registered."""
    b24_id, form = portal.create_message(code, "+375291234567", text, **kw)
    status, _ = await post_form(portal.senders[code]["HANDLER"], form)
    return b24_id, status


def stored_portal(rig: Rig, member_id: str):
    conn = sqlite3.connect(rig.config.daemon.database)
    try:
        return conn.execute("SELECT application_token, access_token, refresh_token FROM portal"
                            " WHERE member_id=?", (member_id,)).fetchone()
    finally:
        conn.close()


def owed_delivered(rig: Rig) -> int:
    conn = sqlite3.connect(rig.config.daemon.database)
    try:
        return conn.execute("SELECT count(*) FROM outbox WHERE status='delivered'").fetchone()[0]
    finally:
        conn.close()


async def settled(rig: Rig, timeout: float = 10.0) -> None:
    """Until every stored app event was proven and applied, or refused."""
    assert rig.daemon is not None and rig.daemon.app_events is not None
    queue = rig.daemon.app_events
    await until(lambda: all(e.next_at == float("inf") for e in queue.events), timeout)


def stored_events(rig: Rig) -> list[tuple[str, str]]:
    conn = sqlite3.connect(rig.config.daemon.database)
    try:
        return conn.execute("SELECT event, domain FROM app_event ORDER BY id").fetchall()
    finally:
        conn.close()


async def install(rig: Rig, portal: SimulatedPortal) -> None:
    status, body = await post_form(event_url(rig), portal.install_event())
    assert (status, body["event"], body["stored"]) == (200, "ONAPPINSTALL", True)
    await settled(rig)
    await until(lambda: set(portal.senders) == set(rig.config.senders))
