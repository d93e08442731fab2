"""kill -9 of the real `smppd run` process loses nothing the shim answered 200 for.

The daemon runs as a separate process from a config file, as in production;
the portal, the SMSCs and the shim run in the test process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from smppd import config as config_mod
from smppd.sims.bitrix24 import SimulatedPortal
from smppd.cli.demo import OUTCOMES, Rig, start_shim
from smppd.sims.smpp import SimulatorConfig, SmscSimulator

from tests.rigs.e2e_rig import post, wait_final
from tests.rigs.process_rig import wait_ready

pytestmark = pytest.mark.integration  # starts servers, processes or sockets (see tests/conftest.py)


def write_config(tmp: Path, portal: SimulatedPortal, life: SmscSimulator, mts: SmscSimulator,
                 database: str | None = None) -> Path:
    """The daemon's config; the store is ``database`` (PostgreSQL) or a SQLite file under tmp/state."""
    path = tmp / "config.toml"
    path.write_text(f"""
[daemon]
socket = "{tmp}/smppd.sock"
database = "{database or f"{tmp}/state/smppd.db"}"

[shim]
listen = "127.0.0.1:0"
handler_key = "crash-test-key-0123456789abcdef"
spool_dir = "{tmp}/state/shim-spool"

{portal.portal_toml()}
[route.life]
host = "127.0.0.1"
port = {life.port}
system_id = "smppd"
password = "secret"
reconnect_min = 0.1
reconnect_max = 0.5

[route.mts]
host = "127.0.0.1"
port = {mts.port}
system_id = "smppd"
password = "secret"
reconnect_min = 0.1
reconnect_max = 0.5

[sender.by_life]
route = "life"
sender_id = "DemoShop"

[sender.by_mts]
route = "mts"
sender_id = "DemoShop"
""")
    return path


def start_daemon(cfg_path: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "smppd.cli", "run", "-c", str(cfg_path)],
        stdout=open(log, "ab"), stderr=subprocess.STDOUT,
    )


@pytest.fixture
async def peers():
    portal = SimulatedPortal(rate=None)
    await portal.start()
    life = SmscSimulator(SimulatorConfig(system_id="LIFE", accounts={"smppd": "secret"}, outcomes=OUTCOMES, seed=1))
    mts = SmscSimulator(SimulatorConfig(system_id="MTS", accounts={"smppd": "secret"}, outcomes=OUTCOMES, seed=2))
    await life.start()
    await mts.start()
    yield portal, life, mts
    await life.stop()
    await mts.stop()
    await portal.stop()


async def test_kill_9_with_messages_queued_and_in_flight(tmp_path, peers, engine, database):
    """On each engine: what the shim answered 200 for was committed (SQLite: fsynced;
    PostgreSQL: the COMMIT returned, so a kill -9 of the daemon cannot take it back)."""
    portal, life, mts = peers
    cfg_path = write_config(tmp_path, portal, life, mts, database if engine == "postgresql" else None)
    cfg = config_mod.load(cfg_path)
    log = tmp_path / "daemon.log"
    proc = start_daemon(cfg_path, log)
    rig = Rig(tmp_path, portal, {"life": life, "mts": mts}, cfg)
    try:
        await wait_ready(cfg.daemon.socket_path, proc)
        await start_shim(rig)
        await life.stop()  # life:) is down: its messages stay queued in the store
        ids = []
        for i in range(30):
            code = ("by_life", "by_mts")[i % 2]
            b24_id, status, reply = await post(rig, code, f"+37533777{i:04d}", f"Crash test {i} " + "ю" * i)
            assert status == 200, reply
            ids.append(b24_id)
        os.kill(proc.pid, signal.SIGKILL)  # no unbind, no flush, no goodbye
        proc.wait(10)

        # the shim's spool keeps it (fsynced) and sends it when the daemon is back
        b24_id, status, reply = await post(rig, "by_mts", "+375337770999", "while the daemon is dead")
        assert status == 200 and reply["status"] == "spooled", reply
        ids.append(b24_id)

        await life.start()
        proc = start_daemon(cfg_path, log)
        await wait_ready(cfg.daemon.socket_path, proc)
        finals = await wait_final(rig, ids, timeout=30)
        assert len(finals) == 31
        for i in ids:
            assert portal.messages[i].regressions() == []
        life_numbers = {s.destination_addr for s in life.submitted}
        assert {f"37533777{i:04d}" for i in range(0, 30, 2)} <= life_numbers
    finally:
        if rig.shim_runner is not None:
            await rig.shim_runner.cleanup()
        if rig.rpc is not None:
            await rig.rpc.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert proc.returncode == 0, log.read_text()[-2000:]


async def test_a_crashed_route_stops_the_daemon_so_systemd_restarts_it(tmp_path, peers, monkeypatch):
    """A daemon whose route task died would look healthy while that queue never moves."""
    from structlog.testing import capture_logs

    from smppd.cli import run as service
    from smppd.daemon import Daemon

    portal, life, mts = peers
    cfg_path = write_config(tmp_path, portal, life, mts)
    original_start = Daemon.start

    async def start_then_break(self: Daemon) -> None:
        await original_start(self)

        class Broken:
            name = "broken"

            async def run(self) -> None:
                raise RuntimeError("a bug in a route")

        self.run_route(Broken())

    monkeypatch.setattr(Daemon, "start", start_then_break)
    with capture_logs() as logs:
        ok = await asyncio.wait_for(service.run_daemon(config_mod.load(cfg_path), str(cfg_path)), 20)
    assert ok is False, "exit non-zero: Restart=on-failure applies"
    [crash] = [e for e in logs if e["event"] == "daemon_task_crashed"]
    assert crash["task"] == "route-broken" and "a bug in a route" in crash["error"]
    assert any(e["event"] == "daemon_stopped" for e in logs), "it stopped cleanly, store closed"
