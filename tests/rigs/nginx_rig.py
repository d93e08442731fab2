"""Real nginx for the tests of the shipped sites (deploy/nginx, deploy/two-node): the tool,
a free loopback port, an nginx.conf of the test's own, the command line, the wait."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from pathlib import Path

import pytest


def tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.access(f"/usr/sbin/{name}", os.X_OK) else None)
    if path is None:
        if os.environ.get("SMPPD_REQUIRE_TOOLS"):
            pytest.fail(f"{name} is required in CI and is not installed")
        pytest.skip(f"{name} not installed (Debian: apt-get install {name})")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def nginx_cmd(conf: Path, *extra: str) -> list[str]:
    prefix = conf.parent
    return [tool("nginx"), "-p", f"{prefix}/", "-e", f"{prefix}/logs/startup.error.log", "-c", str(conf), *extra]


async def wait_listening(port: int, proc: asyncio.subprocess.Process, timeout: float = 10.0) -> None:
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
