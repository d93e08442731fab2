"""SMSC.ru on a bad day, through the real daemon and shim (issue 14 item 9).

Lost answers to sends while status.php fails for a while: before, 2-7 of 25 messages
went out twice, one after its callback had said delivered. Every message must reach
SMSC once and end with one final status, never moving backwards.
"""

from __future__ import annotations

import asyncio
import dataclasses
from types import MappingProxyType

import pytest

from smppd.ops import reload
from smppd.cli.demo import start_rig, stop_rig

from tests.rigs.e2e_rig import post, wait_final

pytestmark = pytest.mark.integration  # starts servers, processes or sockets (see tests/conftest.py)


@pytest.fixture
async def rig(tmp_path):
    r = await start_rig(tmp_path, seed=13, portal_rate=None, http=True)
    yield r
    await stop_rig(r)


async def test_25_messages_with_lost_answers_and_status_php_down_are_each_sent_once(rig):
    cfg = rig.config
    quick = dataclasses.replace(cfg.routes["smscru"], retry_min=0.05, retry_max=0.4)  # a short drill
    await reload.apply(rig.daemon, dataclasses.replace(cfg, routes=MappingProxyType({**cfg.routes, "smscru": quick})))
    sim = rig.http_sims["smscru"]
    sim.duplicate_window = 1.0  # SMSC's minute, shortened: a blind resend after it is a second SMS
    sim.fail_next("drop", "send", times=3)  # SMSC takes the batch; the answer never arrives
    sim.status_down_for(2.5)
    posted = []
    for i in range(25):
        b24_id, status, reply = await post(rig, "by_smsc", f"+37529{7100000 + i}", f"Заказ {i} готов")
        assert status == 200, reply
        posted.append(b24_id)
        if i % 5 == 4:
            await asyncio.sleep(0.3)  # several batches, so several lost answers
    finals = await wait_final(rig, posted, timeout=40.0)
    assert set(finals.values()) <= {"delivered", "undelivered", "failed"}
    await asyncio.sleep(1.5)  # past the shortened window: nothing more may go out
    assert sim.sent_twice() == []
    assert len(sim.sends) == 25
    for b24_id in posted:
        assert rig.portal.messages[b24_id].regressions() == []
    route = rig.daemon.routes["smscru"]
    assert route.stats["ambiguous"] >= 1 and route.stats["ambiguous_resent"] == 0
