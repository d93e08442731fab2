"""The real shim and daemon processes (``smppd run``, ``smppd-shim``) behind one config
file, with a simulated portal, SMSC and SMS.ru in this process: what the door tests
(tests/shim/test_doors.py) and the attack drill (bench/attacks.py) drive from outside, as
Bitrix24, a provider or an attacker would.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from smppd.sims.bitrix24 import SimulatedPortal
from smppd.sims.smsc import SmscSimulator as SmscRuSimulator
from smppd.sims.smsru import SmsRuSimulator
from smppd.sims.smpp import SimulatorConfig, SmscSimulator

KEY = "door-key-" + "k" * 24
ROUTE_KEY = "route-key-" + "r" * 24


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DoorsRig:
    tmp: Path
    portal: SimulatedPortal
    smsc: SmscSimulator
    smsru: SmsRuSimulator
    smscru: SmscRuSimulator
    shim_port: int
    shim_metrics: int
    daemon_metrics: int
    key: str = KEY
    route_key: str = ROUTE_KEY
    shim_extra: str = ""
    smsc_callback: str = ""  # [route.smsc] callback_line: "" = the route has no callback_key
    procs: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)
    sent: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)  # every (url, form) posted
    http: aiohttp.ClientSession | None = None

    @property
    def conf(self) -> Path:
        return self.tmp / "config.toml"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.shim_port}"

    def handler_url(self, code: str = "by_life", key: str | None = None) -> str:
        return f"{self.url}/bitrix24/{code}?key={self.key if key is None else key}"

    def app_url(self, key: str | None = None) -> str:
        return f"{self.url}/bitrix24-app?key={self.key if key is None else key}"

    def dlr_url(self, key: str | None = None) -> str:
        return f"{self.url}/dlr/smsru?key={self.route_key if key is None else key}"

    def smsc_dlr_url(self, key: str | None) -> str:
        return f"{self.url}/dlr/smsc" + ("" if key is None else f"?key={key}")

    def write_config(self) -> None:
        self.conf.write_text(f"""
[daemon]
socket = "{self.tmp / 'smppd.sock'}"
database = "{self.tmp / 'smppd.db'}"
metrics = "127.0.0.1:{self.daemon_metrics}"

[shim]
listen = "127.0.0.1:{self.shim_port}"
handler_key = "{self.key}"
metrics = "127.0.0.1:{self.shim_metrics}"
{self.shim_extra}

{self.portal.portal_toml()}
[route.life]
host = "127.0.0.1"
port = {self.smsc.port}
system_id = "smppd"
password = "secret"
reconnect_min = 0.2

[route.smsru]
kind = "smsru"
api_id = "{self.smsru.api_id}"
base_url = "{self.smsru.base_url}"
callback_key = "{self.route_key}"
retry_min = 0.2
poll_after = 600

[route.smsc]
kind = "smsc"
login = "{self.smscru.login}"
password = "{self.smscru.psw}"
base_url = "{self.smscru.base_url}sys/"
batch_interval = 0.0
retry_min = 0.2
poll_after = 600
{self.smsc_callback}

[sender.by_life]
route = "life"
sender_id = "DemoShop"

[sender.by_smsru]
route = "smsru"
sender_id = "DemoShop"

[sender.by_smsc]
route = "smsc"
sender_id = "DemoShop"
""")

    async def _start(self, name: str, *args: str) -> None:
        log = open(self.tmp / f"{name}.log", "ab")
        self.procs[name] = await asyncio.create_subprocess_exec(
            sys.executable, *args, "-c", str(self.conf), stdout=log, stderr=log, env={**os.environ})
        log.close()

    async def start(self) -> None:
        self.write_config()
        await self._start("daemon", "-m", "smppd.cli", "run")
        await _wait_for(lambda: (self.tmp / "smppd.sock").exists(), "daemon socket")
        await self._start("shim", "-m", "shim")
        self.http = aiohttp.ClientSession()
        await _wait_for(self._healthy, "shim healthz")
        await _wait_for(lambda: self.smsc.binds >= 1, "SMPP bind")

    async def _healthy(self) -> bool:
        assert self.http is not None
        try:
            async with self.http.get(f"{self.url}/healthz") as r:
                return r.status == 200
        except aiohttp.ClientError:
            return False

    async def hup_shim(self, **changes: str) -> None:
        """Rewrite the config with ``changes`` (key, route_key, shim_extra), SIGHUP the shim,
        and wait until its log says it took them."""
        for name, value in changes.items():
            setattr(self, name, value)
        self.write_config()
        log = self.tmp / "shim.log"
        before = log.read_bytes().count(b"config_reloaded")
        self.procs["shim"].send_signal(signal.SIGHUP)
        await _wait_for(lambda: log.read_bytes().count(b"config_reloaded") > before, "shim reload")

    async def hup_daemon(self, **changes: str) -> None:
        """The same for the daemon (``[shim] posts_without_auth`` is read by its intake)."""
        for name, value in changes.items():
            setattr(self, name, value)
        self.write_config()
        log = self.tmp / "daemon.log"
        before = log.read_bytes().count(b"config_reloaded")
        self.procs["daemon"].send_signal(signal.SIGHUP)
        await _wait_for(lambda: log.read_bytes().count(b"config_reloaded") > before, "daemon reload")

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.close()
        for name in ("shim", "daemon"):
            p = self.procs.get(name)
            if p is not None and p.returncode is None:
                p.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(p.wait(), 15)
                except asyncio.TimeoutError:
                    p.kill()
                    await p.wait()

    # --- what an outside caller does -------------------------------------------------

    async def post(self, url: str, form: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        assert self.http is not None
        self.sent.append((url, list(form.items() if isinstance(form, dict) else form)))
        async with self.http.post(url, data=form, headers=headers) as r:
            text = await r.text()
            try:
                import json

                return r.status, json.loads(text)
            except ValueError:
                return r.status, text

    def genuine(self, to: str = "+375291234567", text: str = "Ваш заказ готов", code: str = "by_life",
                **kw: Any) -> tuple[str, list[tuple[str, str]]]:
        """A post as Bitrix24 sends it (the portal registers the message first)."""
        return self.portal.create_message(code, to, text, **kw)

    async def smsc_id(self, b24_id: str, timeout: float = 20.0) -> str:
        """The smsc_id of the message's first segment, once its route has one."""
        deadline = time.monotonic() + timeout
        while True:
            with self.db() as conn:
                row = conn.execute("SELECT s.smsc_id FROM segment s JOIN message m ON m.id = s.row_id"
                                   " WHERE m.b24_id=? AND s.smsc_id IS NOT NULL", (b24_id,)).fetchone()
            if row:
                return str(row[0])
            if time.monotonic() > deadline:
                raise TimeoutError(f"message {b24_id}: no SMSC id after {timeout} s")
            await asyncio.sleep(0.02)

    def log(self, process: str) -> str:
        """The process's log so far; read while it may be writing, so a character cut in
        half at the end does not fail the reader."""
        return (self.tmp / f"{process}.log").read_bytes().decode("utf-8", "replace")

    async def log_has(self, process: str, text: str) -> None:
        """Wait for ``text`` in the process's log (lines are written in batches, smppd/ops/logs.py)."""
        await _wait_for(lambda: text in self.log(process), f"{text!r} in {process}.log", timeout=5.0)

    def status(self, b24_id: str) -> str | None:
        with self.db() as conn:
            row = conn.execute("SELECT status FROM message WHERE b24_id=?", (b24_id,)).fetchone()
        return row[0] if row else None

    def signed_smsru(self, records: list[str]) -> dict[str, str]:
        form = {f"data[{i}]": r for i, r in enumerate(records)}
        form["hash"] = hashlib.sha256((self.smsru.api_id + "".join(records)).encode()).hexdigest()
        return form

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.tmp / 'smppd.db'}?mode=ro", uri=True)

    def stored(self, b24_id: str) -> bool:
        with self.db() as conn:
            return conn.execute("SELECT count(*) FROM message WHERE b24_id=?", (b24_id,)).fetchone()[0] > 0

    def messages(self) -> int:
        with self.db() as conn:
            return int(conn.execute("SELECT count(*) FROM message").fetchone()[0])

    async def metrics(self, port: int) -> str:
        assert self.http is not None
        async with self.http.get(f"http://127.0.0.1:{port}/metrics") as r:
            return await r.text()


async def _wait_for(check: Any, what: str, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        ok = check()
        if asyncio.iscoroutine(ok):
            ok = await ok
        if ok:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"{what}: not ready after {timeout} s")
        await asyncio.sleep(0.05)


async def start_doors(tmp: Path | None = None, *, shim_extra: str = "") -> DoorsRig:
    tmp = tmp or Path(tempfile.mkdtemp(prefix="smppd-doors-"))
    portal = SimulatedPortal(rate=None)
    await portal.start()
    smsc = SmscSimulator(SimulatorConfig(system_id="LIFE", accounts={"smppd": "secret"}))
    await smsc.start()
    smsru = SmsRuSimulator(deliver_after=0.05)
    await smsru.start()
    smscru = SmscRuSimulator(deliver_after=3600.0)  # the tests speak for SMSC.ru's callbacks themselves
    await smscru.start()
    rig = DoorsRig(tmp, portal, smsc, smsru, smscru, free_port(), free_port(), free_port(), shim_extra=shim_extra)
    smsru.callback_url = rig.dlr_url()
    try:
        await rig.start()
    except BaseException:
        await stop_doors(rig)
        raise
    return rig


async def stop_doors(rig: DoorsRig) -> None:
    try:
        await rig.stop()
    finally:
        await rig.smsru.stop()
        await rig.smscru.stop()
        await rig.smsc.stop()
        await rig.portal.stop()
