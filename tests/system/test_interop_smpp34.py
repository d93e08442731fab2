"""Interop: our ESME against an SMSC we did not write (`smpp34` from PyPI, Rust core).

Passing against our own simulator proves little about the wire format if
both sides share a misunderstanding; smpp34 shares none of our code.
Its known limits (reference/smpp.md §11): any password binds, and a DLR sent
right after accept() usually beats the submit_sm_resp, which is exactly the
"receipt before resp" case we must handle.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
import smpp34

from smppd import text
from smppd.sims.bitrix24 import SimulatedPortal
from smppd.cli.demo import Rig, make_config, start_daemon, start_shim, stop_rig

from tests.rigs.e2e_rig import post, wait_final

pytestmark = pytest.mark.integration  # starts servers, processes or sockets (see tests/conftest.py)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Smpp34Smsc:
    """smpp34's server with a receipt policy, per reference/smpp.md §11."""

    def __init__(self, port: int, *, stat: str = "DELIVRD", state: int = 2, dlr_delay: float = 0.05) -> None:
        self.port = port
        self.stat, self.state, self.dlr_delay = stat, state, dlr_delay
        self.submits: list[smpp34.SubmitSmEvent] = []
        self.binds: list[str] = []
        self._next_id = 0x5A000000
        self._task: asyncio.Task | None = None
        self._esmes: dict = {}  # by session id: a receipt goes back on the bind its submit came on
        self._receipts: set[asyncio.Task] = set()

    async def start(self) -> None:
        self.server = smpp34.Server("127.0.0.1", self.port, system_id="SMPP34")
        await self.server.start()
        self._task = asyncio.create_task(self._serve())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        for t in self._receipts:
            t.cancel()
        self.server.stop()

    async def _serve(self) -> None:
        while True:
            ev = await self.server.next()
            if isinstance(ev, smpp34.Esme):
                self._esmes[ev.session_id] = ev
                self.binds.append(ev.system_id)
            elif isinstance(ev, smpp34.SubmitSmEvent):
                self.submits.append(ev)
                msg_id = format(self._next_id, "X")
                self._next_id += 1
                ev.accept(msg_id)
                if ev.registered_delivery & 0x03:
                    t = asyncio.create_task(self._receipt(ev, msg_id))
                    self._receipts.add(t)

    async def _receipt(self, ev: smpp34.SubmitSmEvent, msg_id: str) -> None:
        await asyncio.sleep(self.dlr_delay)
        d = time.strftime("%y%m%d%H%M", time.gmtime())
        body = f"id:{msg_id} sub:001 dlvrd:001 submit date:{d} done date:{d} stat:{self.stat} err:000 text:"
        tlvs = [smpp34.Tlv(smpp34.TLV_RECEIPTED_MESSAGE_ID, msg_id.encode() + b"\0"),
                smpp34.Tlv(smpp34.TLV_MESSAGE_STATE, bytes([self.state]))]
        await self._esmes[ev.session_id].deliver_sm(ev.source_addr, body.encode(), source_addr=ev.destination_addr,
                                    esm_class=0x04, tlvs=tlvs)


async def rig_with(tmp: Path, smsc: Smpp34Smsc) -> Rig:
    portal = SimulatedPortal(rate=None)
    await portal.start()
    await smsc.start()
    cfg = make_config(tmp, portal, {"life": smsc, "mts": smsc}, handler_key="k" * 32)
    rig = Rig(tmp, portal, {}, cfg)
    await start_daemon(rig)
    await start_shim(rig)
    return rig


@pytest.mark.parametrize("dlr_delay", [0.05, 0.0], ids=["receipt-after-resp", "receipt-before-resp"])
async def test_bind_submit_receipt_against_smpp34(tmp_path, dlr_delay):
    smsc = Smpp34Smsc(free_port(), dlr_delay=dlr_delay)
    rig = await rig_with(tmp_path, smsc)
    try:
        ids = []
        for i in range(5):
            b24_id, status, _ = await post(rig, "by_life", f"+37529555{i:04d}", f"Interop {i}: Привет")
            assert status == 200
            ids.append(b24_id)
        finals = await wait_final(rig, ids)
        assert set(finals.values()) == {"delivered"}
        assert smsc.binds and set(smsc.binds) == {"smppd"}
        assert len(smsc.submits) == 5
        ev = smsc.submits[0]
        assert ev.source_addr == "DemoShop" and ev.source_addr_ton == 5
        assert ev.destination_addr.startswith("37529555") and ev.dest_addr_ton == 1
        assert ev.data_coding == 0x08
        assert text.decode(0x08, bytes(ev.short_message)).startswith("Interop")
    finally:
        await stop_rig(rig)
        await smsc.stop()


async def test_undelivered_receipt_and_long_message_against_smpp34(tmp_path):
    smsc = Smpp34Smsc(free_port(), stat="UNDELIV", state=5)
    rig = await rig_with(tmp_path, smsc)
    try:
        body = "Long message over SMPP. " * 10  # 240 GSM-7 septets: 2 segments
        b24_id, status, _ = await post(rig, "by_life", "+375 44 777-88-99", body)
        assert status == 200
        assert (await wait_final(rig, [b24_id]))[b24_id] == "undelivered"
        parts = [e for e in smsc.submits if e.destination_addr == "375447778899"]
        assert len(parts) == 2 and all(p.esm_class & 0x40 for p in parts)
        parts.sort(key=lambda p: bytes(p.short_message)[5])  # the handset joins by UDH seq
        joined = "".join(text.decode(0, text.strip_udh(0x40, bytes(p.short_message))[1]) for p in parts)
        assert joined == body
    finally:
        await stop_rig(rig)
        await smsc.stop()
