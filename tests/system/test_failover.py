"""The failover drill (bench/failover.py) in under a minute: two nodes on one throwaway
PostgreSQL, node A killed with SIGKILL mid-load. Nothing answered 200 is lost, no status
moves backwards, node B holds A's leases within 10 s, the SMSC never sees two nodes bound."""

from __future__ import annotations

import os

import pytest

from bench.failover import parser, run
from smppd.sims.postgresql import find_bindir

pytestmark = pytest.mark.integration


async def test_kill_9_of_node_a_loses_nothing_and_b_takes_over_within_10_s() -> None:
    if find_bindir() is None:
        if os.environ.get("SMPPD_REQUIRE_TOOLS") == "1":
            pytest.fail("PostgreSQL is not installed (Debian: apt-get install postgresql); SMPPD_REQUIRE_TOOLS=1")
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    args = parser().parse_args(["--rate", "50", "--duration", "16", "--kill-at", "6", "--timeout", "25"])
    r = await run(args)
    assert len(r["a_leases"]) == 3, r  # the route, the portal's outbox, the holds worker
    assert r["takeover_s"] < 10, r
    assert r["answered_200"] >= r["sent"] - 5, r  # only posts in flight to A at the kill go unanswered
    assert r["missing"] == 0 and r["final"] == r["answered_200"], r
    assert r["regressions"] == 0, r
    assert r["peak_binds"] == "1", r  # one route, one bind: never both nodes' at once
    assert r["posts_after_kill"] > 0 and r["smsc_p50_after_s"] < 20, r  # B sends what came after
