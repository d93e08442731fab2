"""CPU of the SMPP path per message, without sockets: the sans-I/O session and the codec.

    .venv/bin/python bench/smpp_session_micro.py            # medians of 9 runs

Each message costs four PDUs on the daemon's main thread: the submit_sm we encode,
its submit_sm_resp, the deliver_sm receipt we parse and the deliver_sm_resp we answer.
``session`` times exactly that through ``Session`` (bursts of 25, as one read of a
busy bind carries), with the SMSC's bytes built beforehand so only our side counts.
The other lines time the codec functions of that path one by one (timeit medians).
The asyncio shell, the route and the store are not in these figures: bench/e2e.py and
bench/smpp_throughput.py measure them.
"""

from __future__ import annotations

import logging
import statistics
import sys
import time
import timeit
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import structlog  # noqa: E402

from smppd.smpp.encode import empty_id_resp, encode  # noqa: E402
from smppd.smpp.pdu import response_message_id  # noqa: E402
from smppd.smpp.receipts import parse_receipt  # noqa: E402
from smppd.smpp.events import SubmitAccepted  # noqa: E402
from smppd.config import SmppRouteConfig  # noqa: E402
from smppd.smpp.connection import session_config_for  # noqa: E402
from smppd.smpp.session import Session, Submit  # noqa: E402

BURST = 25
TEXT = b"Order 123 is ready for pickup, see you 9:00-21:00"


def receipt(sequence: int, smsc_id: str) -> bytes:
    """A receipt as bench/smsc_proc.py sends it: Appendix B text plus the two TLVs."""
    text = (f"id:{smsc_id} sub:001 dlvrd:001 submit date:2611220555 done date:2611220555 "
            f"stat:DELIVRD err:000 text:Order 123 is ready f")
    return encode("deliver_sm", sequence, source_addr_ton=1, source_addr_npi=1,
                        source_addr="375291234567", dest_addr_ton=5, destination_addr="DemoShop",
                        esm_class=4, short_message=text.encode(), receipted_message_id=smsc_id,
                        message_state=2)


def prepare(n: int) -> list[tuple[list[Submit], bytes, bytes]]:
    bursts = []
    for b in range(n // BURST):
        first = 2 + b * BURST  # sequence 1 is the bind
        submits = [Submit(ref=(b, i), source_addr="DemoShop", source_addr_ton=5, source_addr_npi=0,
                          destination_addr="375291234567", registered_delivery=1, short_message=TEXT)
                   for i in range(BURST)]
        resps = b"".join(encode("submit_sm_resp", first + i, message_id=f"{0x1000 + first + i:X}")
                         for i in range(BURST))
        receipts = b"".join(receipt(first + i, f"{0x1000 + first + i:X}") for i in range(BURST))
        bursts.append((submits, resps, receipts))
    return bursts


def session_run(bursts: list[tuple[list[Submit], bytes, bytes]]) -> float:
    """µs per message: submit, resp, receipt and ack through one bound Session."""
    route = SmppRouteConfig(name="bench", host="127.0.0.1", port=2775, system_id="smppd", password="x", window=BURST)
    s = Session(session_config_for(route))
    s.start(0.0)
    s.data_to_send()
    s.receive_data(encode("bind_transceiver_resp", 1, system_id="SMSC"), 0.0)
    start = time.perf_counter()
    for submits, resps, receipts in bursts:
        for item in submits:
            s.submit(item, 1.0)
        s.data_to_send()
        accepted = s.receive_data(resps, 1.0)
        for event in s.receive_data(receipts, 1.0):
            s.acknowledge(event.sequence)  # type: ignore[union-attr]
        s.data_to_send()
    elapsed = time.perf_counter() - start
    assert len(accepted) == BURST and isinstance(accepted[0], SubmitAccepted)
    return elapsed / (len(bursts) * BURST) * 1e6


def per_call(stmt: str, env: dict[str, Any], number: int = 20000) -> float:
    return statistics.median(timeit.repeat(stmt, number=number, repeat=7, globals=env)) / number * 1e6


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    bursts = prepare(5000)
    runs = [session_run(bursts) for _ in range(9)]
    print(f"session (4 PDUs)        {statistics.median(runs):6.1f} µs/msg  (min {min(runs):.1f}, 9 x 5,000)")
    fields = dict(source_addr_ton=5, source_addr_npi=0, source_addr="DemoShop", dest_addr_ton=1,
                  dest_addr_npi=1, destination_addr="375291234567", esm_class=0,
                  registered_delivery=1, data_coding=0, short_message=TEXT)
    env = {"encode": encode, "response_message_id": response_message_id, "parse_receipt": parse_receipt,
           "empty_id_resp": empty_id_resp, "fields": fields, "rc": receipt(7, "1A2B3C"),
           "resp": encode("submit_sm_resp", 9, message_id="1A2B3C")}
    for label, stmt in [
        ("encode('submit_sm')", "encode('submit_sm', 5, service_type='', **fields)"),
        ("response_message_id", "response_message_id(resp)"),
        ("parse_receipt", "parse_receipt(rc)"),
        ("empty_id_resp", "empty_id_resp('deliver_sm_resp', 5, 0)"),
    ]:
        print(f"{label:<23} {per_call(stmt, env):6.2f} µs")


if __name__ == "__main__":
    main()
