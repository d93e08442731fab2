"""Helpers for tests that run smppd in a child process."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

from smppd.rpc import RpcClient, RpcUnavailable


async def wait_ready(socket_path: str, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    client = RpcClient(socket_path, timeout=1.0)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, "daemon exited"
            try:
                await client.call("ping")
                return
            except RpcUnavailable:
                await asyncio.sleep(0.1)
        raise AssertionError("daemon did not become ready")
    finally:
        await client.close()


async def smppd_cli(rig, *args: str) -> tuple[int, str, str]:
    """The real command in a child process; the daemon keeps serving on this loop meanwhile."""
    cfg = rig.tmp / "cli.toml"
    cfg.write_text(f'[daemon]\nsocket = "{rig.config.daemon.socket_path}"\n'
                   f'database = "{rig.config.daemon.database}"\n')
    p = await asyncio.create_subprocess_exec(sys.executable, "-m", "smppd.cli", *args, "-c", str(cfg),
                                             stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(p.communicate(), 60)
    return p.returncode or 0, out.decode(), err.decode()
