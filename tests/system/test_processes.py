"""The two real processes, as systemd runs them: notify socket, signals, JSON logs, metrics ports."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys

import aiohttp

from smppd.sims.bitrix24 import SimulatedPortal
from smppd.sims.smpp import SimulatorConfig, SmscSimulator

from tests.rigs.config_rig import config_toml
import pytest

pytestmark = pytest.mark.integration  # starts servers, processes or sockets (see tests/conftest.py)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _frozen(metrics_text: str) -> float:
    line = next(x for x in metrics_text.splitlines() if x.startswith("smppd_heap_frozen_objects "))
    return float(line.split()[1])


async def test_daemon_and_shim_processes(tmp_path, engine, database):
    """The daemon and the shim as systemd starts them, on each engine."""
    portal = SimulatedPortal(rate=None)
    await portal.start()
    smsc = SmscSimulator(SimulatorConfig(system_id="LIFE", accounts={"smppd": "secret"}))
    await smsc.start()
    shim_port, daemon_metrics, shim_metrics = free_port(), free_port(), free_port()
    text = config_toml(tmp_path, portal, smsc, throughput=0)
    text = text.replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{shim_port}"\nmetrics = "127.0.0.1:{shim_metrics}"')
    text = text.replace('database = ', f'metrics = "127.0.0.1:{daemon_metrics}"\ndatabase = ', 1)
    text = text.replace('handler_key = "a-handler-key-of-enough-length-000"', 'handler_key = "${SMPPD_TEST_KEY}"')
    if engine == "postgresql":
        text = text.replace(f'database = "{tmp_path / "smppd.db"}"', f'database = "{database}"', 1)
        text = text.replace('[shim]\n', f'[shim]\nspool_dir = "{tmp_path / "shim-spool"}"\n', 1)
    conf = tmp_path / "config.toml"
    conf.write_text(text)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.setblocking(False)
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify"), "SMPPD_TEST_KEY": "k" * 32}
    loop = asyncio.get_running_loop()

    async def state(want: str) -> None:
        while True:
            msg = (await asyncio.wait_for(loop.sock_recv(notify, 4096), 10)).decode()
            if msg.startswith(want):
                return

    async def start(*args: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, *args, "-c", str(conf), env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)

    daemon = await start("-m", "smppd.cli", "run")
    shim = None
    try:
        await state("READY=1")
        shim = await start("-m", "shim")
        await state("READY=1")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{shim_port}/healthz") as r:
                assert r.status == 200 and (await r.json())["daemon"] == "ok"
            async with http.post(f"http://127.0.0.1:{shim_port}/bitrix24/by_life?key=wrong", data={}) as r:
                assert r.status == 401
            async with http.get(f"http://127.0.0.1:{shim_metrics}/metrics") as r:
                body = await r.text()
            assert 'smppd_shim_requests_total{http_status="401",outcome="unauthorized"} 1.0' in body
            assert _frozen(body) > 1000  # start-up's objects left the collector's way (ops/heap.py)
            async with http.get(f"http://127.0.0.1:{daemon_metrics}/metrics") as r:
                body = await r.text()
                assert r.status == 200 and "smppd_bind_up" in body
            assert _frozen(body) > 1000
        daemon.send_signal(signal.SIGHUP)
        await state("RELOADING=1")
        await state("READY=1")
        shim.send_signal(signal.SIGTERM)
        await state("STOPPING=1")
        assert await asyncio.wait_for(shim.wait(), 10) == 0
        daemon.send_signal(signal.SIGTERM)
        await state("STOPPING=1")
        assert await asyncio.wait_for(daemon.wait(), 15) == 0
        out = (await daemon.stdout.read()).decode()
        lines = [json.loads(line) for line in out.splitlines()]  # not a terminal: JSON lines
        events = [e["event"] for e in lines]
        assert "daemon_ready" in events and "config_reloaded" in events and events[-1] == "daemon_stopped"
        assert "k" * 32 not in out and "secret" not in out
    finally:
        for p in (daemon, shim):
            if p is not None and p.returncode is None:
                p.kill()
                await p.wait()
        notify.close()
        await smsc.stop()
        await portal.stop()
