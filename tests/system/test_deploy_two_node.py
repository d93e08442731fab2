"""deploy/two-node: the nginx site over two nodes' shims, and the two node configs.

The two-node site is the single-node site with two changes only (held here, so a fix to
one reaches the other); in real nginx a post reaches node B when node A refuses
connections, and a post node A took is never passed on to B (it may be stored already).
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from aiohttp import web

from smppd.config import load
from smppd.store import is_postgresql
from smppd.store.postgres import expand

from tests.rigs.nginx_rig import free_port, main_conf, nginx_cmd, tool, wait_listening

ROOT = Path(__file__).resolve().parents[2]
TWO = ROOT / "deploy" / "two-node"
SINGLE = ROOT / "deploy" / "nginx" / "smppd.conf"

UPSTREAM_SINGLE = """upstream smppd_shim {
    server 127.0.0.1:8080;            # [shim] listen in /etc/smppd/config.toml
    keepalive 16;
}"""
NEXT_SINGLE = """    # Never send a post a second time: the shim may have stored it already.
    proxy_next_upstream off;"""


UPSTREAM_TWO = """# Two nodes (README "Two machines"): each node's shim, on the private network. A node
# that refuses connections is skipped for fail_timeout; posts go to the other.
upstream smppd_shim {
    server 10.0.0.1:8080 max_fails=1 fail_timeout=5s;    # node A: [shim] listen in node-a.toml
    server 10.0.0.2:8080 max_fails=1 fail_timeout=5s;    # node B
    keepalive 16;
}"""
NEXT_TWO = """    # A post goes to the other node only when this one could not be reached: nginx never
    # passes a POST on once it was sent (no "non_idempotent"), so nothing is sent twice.
    proxy_next_upstream error timeout;
    proxy_next_upstream_tries 2;
    proxy_connect_timeout 2s;"""


def test_the_two_node_site_differs_from_the_single_site_in_the_upstream_and_next_upstream_only() -> None:
    single = SINGLE.read_text().split("\n\n", 1)[1]  # past the header comment
    two = (TWO / "nginx.conf").read_text().split("\n\n", 1)[1]
    assert UPSTREAM_SINGLE in single and NEXT_SINGLE in single
    assert UPSTREAM_TWO in two and NEXT_TWO in two
    assert two.replace(UPSTREAM_TWO, UPSTREAM_SINGLE).replace(NEXT_TWO, NEXT_SINGLE) == single


def test_the_node_configs_differ_in_node_and_listen_only(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = (TWO / "node-a.toml").read_text().splitlines(), (TWO / "node-b.toml").read_text().splitlines()
    differing = [(x, y) for x, y in zip(a, b) if x != y]
    assert len(a) == len(b) and [x.split("=")[0].strip() for x, _ in differing[1:]] == ["node", "listen"]
    for name, value in {"SMPPD_DB_PASSWORD": "pw", "SMPPD_HANDLER_KEY": "k" * 32, "SMPPD_APP_SECRET": "s",
                        "SMPPD_LIFE_PASSWORD": "p"}.items():
        monkeypatch.setenv(name, value)
    ca, cb = load(TWO / "node-a.toml"), load(TWO / "node-b.toml")
    assert (ca.daemon.node, cb.daemon.node) == ("a", "b")
    assert ca.daemon.database == cb.daemon.database
    assert is_postgresql(ca.daemon.database)  # so each daemon runs as a node of several
    assert expand(ca.daemon.database) == "postgresql://smppd:pw@db.internal:5432/smppd?sslmode=require"
    assert ca.routes == cb.routes and ca.senders == cb.senders


async def _upstream(port: int, hits: list[str], name: str, *, hang_up: bool = False) -> web.AppRunner:
    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        hits.append(name)
        if hang_up:  # took the post, then died before answering
            assert request.transport is not None
            request.transport.abort()
            await asyncio.sleep(1)
        return web.json_response({"ok": name})

    app = web.Application()
    app.router.add_post("/bitrix24/{code}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


@pytest.mark.integration
async def test_nginx_sends_a_post_to_node_b_when_a_refuses_and_never_resends_one_a_took(tmp_path: Path) -> None:
    import aiohttp

    openssl, nginx = tool("openssl"), tool("nginx")
    prefix = tmp_path / "nginx"
    for d in ("logs", "tmp", "tls"):
        (prefix / d).mkdir(parents=True)
    cert, key = prefix / "tls" / "cert.pem", prefix / "tls" / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=sms.example.by", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True,
                   timeout=60)
    port_a, port_b, http, tls, plain = (free_port() for _ in range(5))
    text = (TWO / "nginx.conf").read_text()
    for old, new in [("server 10.0.0.1:8080", f"server 127.0.0.1:{port_a}"),
                     ("server 10.0.0.2:8080", f"server 127.0.0.1:{port_b}"),
                     ("listen 80;", f"listen 127.0.0.1:{http};"), ("listen [::]:80;", ""),
                     ("listen 443 ssl http2;", f"listen 127.0.0.1:{tls} ssl http2;\n    listen 127.0.0.1:{plain};"),
                     ("listen [::]:443 ssl http2;", ""),
                     ("/etc/letsencrypt/live/sms.example.by/fullchain.pem", str(cert)),
                     ("/etc/letsencrypt/live/sms.example.by/privkey.pem", str(key)),
                     ("/var/log/nginx/", f"{prefix}/logs/")]:
        assert old in text, old
        text = text.replace(old, new)
    site = prefix / "site.conf"
    site.write_text(text)
    conf = prefix / "nginx.conf"
    conf.write_text(main_conf(prefix, site))
    assert nginx
    proc = await asyncio.create_subprocess_exec(*nginx_cmd(conf), stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL)
    hits: list[str] = []
    runners = []
    try:
        await wait_listening(plain, proc)
        url = f"http://127.0.0.1:{plain}/bitrix24/SMS?key=k"
        runners.append(await _upstream(port_b, hits, "b"))
        async with aiohttp.ClientSession() as http_client:
            # node A reads a post, then dies before answering: nginx must not pass it on to B
            runners.append(await _upstream(port_a, hits, "a", hang_up=True))
            statuses = []
            for _ in range(4):
                async with http_client.post(url, data=b"x=1", headers={"Host": "sms.example.by"}) as r:
                    statuses.append(r.status)
            assert hits.count("a") >= 1 and len(hits) == 4, hits  # A was tried; no post reached both
            assert statuses.count(502) == hits.count("a")
            # node A is gone (nothing listens on its port): every post lands on B
            await runners.pop().cleanup()
            hits.clear()
            for _ in range(4):
                async with http_client.post(url, data=b"x=1", headers={"Host": "sms.example.by"}) as r:
                    assert r.status == 200 and (await r.json()) == {"ok": "b"}
            assert hits == ["b"] * 4
    finally:
        for r in runners:
            await r.cleanup()
        proc.terminate()
        await proc.wait()
