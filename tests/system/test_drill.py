"""The no-loss drill (bench/drill.py) at small scale: real daemon and shim processes on
sockets passed as systemd passes them, hurt while posts come in; 0 missing is the bar."""

from __future__ import annotations

import pytest

from bench.drill import parser, run

pytestmark = pytest.mark.integration


async def test_restart_kill_stop_and_shim_restart_lose_nothing():
    args = parser().parse_args(["--rate", "50", "--duration", "8", "--restarts", "1", "--kills", "1",
                                "--stop", "2", "--shim-restarts", "1", "--timeout", "90"])
    r = await run(args)
    kinds = [what.split()[1] for _, what in r["events"]]
    assert kinds.count("SIGTERM") == 2 and "kill" in kinds and "SIGSTOP" in kinds, r["events"]
    assert r["sent"] == 400 and r["no_answer"] == 0 and r["answered_other"] == 0, r
    assert r["answered_200"] == 400 and r["spooled"] > 0, r  # the SIGSTOP made the shim spool
    assert r["missing"] == 0 and r["final"] == 400 and r["at_smsc"] == 400, r
    assert r["regressions"] == 0, r
