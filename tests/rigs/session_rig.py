"""The sans-I/O SMPP session's test rig: a bound session, the PDUs an SMSC sends, what the
session wrote. Shared by tests/smpp/test_session.py and tests/smpp/test_smpp_hardening.py."""

from __future__ import annotations

import struct

from smppd.smpp.encode import encode
from smppd.smpp.events import Bound
from smppd.smpp.pdu import Framer, Header, read_header
from smppd.smpp.session import BindMode, Session, SessionConfig, State, Submit

from tests.rigs.config_rig import session_config

PASSWORD = "s3cr3tpw"
RESP_TIMEOUT = 10.0
INTERVAL = 30.0

RECEIPT_TEXT = (
    b"id:0A1B2C sub:001 dlvrd:001 submit date:2501011200 done date:2501011201 "
    b"stat:DELIVRD err:000 text:Hello"
)


def config(**overrides) -> SessionConfig:
    values = dict(
        system_id="esme01",
        password=PASSWORD,
        response_timeout=RESP_TIMEOUT,
        enquire_link_interval=INTERVAL,
        inactivity_timeout=300.0,
        window=10,
    )
    values.update(overrides)
    return session_config(**values)  # the way the daemon builds one: from a parsed route


def sent(session: Session) -> list[tuple[Header, bytes]]:
    """Everything the session wants to write, cut into PDUs (and checked to frame cleanly)."""
    data = session.data_to_send()
    framer = Framer()
    raws = framer.feed(data)
    assert framer.pending == 0
    return [(read_header(raw), raw) for raw in raws]


def sent_one(session: Session) -> tuple[Header, bytes]:
    pdus = sent(session)
    assert len(pdus) == 1, [h.command for h, _ in pdus]
    return pdus[0]


def bind_resp_for(mode: BindMode, seq: int, status: int = 0, system_id: str = "SMSC") -> bytes:
    name = {
        BindMode.TRANSCEIVER: "bind_transceiver_resp",
        BindMode.TRANSMITTER: "bind_transmitter_resp",
        BindMode.RECEIVER: "bind_receiver_resp",
    }[mode]
    if status:
        return encode(name, seq, status=status)
    return encode(name, seq, system_id=system_id)


def bound_session(now: float = 0.0, **overrides) -> Session:
    s = Session(config(**overrides))
    s.start(now)
    header, _ = sent_one(s)
    events = s.receive_data(bind_resp_for(s.config.bind_mode, header.sequence), now)
    assert events == [Bound("SMSC")]
    assert s.state is State.BOUND
    return s


def item(ref, text: bytes = b"Hello", **kw) -> Submit:
    return Submit(
        ref=ref,
        source_addr=kw.pop("source_addr", "MyBrand"),
        source_addr_ton=5,
        source_addr_npi=0,
        destination_addr=kw.pop("destination_addr", "375291234567"),
        registered_delivery=kw.pop("registered_delivery", 1),
        short_message=text,
        **kw,
    )


def submit_resp(seq: int, message_id: str = "", status: int = 0) -> bytes:
    if status:
        return encode("submit_sm_resp", seq, status=status)
    return encode("submit_sm_resp", seq, message_id=message_id)


def receipt_pdu(seq: int, *, command: str = "deliver_sm", **kw) -> bytes:
    fields = dict(
        service_type="",
        source_addr_ton=1,
        source_addr_npi=1,
        source_addr="375291234567",
        dest_addr_ton=5,
        dest_addr_npi=0,
        destination_addr="MyBrand",
        esm_class=0x04,
        data_coding=0,
        receipted_message_id="0A1B2C",
        message_state=2,
    )
    if command == "deliver_sm":
        fields["short_message"] = RECEIPT_TEXT
    else:
        fields["message_payload"] = RECEIPT_TEXT
    fields.update(kw)
    return encode(command, seq, **fields)


def mo_pdu(seq: int) -> bytes:
    return encode(
        "deliver_sm",
        seq,
        service_type="",
        source_addr_ton=1,
        source_addr_npi=1,
        source_addr="375291234567",
        dest_addr_ton=1,
        dest_addr_npi=1,
        destination_addr="7575",
        esm_class=0,
        data_coding=8,
        short_message="Да".encode("utf-16-be"),
    )


def raw_pdu(command_id: int, seq: int, body: bytes = b"", status: int = 0) -> bytes:
    return struct.pack(">LLLL", 16 + len(body), command_id, status, seq) + body


def submit_n(s: Session, refs, now: float = 1.0) -> dict:
    seqs = {}
    for ref in refs:
        seqs[ref] = s.submit(item(ref), now)
    return seqs


# --- bind ------------------------------------------------------------------------------------
