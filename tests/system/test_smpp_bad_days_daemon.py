"""Issue 14 through the whole daemon: Bitrix24 form -> shim -> daemon -> an SMSC on a bad day.

The life:) SMSC here still holds a stale session for a second after start (ESME_RALYBND),
issues hex resp ids with decimal receipt ids, sends one receipt per long message (the
last part's), unbinds when it likes, and the daemon is stopped while receipts are being
stored. The route's config is the default but for multipart_receipts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from types import MappingProxyType

from structlog.testing import capture_logs

from smppd.sims.bitrix24 import SimulatedPortal
from smppd.cli.demo import OUTCOMES, Rig, make_config, start_daemon, start_shim, stop_rig
from smppd.sims.smpp import SimulatorConfig, SmscSimulator

from tests.rigs.e2e_rig import post, wait_final
import pytest

pytestmark = pytest.mark.integration  # starts servers, processes or sockets (see tests/conftest.py)

LONG = "Your order 42 is ready for pickup at the shop on Main street. " * 3  # 3 parts


async def start(tmp_path) -> Rig:
    portal = SimulatedPortal(rate=None)
    await portal.start()
    smscs = {
        "life": SmscSimulator(SimulatorConfig(system_id="LIFE", accounts={"smppd": "secret"}, outcomes=OUTCOMES,
                                              id_format="hex", receipt_ids_decimal=True, seed=5,
                                              stale_session=1.0, long_receipts="last")),
        "mts": SmscSimulator(SimulatorConfig(system_id="MTS", accounts={"smppd": "secret"}, id_format="dec")),
    }
    for smsc in smscs.values():
        await smsc.start()
    cfg = make_config(tmp_path, portal, smscs, handler_key=secrets.token_urlsafe(24))
    life = dataclasses.replace(cfg.routes["life"], receipt_id_base="auto", multipart_receipts="last",
                               bind_retry_min=0.3, reconnect_min=0.2, reconnect_max=5.0)
    cfg = dataclasses.replace(cfg, routes=MappingProxyType({**cfg.routes, "life": life}))
    rig = Rig(tmp_path, portal, smscs, cfg)
    await start_daemon(rig)
    await start_shim(rig)
    return rig


async def test_a_bad_day_at_the_smsc_through_the_daemon(tmp_path):
    with capture_logs() as logs:
        rig = await start(tmp_path)
        try:
            life = rig.smscs["life"]
            posted = []
            for i in range(6):
                b24_id, status, _ = await post(rig, "by_life", "+375291234567", LONG if i % 2 else f"code {i}")
                assert status == 200
                posted.append(b24_id)
            finals = await wait_final(rig, posted, timeout=20)
            assert all(s in ("delivered", "undelivered", "failed") for s in finals.values())
            assert life.bind_attempts <= 4, "a stale session is not hammered"
            assert life.submits_unbound == 0 and life.rejected == []

            route = rig.daemon.routes["life"]
            for n in range(3):  # maintenance unbinds: each rebound promptly
                binds = route.binds_made
                t0 = time.monotonic()
                await life.unbind_all()
                while route.binds_made == binds:
                    assert time.monotonic() - t0 < 2.0, "rebound within 2 s"
                    await asyncio.sleep(0.02)

            more = []
            for i in range(10):
                b24_id, status, _ = await post(rig, "by_life", "+375291234567", f"more {i}")
                more.append(b24_id)
            await asyncio.sleep(0.05)
        finally:
            await stop_rig(rig)  # a graceful stop while receipts arrive
    assert life.unanswered_at_unbind == 0, "every deliver_sm answered before unbind"
    warnings = [e for e in logs if e["event"] == "smpp_receipt_id_base_mismatch"]
    assert len(warnings) == 1 and 'resp_id_base = "hex"' in warnings[0]["advice"]
