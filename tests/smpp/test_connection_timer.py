"""The asyncio shell arms the session's timer for every submit's resp deadline.

_Protocol.submit skips next_deadline() when the armed timer is already due before
the new submit's deadline; these tests pin that a submit after an idle spell (timer
far away, at the enquire_link interval) still times out on its own deadline, and
that submits in a burst each time out.
"""

from __future__ import annotations

import asyncio

from smppd.smpp.encode import encode
from smppd.smpp.connection import _Protocol
from smppd.smpp.events import SubmitUnconfirmed
from smppd.smpp.session import Session, Submit

from tests.rigs.config_rig import session_config


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def _submit(ref: str) -> Submit:
    return Submit(ref=ref, source_addr="Shop", source_addr_ton=5, source_addr_npi=0,
                  destination_addr="375291234567", registered_delivery=1, short_message=b"hi")


async def _bound(response_timeout: float) -> tuple[_Protocol, list[object]]:
    events: list[object] = []
    config = session_config(system_id="smppd", password="x", response_timeout=response_timeout,
                            enquire_link_interval=60.0, inactivity_timeout=120.0)
    protocol = _Protocol(Session(config), events.extend)
    protocol.connection_made(_Transport())  # type: ignore[arg-type]
    protocol.data_received(encode("bind_transceiver_resp", 1, system_id="SMSC"))
    events.clear()
    return protocol, events


async def test_a_submit_after_an_idle_spell_times_out_on_its_own_deadline() -> None:
    protocol, events = await _bound(response_timeout=0.1)  # the shortest config allows
    await asyncio.sleep(0.15)  # the bind_resp deadline passes; the timer moves to the enquire_link
    assert protocol._timer is not None and protocol._timer.when() > asyncio.get_running_loop().time() + 30
    protocol.submit(_submit("a"))
    await asyncio.sleep(0.3)
    assert events == [SubmitUnconfirmed("a", "submit_sm_resp timeout")]


async def test_each_submit_of_a_burst_times_out() -> None:
    protocol, events = await _bound(response_timeout=0.5)
    protocol.submit(_submit("a"))
    await asyncio.sleep(0.3)
    protocol.submit(_submit("b"))  # the timer (a's deadline) is due first: kept as it is
    protocol.submit(_submit("c"))
    await asyncio.sleep(0.35)  # a's deadline has passed, b's and c's have not
    assert events == [SubmitUnconfirmed("a", "submit_sm_resp timeout")]
    await asyncio.sleep(0.5)
    assert [e.ref for e in events if isinstance(e, SubmitUnconfirmed)] == ["a", "b", "c"]
