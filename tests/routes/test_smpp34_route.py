"""Issue 3 main paths against an SMSC we did not write: PyPI ``smpp34`` (Rust core), on loopback.

Receipts that beat their submit_sm_resp, throttling with 0x58, a final reject,
long messages as UDH parts, and a clean unbind on stop.  smpp34 accepts any
password and closes without unbind_resp (reference §11), so those paths are
covered against our own simulator in test_smpp_route.py.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

pytestmark = pytest.mark.integration  # starts servers, processes or sockets (see tests/conftest.py)

smpp34 = pytest.importorskip("smpp34")

from smppd.model import Status  # noqa: E402
from smppd.routes.smpp import SmppRoute  # noqa: E402
from smppd.store import Store  # noqa: E402

from tests.rigs.smpp_route_rig import RouteRig, route_config  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Smsc:
    """smpp34's server driven like an operator: ids, receipts, and a scripted reject list."""

    def __init__(self, port: int, *, dlr_delay: float, rejects: list[int] | None = None) -> None:
        self.server = smpp34.Server("127.0.0.1", port, system_id="SMPP34")
        self.dlr_delay = dlr_delay
        self.rejects = list(rejects or [])
        self.esme: Any = None
        self.accepted: list[Any] = []
        self.refused: list[int] = []
        self.next_id = 0x5A000000
        self.unbound = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        await self.server.start()
        self.task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        self.task.cancel()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(self.task, *self._tasks, return_exceptions=True)
        self.server.stop()

    async def _receipt(self, ev: Any, msg_id: str) -> None:
        await asyncio.sleep(self.dlr_delay)
        d = time.strftime("%y%m%d%H%M", time.gmtime())
        text = f"id:{msg_id} sub:001 dlvrd:001 submit date:{d} done date:{d} stat:DELIVRD err:000 text:"
        tlvs = [smpp34.Tlv(smpp34.TLV_RECEIPTED_MESSAGE_ID, msg_id.encode() + b"\0"),
                smpp34.Tlv(smpp34.TLV_MESSAGE_STATE, bytes([2]))]
        await self.esme.deliver_sm(ev.source_addr, text.encode(), source_addr=ev.destination_addr,
                                   esm_class=0x04, tlvs=tlvs)

    async def _loop(self) -> None:
        while True:
            ev = await self.server.next()
            if isinstance(ev, smpp34.Esme):
                self.esme = ev
            elif isinstance(ev, smpp34.SubmitSmEvent):
                if self.rejects:
                    status = self.rejects.pop(0)
                    self.refused.append(status)
                    ev.reject(status)
                    continue
                msg_id, self.next_id = format(self.next_id, "X"), self.next_id + 1
                ev.accept(msg_id)
                self.accepted.append(ev)
                if ev.registered_delivery & 0x03:
                    t = asyncio.create_task(self._receipt(ev, msg_id))
                    self._tasks.add(t)
                    t.add_done_callback(self._tasks.discard)
            elif isinstance(ev, smpp34.Unbound):
                self.unbound += 1


@pytest.fixture
async def interop(tmp_path):
    made: list[tuple[Smsc, RouteRig]] = []

    async def make(*, dlr_delay: float = 0.0, rejects: list[int] | None = None, **route: Any) -> tuple[Smsc, RouteRig]:
        port = free_port()
        smsc = Smsc(port, dlr_delay=dlr_delay, rejects=rejects)
        await smsc.start()
        store = Store(str(tmp_path / f"i{len(made)}.db"))
        await store.open()
        rig = RouteRig(store, None, SmppRoute(route_config(port, **route), store))  # type: ignore[arg-type]
        rig.start()
        made.append((smsc, rig))
        return smsc, rig

    yield make
    for smsc, rig in made:
        await rig.route.stop(timeout=0.5)
        if rig.task:
            rig.task.cancel()
            await asyncio.gather(rig.task, return_exceptions=True)
        await smsc.stop()
        await rig.store.close()


async def test_receipts_that_beat_their_resp_still_deliver(interop):
    smsc, rig = await interop(dlr_delay=0.0)  # smpp34 then usually sends the DLR before the resp
    ids = [await rig.send(f"m{i}") for i in range(30)]
    assert set((await rig.wait_final(ids)).values()) == {"delivered"}
    assert len(smsc.accepted) == 30
    assert (await rig.store.counts())["receipts_pending"] == 0


async def test_throttle_then_final_reject(interop):
    smsc, rig = await interop(dlr_delay=0.02, rejects=[smpp34.ESME_RTHROTTLED, smpp34.ESME_RINVDSTADR], window=1)
    throttled_then_ok = await rig.send("first")
    await rig.wait(lambda: len(smsc.refused) == 1)
    # "first" is resent after the throttle and gets the final reject; "second" goes through
    second = await rig.send("second")
    statuses = await rig.wait_final([throttled_then_ok, second])
    assert statuses == {throttled_then_ok: Status.FAILED, second: Status.DELIVERED}
    assert smsc.refused == [smpp34.ESME_RTHROTTLED, smpp34.ESME_RINVDSTADR]
    assert rig.route.connection.binds == 1


async def test_long_message_parts_reach_smpp34_with_one_reference(interop):
    smsc, rig = await interop(dlr_delay=0.01)
    body = "Ваш заказ готов к выдаче. " * 6
    mid = await rig.send(body)
    assert (await rig.wait_final([mid]))[mid] == "delivered"
    udhs = [bytes(ev.short_message[:6]) for ev in smsc.accepted]
    assert len(udhs) == (await rig.message(mid))["segments"] == 3
    assert {u[:4] for u in udhs} == {udhs[0][:4]} and sorted(u[5] for u in udhs) == [1, 2, 3]
    assert all(ev.esm_class & 0x40 and ev.data_coding == 8 for ev in smsc.accepted)


async def test_stop_unbinds(interop):
    smsc, rig = await interop()
    await rig.wait(lambda: rig.route.bound)
    await rig.route.stop(timeout=0.5)
    await rig.wait(lambda: smsc.unbound == 1)
    assert not rig.route.bound
