"""Issue 14 items 1-5: binds and flow control against an SMSC on a bad day, on loopback.

Each test runs the real route, store and connections against the simulated SMSC in
the fault mode the issue describes (smppd/sims/smpp_policy.py).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from smppd.smpp.pdu import ESME_RSYSERR, ESME_RTHROTTLED, ESME_RX_T_APPN
from smppd.sims.smpp_policy import QueueFullBursts, ScriptedPolicy, SubmitVerdict

from tests.rigs.smpp_route_rig import rigs  # noqa: F401 (a fixture)

pytestmark = pytest.mark.integration  # starts servers, processes or sockets (see tests/conftest.py)



async def test_ten_smsc_unbinds_in_a_row_each_rebound_promptly(rigs, tmp_path):
    # 14.1: the back-off used to grow after every maintenance unbind (0.7, 1.3, 3.5, ... s)
    rig = await rigs(tmp_path, reconnect_min=0.2, reconnect_max=10.0)
    conn = rig.route.connection
    await rig.wait(lambda: conn.binds == 1)
    gaps = []
    for n in range(2, 12):
        await asyncio.sleep(0.05)  # the bind is up and working
        t0 = time.monotonic()
        await rig.smsc.unbind_all()
        await rig.wait(lambda: conn.binds == n, timeout=5)
        gaps.append(time.monotonic() - t0)
    assert max(gaps) < 1.5, gaps  # reconnect_min (0.2 s, jittered down) plus slack for a busy CPU; it doubled to 10 s
    mid = await rig.send()
    assert await rig.wait_final() == {mid: "delivered"}


async def test_stale_session_answering_already_bound_gets_few_binds_and_no_submit(rigs, tmp_path):
    # 14.2: 40 binds in 30 s and a window of submits into each closing socket, before
    rig = await rigs(tmp_path, sim={"stale_session": 1.5}, reconnect_min=0.02, reconnect_max=5.0,
                     bind_retry_min=0.2)
    ids = [await rig.send(f"m{i}") for i in range(5)]
    await asyncio.sleep(1.4)
    assert rig.smsc.bind_attempts <= 5, rig.smsc.bind_attempts
    assert rig.route.connection.binds == 0 and not rig.route.bound
    assert rig.smsc.submits_unbound == 0 and not rig.smsc.submitted
    statuses = await rig.wait_final(ids, timeout=10)
    assert set(statuses.values()) == {"delivered"}
    assert rig.smsc.submits_unbound == 0 and len(rig.smsc.submitted) == 5


async def test_queue_full_bursts_pause_and_resume_at_the_rate_before(rigs, tmp_path):
    # 14.3: one queue-full every 20 submits, 0.3 s blocked each time, 100/s cap
    policy = QueueFullBursts(every=20, blocked=0.3)
    rig = await rigs(tmp_path, policy=policy, throughput=100, window=10)
    n = 100
    t0 = time.monotonic()
    for i in range(n):
        await rig.send(f"m{i}")
    statuses = await rig.wait_final(timeout=30)
    elapsed = time.monotonic() - t0
    assert set(statuses.values()) == {"delivered"} and len(rig.smsc.submitted) == n, "each sent once"
    possible = n / 100 + policy.bursts * 0.3
    assert n / elapsed >= 0.6 * n / possible, (elapsed, possible)  # the bench asks 70 %, on a quiet CPU
    assert rig.route.status()["rate_cap"] == 100, "queue-full never cut the rate"
    assert rig.route.connection.binds == 1


async def test_throttle_cuts_the_rate_then_recovers_within_seconds(rigs, tmp_path):
    policy = ScriptedPolicy([SubmitVerdict(status=ESME_RTHROTTLED)])
    rig = await rigs(tmp_path, policy=policy, throughput=40, throttle_recovery=0.5)
    mid = await rig.send()
    assert await rig.wait_final() == {mid: "delivered"}
    assert rig.route.status()["rate_cap"] == 20, "halved"
    await asyncio.sleep(1.6)  # hold (1 s) + recovery (0.5 s)
    await rig.send()
    await rig.wait_final()
    assert rig.route.status()["rate_cap"] == 40 and rig.route.status()["window"] == 10


async def test_graceful_stop_answers_every_received_deliver_sm_before_unbind(rigs, tmp_path):
    # 14.4: receipts whose store write was under way went unanswered when the unbind went out
    rig = await rigs(tmp_path, window=20)
    store_apply = rig.store.match_receipts

    def slow_apply(*args):
        async def later():
            await asyncio.sleep(0.3)
            return await store_apply(*args)
        return asyncio.ensure_future(later())

    rig.store.match_receipts = slow_apply
    for i in range(20):
        await rig.send(f"m{i}")
    await rig.wait(lambda: rig.smsc.receipts_sent >= 10, timeout=5)
    await rig.route.stop(timeout=3.0)
    assert rig.smsc.unanswered_at_unbind == 0
    assert rig.smsc.receipts_acked >= 10


async def test_temporary_errors_are_retried_a_bounded_number_of_times(rigs, tmp_path, monkeypatch):
    # 14.5: a part refused with 0x08 for ever used to be resent for ever
    monkeypatch.setattr("smppd.routes.policy.submit.TEMPORARY_RETRY_DELAY", 0.01)
    policy = ScriptedPolicy([], then=SubmitVerdict(status=ESME_RSYSERR))
    rig = await rigs(tmp_path, policy=policy, temporary_retries=3)
    mid = await rig.send()
    assert await rig.wait_final() == {mid: "failed"}
    assert len(rig.smsc.rejected) == 4, "the first send and three retries"
    assert "ESME_RSYSERR" in (await rig.message(mid))["reason"]


async def test_temporary_errors_are_retried_for_a_bounded_time(rigs, tmp_path, monkeypatch):
    monkeypatch.setattr("smppd.routes.policy.submit.TEMPORARY_RETRY_DELAY", 0.05)
    policy = ScriptedPolicy([], then=SubmitVerdict(status=ESME_RX_T_APPN))
    rig = await rigs(tmp_path, policy=policy, temporary_retries=1000, temporary_retry_age=0.4)
    mid = await rig.send()
    assert await rig.wait_final() == {mid: "failed"}
    assert 3 <= len(rig.smsc.rejected) <= 12
    assert "ESME_RX_T_APPN" in (await rig.message(mid))["reason"]
