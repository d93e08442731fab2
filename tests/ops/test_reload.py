"""SIGHUP reload and the service wrapper: binds that did not change stay up."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
from types import MappingProxyType

import pytest

from smppd.ops import reload
from smppd.config import SenderConfig
from smppd.cli.demo import start_rig, stop_rig
from smppd.rpc import RpcClient
from smppd.cli.run import reload_config, run_daemon
from smppd.sims.bitrix24 import SimulatedPortal
from smppd.sims.smpp import SimulatorConfig, SmscSimulator

from tests.rigs.e2e_rig import post, wait_final
from tests.rigs.config_rig import config_toml

pytestmark = pytest.mark.integration  # starts servers, processes or sockets (see tests/conftest.py)


@pytest.fixture
async def rig(tmp_path):
    r = await start_rig(tmp_path, seed=9, portal_rate=None)
    yield r
    await stop_rig(r)


def changed(cfg, **routes):
    """cfg with route fields replaced: changed(cfg, life={"throughput": 5.0})."""
    new_routes = {n: dataclasses.replace(r, **routes.get(n, {})) for n, r in cfg.routes.items()}
    return dataclasses.replace(cfg, routes=MappingProxyType(new_routes))


def test_plan_sorts_changes_by_what_they_need(rig):
    old = rig.config
    p = reload.plan(old, changed(old, life={"throughput": 50.0}, mts={"window": 5}))
    assert p.applicable and p.retune == ("life",) and p.rebind == ("mts",) and not p.added
    assert reload.plan(old, old).empty
    p = reload.plan(old, dataclasses.replace(old, daemon=dataclasses.replace(old.daemon, database="/x.db")))
    assert p.restart_needed == ("daemon.database",) and not p.applicable
    fewer = dataclasses.replace(old, routes=MappingProxyType({"life": old.routes["life"]}))
    assert reload.plan(old, fewer).restart_needed == ("route.mts (removed)",)


async def test_reload_keeps_unchanged_binds_and_loses_nothing(rig):
    daemon = rig.daemon
    life, mts = daemon.routes["life"], daemon.routes["mts"]
    life_conn = life.connection
    posted = [(await post(rig, "by_mts", f"+37529{n:07d}", "before the rebind"))[0] for n in range(1234560, 1234568)]
    new_cfg = changed(rig.config, life={"throughput": 500.0}, mts={"window": 3})
    new_cfg = dataclasses.replace(new_cfg, senders=MappingProxyType({
        **new_cfg.senders, "by_mts_promo": SenderConfig("by_mts_promo", "mts", "Promo", "promo"),
    }))
    plan = await reload.apply(daemon, new_cfg)
    assert plan.retune == ("life",) and plan.rebind == ("mts",) and plan.senders_changed
    # life: the same route, the same bind, the new cap.
    assert daemon.routes["life"] is life and life.connection is life_conn and life.connection.binds == 1
    assert life.policy.cap.cap == 500
    # mts: a new route object with the new window, and no message left behind.
    assert daemon.routes["mts"] is not mts and daemon.routes["mts"].cfg.window == 3
    assert not mts.connection.bound
    await wait_final(rig, posted)
    # The new CODE works at once.
    client = RpcClient(rig.config.daemon.socket_path)
    try:
        sent = await client.call("send", {"code": "by_mts_promo", "to": "+375291112233", "text": "new code"})
    finally:
        await client.close()
    assert sent["route"] == "mts" and sent["status"] == "queued"


async def test_reload_refuses_what_needs_a_restart_and_changes_nothing(rig):
    daemon = rig.daemon
    before = daemon.config
    new = changed(before, life={"throughput": 7.0})
    new = dataclasses.replace(new, daemon=dataclasses.replace(new.daemon, socket_path="/run/other.sock"))
    plan = await reload.apply(daemon, new)
    assert not plan.applicable and daemon.config is before and daemon.routes["life"].policy.cap.cap == 0


async def test_bad_config_file_on_reload_keeps_the_running_one(rig, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[daemon]\nsocket = 5\n")
    before = rig.daemon.config
    assert await reload_config(rig.daemon, str(bad)) is None
    assert rig.daemon.config is before


# --- the service: READY only once the socket listens; SIGHUP; SIGTERM ------------------------


async def test_service_notifies_ready_reloads_on_hup_and_stops_on_term(tmp_path, monkeypatch):
    portal = SimulatedPortal(rate=None)
    await portal.start()
    smsc = SmscSimulator(SimulatorConfig(system_id="LIFE", accounts={"smppd": "secret"}))
    await smsc.start()
    notify_path = str(tmp_path / "notify")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(notify_path)
    listener.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", notify_path)
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    path = tmp_path / "config.toml"
    path.write_text(config_toml(tmp_path, portal, smsc, throughput=0))
    from smppd import config as config_mod

    loop = asyncio.get_running_loop()
    service = asyncio.create_task(run_daemon(config_mod.load(path), str(path)))

    async def next_state(want: str) -> None:
        while True:
            msg = (await asyncio.wait_for(loop.sock_recv(listener, 4096), 5)).decode()
            if msg.startswith(want):
                return

    try:
        await next_state("READY=1")
        assert os.path.exists(tmp_path / "smppd.sock"), "READY only after the socket listens"
        await next_state("WATCHDOG=1")
        while smsc.binds != 1:
            await asyncio.sleep(0.01)
        bound = list(smsc._connections)
        path.write_text(config_toml(tmp_path, portal, smsc, throughput=40))
        os.kill(os.getpid(), signal.SIGHUP)
        await next_state("RELOADING=1")
        await next_state("READY=1")
        client = RpcClient(str(tmp_path / "smppd.sock"))
        try:
            st = await client.call("status")
        finally:
            await client.close()
        assert st["routes"]["life"]["binds"] == 1
        assert list(smsc._connections) == bound and smsc.binds == 1, "a throughput change does not rebind"
        os.kill(os.getpid(), signal.SIGTERM)
        await next_state("STOPPING=1")
        await asyncio.wait_for(service, 10)
        assert not os.path.exists(tmp_path / "smppd.sock")
    finally:
        if not service.done():
            service.cancel()
        listener.close()
        await smsc.stop()
        await portal.stop()


async def test_shim_sighup_takes_a_new_key_and_new_codes(tmp_path):
    from aiohttp.test_utils import TestClient, TestServer

    from shim.__main__ import reload as shim_reload
    from shim.app import make_app
    from smppd import config as config_mod

    portal = SimulatedPortal(rate=None)
    smsc = SmscSimulator(SimulatorConfig(system_id="LIFE", accounts={"smppd": "secret"}))
    await portal.start()
    await smsc.start()
    path = tmp_path / "config.toml"
    text = config_toml(tmp_path, portal, smsc, throughput=0)
    path.write_text(text)
    cfg = config_mod.load(path)
    rpc = RpcClient(str(tmp_path / "nobody.sock"))
    app = make_app(handler_key=cfg.shim.handler_key, codes=frozenset(cfg.senders), rpc=rpc)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        new_key = "another-handler-key-of-enough-length"
        path.write_text(text.replace("a-handler-key-of-enough-length-000", new_key)
                        + '\n[sender.by_life_promo]\nroute = "life"\nsender_id = "Promo"\n')
        new = shim_reload(app, cfg, str(path))
        assert new is not cfg and "by_life_promo" in new.senders
        old_key = await client.post("/bitrix24/by_life_promo?key=a-handler-key-of-enough-length-000", data={})
        assert old_key.status == 401
        fresh = await client.post(f"/bitrix24/by_life_promo?key={new_key}", data={})
        assert fresh.status == 400  # past the key and the code: the empty form is what is wrong now
        # A change of listen address is refused: the running config stays.
        path.write_text(text.replace('listen = "127.0.0.1:0"', 'listen = "127.0.0.1:8081"'))
        assert shim_reload(app, new, str(path)) is new
    finally:
        await client.close()
        await rpc.close()
        await smsc.stop()
        await portal.stop()


async def test_service_start_failure_is_one_clear_line_and_false(tmp_path):
    from structlog.testing import capture_logs

    from smppd import config as config_mod

    portal = SimulatedPortal(rate=None)
    smsc = SmscSimulator(SimulatorConfig(system_id="LIFE", accounts={"smppd": "secret"}))
    await portal.start()
    await smsc.start()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    path = tmp_path / "config.toml"
    path.write_text(config_toml(tmp_path, portal, smsc, throughput=0).replace(
        "database = ", f'metrics = "127.0.0.1:{port}"\ndatabase = ', 1))
    try:
        with capture_logs() as logs:
            assert await run_daemon(config_mod.load(path), str(path)) is False
        [failed] = [e for e in logs if e["event"] == "daemon_start_failed"]
        assert f"daemon.metrics: cannot listen on 127.0.0.1:{port}" in failed["error"]
        assert not os.path.exists(tmp_path / "smppd.sock")
    finally:
        busy.close()
        await smsc.stop()
        await portal.stop()


async def test_sighup_with_a_new_smsru_key_restarts_that_route(tmp_path, monkeypatch):
    """The README's step: a new SMS.ru api_id in config.toml, then `systemctl reload smppd` (SIGHUP).
    Before, reload read new.queue (SMPP only) and the SMS.ru route silently never started again."""
    from smppd import config as config_mod
    from smppd.sims.smsru import SmsRuSimulator

    notify_path = str(tmp_path / "notify")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(notify_path)
    listener.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", notify_path)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    loop = asyncio.get_running_loop()

    async def next_state(want: str) -> None:
        while True:
            msg = (await asyncio.wait_for(loop.sock_recv(listener, 4096), 5)).decode()
            if msg.startswith(want):
                return

    portal = SimulatedPortal(rate=None)
    await portal.start()
    smsc = SmscSimulator(SimulatorConfig(system_id="LIFE", accounts={"smppd": "secret"}))
    await smsc.start()
    provider = SmsRuSimulator(api_id="old-api-id", outcomes={103: 1.0})
    await provider.start()

    def text(api_id: str) -> str:
        return config_toml(tmp_path, portal, smsc, throughput=0) + f"""
[route.smsru]
kind = "smsru"
api_id = "{api_id}"
base_url = "{provider.base_url}"
retry_min = 0.05
retry_max = 0.5

[sender.by_smsru]
route = "smsru"
sender_id = "DemoShop"
"""

    path = tmp_path / "config.toml"
    path.write_text(text("old-api-id"))
    service = asyncio.create_task(run_daemon(config_mod.load(path), str(path)))
    client = RpcClient(str(tmp_path / "smppd.sock"))
    try:
        await next_state("READY=1")
        provider.api_id = "new-api-id"  # rotated in the provider's cabinet ...
        path.write_text(text("new-api-id"))  # ... and in config.toml
        os.kill(os.getpid(), signal.SIGHUP)
        await next_state("RELOADING=1")
        await next_state("READY=1")
        sent = await client.call("send", {"code": "by_smsru", "to": "+375291234567", "text": "after reload"})
        for _ in range(250):
            m = await client.call("message", {"id": sent["id"]})
            if m["status"] in ("accepted", "delivered"):
                break
            await asyncio.sleep(0.02)
        assert m["status"] in ("accepted", "delivered"), m
        assert len(provider.messages) == 1
        st = await client.call("status")
        assert st["routes"]["smsru"]["up"] and st["routes"]["smsru"]["account_errors"] == 0
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(service, 10)
    finally:
        await client.close()
        if not service.done():
            service.cancel()
        listener.close()
        await provider.stop()
        await smsc.stop()
        await portal.stop()
