"""Issue 3, sans-I/O parts: framing after garbage, smpplib defects proven not to bite."""

from __future__ import annotations

import struct

import pytest

from smppd.smpp import codec
from smppd.smpp.session import ReceiptReceived, SubmitAccepted, SubmitUnconfirmed, Terminated

from .test_session import bound_session, receipt_pdu, sent, submit_n, submit_resp


# --- framing -----------------------------------------------------------------------


def test_framer_returns_good_pdus_before_a_bad_length_then_raises():
    framer = codec.Framer()
    good = codec.encode("enquire_link", 7)
    pdus = framer.feed(good + struct.pack(">L", 5) + b"junk")
    assert pdus == [good]
    assert framer.error is not None
    with pytest.raises(codec.FramingError):
        framer.feed(codec.encode("enquire_link", 8))


@pytest.mark.parametrize("length", [0, 15, codec.MAX_PDU_LENGTH + 1, 0xFFFFFFFF])
def test_framer_rejects_length_outside_bounds(length):
    with pytest.raises(codec.FramingError):
        codec.Framer().feed(struct.pack(">L", length) + b"\0" * 12)


def test_session_handles_pdus_before_garbage_then_drops_the_connection():
    s = bound_session()
    seqs = submit_n(s, ["a", "b"])
    sent(s)
    data = submit_resp(seqs["a"], "1A") + receipt_pdu(77) + struct.pack(">L", 3) + b"xyz"
    events = s.receive_data(data, 2.0)
    assert events[0] == SubmitAccepted("a", "1A", "1A")
    assert isinstance(events[1], ReceiptReceived) and events[1].sequence == 77
    assert events[2] == SubmitUnconfirmed("b", events[3].reason)
    assert isinstance(events[3], Terminated) and events[3].reason.startswith("framing error")
