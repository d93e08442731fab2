"""Issue 3: `smppd run` on SIGTERM unbinds from its SMSC and exits 0 (a real process)."""

from __future__ import annotations

import asyncio
import signal
import sys
import time

from structlog.testing import capture_logs

from smppd.sims.smpp import SimulatorConfig, SmscSimulator
import pytest

pytestmark = pytest.mark.integration  # starts servers, processes or sockets (see tests/conftest.py)

CONFIG = """
[daemon]
socket = "{tmp}/smppd.sock"
database = "{tmp}/smppd.db"

[shim]
listen = "127.0.0.1:0"
handler_key = "test-handler-key-0123456789abcdef"

[route.life]
host = "127.0.0.1"
port = {port}
system_id = "smppd"
password = "secret"
binds = 2
reconnect_min = 0.05

[sender.by_life]
route = "life"
sender_id = "MyShop"
"""


async def test_sigterm_unbinds_every_bind_and_exits_cleanly(tmp_path):
    smsc = SmscSimulator(SimulatorConfig())
    await smsc.start()
    cfg = tmp_path / "config.toml"
    cfg.write_text(CONFIG.format(tmp=tmp_path, port=smsc.port))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; from smppd.cli.main import main; sys.exit(main())", "run", "-c", str(cfg),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while smsc.binds < 2:
            assert proc.returncode is None and time.monotonic() < deadline, "daemon did not bind"
            await asyncio.sleep(0.02)
        with capture_logs() as logs:
            proc.send_signal(signal.SIGTERM)
            rc = await asyncio.wait_for(proc.wait(), 10)
        assert rc == 0
        unbinds = [e for e in logs if e["event"] == "smsc.unbound"]
        assert len(unbinds) == 2, "each bind sent unbind and got its unbind_resp"
        assert smsc.binds == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await smsc.stop()
