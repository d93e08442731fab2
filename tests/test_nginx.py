"""The shipped nginx site (deploy/nginx/smppd.conf) in real nginx, in front of the real shim.

The site file is used as shipped, with only what a test must change: the listen ports
(loopback), the certificate (a throwaway one from openssl), the log directory and the
upstream port. The TLS server block gets one extra plain-HTTP loopback listen so its own
locations are what the requests go through; ``nginx -t`` checks the TLS block as written.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import aiohttp
import pytest

from smppd.cli.demo import start_rig, stop_rig

pytestmark = pytest.mark.integration  # starts servers, processes or sockets (see tests/conftest.py)

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "deploy" / "nginx" / "smppd.conf"


def _tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.access(f"/usr/sbin/{name}", os.X_OK) else None)
    if path is None:
        if os.environ.get("SMPPD_REQUIRE_TOOLS"):
            pytest.fail(f"{name} is required in CI and is not installed")
        pytest.skip(f"{name} not installed (Debian: apt-get install {name})")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def site_for_test(text: str, *, upstream: int, http: int, tls: int, plain: int, cert: Path, key: Path,
                  logs: Path) -> str:
    """The shipped site with loopback ports, a throwaway certificate and a log directory of the test's."""
    replacements = [
        ("server 127.0.0.1:8080;", f"server 127.0.0.1:{upstream};"),
        ("listen 80;", f"listen 127.0.0.1:{http};"),
        ("listen [::]:80;", ""),
        ("listen 443 ssl http2;", f"listen 127.0.0.1:{tls} ssl http2;\n    listen 127.0.0.1:{plain};"),
        ("listen [::]:443 ssl http2;", ""),
        ("/etc/letsencrypt/live/sms.example.by/fullchain.pem", str(cert)),
        ("/etc/letsencrypt/live/sms.example.by/privkey.pem", str(key)),
        ("/var/log/nginx/", f"{logs}/"),
    ]
    for old, new in replacements:
        assert old in text, f"the site no longer has {old!r}: update this test"
        text = text.replace(old, new)
    return text


def main_conf(prefix: Path, site: Path) -> str:
    """An nginx.conf of the test's own: no daemon, one process, every path under ``prefix``."""
    return f"""
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/main.error.log info;
events {{ worker_connections 2048; }}
http {{
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    access_log {prefix}/logs/main.access.log;
    include {site};
}}
"""


def _nginx_files(tmp_path: Path, upstream: int) -> tuple[Path, dict[str, int]]:
    openssl = _tool("openssl")
    ports = {"http": _free_port(), "tls": _free_port(), "plain": _free_port()}
    prefix = tmp_path / "nginx"
    for d in ("logs", "tmp", "tls"):
        (prefix / d).mkdir(parents=True)
    cert, key = prefix / "tls" / "cert.pem", prefix / "tls" / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=sms.example.by", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    site = prefix / "smppd.conf"
    site.write_text(site_for_test(SITE.read_text(), upstream=upstream, cert=cert, key=key,
                                  logs=prefix / "logs", **ports))
    conf = prefix / "nginx.conf"
    conf.write_text(main_conf(prefix, site))
    return conf, ports


def _nginx_cmd(conf: Path, *extra: str) -> list[str]:
    prefix = conf.parent
    return [_tool("nginx"), "-p", f"{prefix}/", "-e", f"{prefix}/logs/startup.error.log", "-c", str(conf), *extra]


def test_the_site_with_its_tls_block_passes_nginx_t(tmp_path):
    conf, _ = _nginx_files(tmp_path, upstream=_free_port())
    done = subprocess.run(_nginx_cmd(conf, "-t"), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr


async def _wait_listening(port: int, proc: asyncio.subprocess.Process, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if proc.returncode is not None or asyncio.get_running_loop().time() > deadline:
                raise AssertionError("nginx did not start") from None
            await asyncio.sleep(0.05)


@pytest.fixture
async def rig(tmp_path):
    r = await start_rig(tmp_path / "rig", seed=5, portal_rate=None, http=True)
    yield r
    await stop_rig(r)


@pytest.fixture
async def nginx(tmp_path, rig):
    upstream = int(rig.shim_url.rsplit(":", 1)[1])
    conf, ports = _nginx_files(tmp_path, upstream)
    proc = await asyncio.create_subprocess_exec(*_nginx_cmd(conf), stdout=subprocess.DEVNULL,
                                                stderr=subprocess.PIPE)
    try:
        await _wait_listening(ports["plain"], proc)
        yield f"http://127.0.0.1:{ports['plain']}", conf.parent / "logs"
    finally:
        if proc.returncode is None:
            proc.terminate()  # SIGTERM: nginx's fast shutdown
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()


async def test_every_door_of_the_shim_is_routed_and_a_burst_is_stored_whole(rig, nginx):
    base, logs = nginx
    key = rig.config.shim.handler_key
    async with aiohttp.ClientSession() as http:
        # 600 posts at once from one address: nginx refuses none of them.
        forms = [rig.portal.create_message("by_life" if i % 2 else "by_mts", f"+3752912{i:05d}", f"burst {i}")
                 for i in range(600)]
        sem = asyncio.Semaphore(200)

        async def one(code: str, form: list[tuple[str, str]]) -> int:
            async with sem, http.post(f"{base}/bitrix24/{code}?key={key}", data=form) as resp:
                await resp.read()
                return resp.status

        statuses = await asyncio.gather(*(one(dict(form)["code"], form) for _, form in forms))
        assert statuses.count(200) == 600, {s: statuses.count(s) for s in set(statuses)}

        # The app's events and the providers' callbacks reach the shim (its JSON or text, not nginx's 404).
        async with http.post(f"{base}/bitrix24-app?key=wrong", data={"event": "ONAPPINSTALL"}) as resp:
            assert resp.status == 401 and (await resp.json())["error"] == "unauthorized"
        async with http.post(f"{base}/bitrix24-app?key={key}", data={"event": "ONAPPINSTALL"}) as resp:
            assert resp.status in (400, 403), await resp.text()
            assert resp.content_type == "application/json"
        for method in ("GET", "POST"):
            async with http.request(method, f"{base}/dlr/smsru?key={key}", data=None) as resp:
                assert resp.status != 404 and "nginx" not in await resp.text()
            async with http.request(method, f"{base}/dlr/smsru?key=wrong") as resp:
                assert resp.status == 401 and (await resp.json())["error"] == "unauthorized"
        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 200 and (await resp.json())["daemon"] == "ok"
        async with http.get(f"{base}/metrics") as resp:
            assert resp.status == 404
        async with http.get(f"{base}/bitrix24/by_life?key={key}") as resp:
            assert resp.status == 403  # limit_except: HANDLER posts only

        # Refusals nginx makes itself, and a 502 with the shim gone: the key must not be logged.
        async with http.post(f"{base}/bitrix24/by_life?key={key}", data=b"x" * 600_000) as resp:
            assert resp.status == 413
        await rig.shim_runner.cleanup()
        rig.shim_runner = None
        async with http.post(f"{base}/bitrix24/by_life?key={key}", data=forms[0][1]) as resp:
            assert resp.status == 502
        async with http.post(f"{base}/dlr/smsru?key={key}", data={"x": "1"}) as resp:
            assert resp.status == 502
    await asyncio.sleep(0.2)  # nginx writes its logs as it goes; give the last lines a moment

    access = (logs / "smppd.access.log").read_text()
    assert access.count('"POST /bitrix24/by_') >= 600 and " 502 " in access and " 413 " in access
    for path in logs.iterdir():
        text = path.read_text(errors="replace")
        assert key not in text, f"{path.name} holds the key"
        assert "?key=" not in text, f"{path.name} holds a query string with a key"
    assert re.search(r"upstream=\S+", access)
