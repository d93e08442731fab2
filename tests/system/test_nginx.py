"""The shipped nginx site (deploy/nginx/smppd.conf) in real nginx, in front of the real shim.

The site file is used as shipped, with only what a test must change: the listen ports
(loopback), the certificate (a throwaway one from openssl), the log directory and the
upstream port. The TLS server block gets one extra plain-HTTP loopback listen so its own
locations are what the requests go through; ``nginx -t`` checks the TLS block as written.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path

import aiohttp
import pytest

from smppd.cli.demo import start_rig, stop_rig

from tests.rigs.nginx_rig import free_port, main_conf, nginx_cmd, tool, wait_listening

pytestmark = pytest.mark.integration  # starts servers, processes or sockets (see tests/conftest.py)

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "deploy" / "nginx" / "smppd.conf"


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


def _nginx_files(tmp_path: Path, upstream: int) -> tuple[Path, dict[str, int]]:
    openssl = tool("openssl")
    ports = {"http": free_port(), "tls": free_port(), "plain": free_port()}
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


def test_the_site_with_its_tls_block_passes_nginx_t(tmp_path):
    conf, _ = _nginx_files(tmp_path, upstream=free_port())
    done = subprocess.run(nginx_cmd(conf, "-t"), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr


@pytest.fixture
async def rig(tmp_path):
    r = await start_rig(tmp_path / "rig", seed=5, portal_rate=None, http=True)
    yield r
    await stop_rig(r)


@pytest.fixture
async def nginx(tmp_path, rig):
    upstream = int(rig.shim_url.rsplit(":", 1)[1])
    conf, ports = _nginx_files(tmp_path, upstream)
    proc = await asyncio.create_subprocess_exec(*nginx_cmd(conf), stdout=subprocess.DEVNULL,
                                                stderr=subprocess.PIPE)
    try:
        await wait_listening(ports["plain"], proc)
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
