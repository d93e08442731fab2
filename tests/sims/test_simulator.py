"""smppd.sims.smpp driven with raw codec PDUs over a real loopback socket."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Callable

import pytest

from smppd.smpp.encode import encode
from smppd.smpp.pdu import (
    COMMAND_IDS,
    ESME_RALYBND,
    ESME_RINVBNDSTS,
    ESME_RINVCMDID,
    ESME_RINVDSTADR,
    ESME_RINVMSGLEN,
    ESME_RINVPASWD,
    ESME_RINVSYSID,
    ESME_ROK,
    ESME_RTHROTTLED,
    GENERIC_NACK,
    RESPONSE_BIT,
    TAG_RECEIPTED_MESSAGE_ID,
    Framer,
    Header,
    decode,
    parse_tlvs,
    read_header,
)
from smppd.smpp.receipts import parse_deliver, parse_receipt
from smppd.sims.smpp import SimulatorConfig, SmscSimulator
from smppd.sims.smpp_policy import SubmitPolicy, SubmittedSm, SubmitVerdict

TIMEOUT = 2.0


class RawEsme:
    """The thinnest possible ESME: writes PDUs, reads whole PDUs back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.framer = Framer()
        self.inbox: list[bytes] = []
        self.sequence = 0

    @classmethod
    async def connect(cls, sim: SmscSimulator) -> RawEsme:
        return cls(*await asyncio.open_connection("127.0.0.1", sim.port))

    def next_sequence(self) -> int:
        self.sequence += 1
        return self.sequence

    async def send(self, raw: bytes) -> None:
        self.writer.write(raw)
        await self.writer.drain()

    async def recv(self, match: Callable[[Header], bool] = lambda h: True,
                   timeout: float = TIMEOUT) -> bytes:
        """The first PDU (kept back or new) that matches; the others stay in the inbox."""
        while True:
            for i, raw in enumerate(self.inbox):
                if match(read_header(raw)):
                    return self.inbox.pop(i)
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise EOFError
            self.inbox += self.framer.feed(data)

    async def request(self, command: str, **fields: object) -> tuple[Header, bytes]:
        """Send a request and wait for its response; receipts arriving meanwhile wait."""
        sequence = self.next_sequence()
        await self.send(encode(command, sequence, **fields))
        raw = await self.recv(lambda h: h.is_response and h.sequence == sequence)
        return read_header(raw), raw

    async def bind(self, command: str = "bind_transceiver", system_id: str = "smppd",
                   password: str = "secret") -> Header:
        header, _ = await self.request(command, system_id=system_id, password=password,
                                       system_type="", interface_version=0x34)
        assert header.command_id == COMMAND_IDS[command] | RESPONSE_BIT
        return header

    async def submit(self, text: str = "Hello world", registered_delivery: int = 1,
                     **fields: object) -> tuple[Header, str | None]:
        submit: dict[str, object] = dict(
            source_addr="MyBrand", source_addr_ton=5, source_addr_npi=0,
            destination_addr="375291234567", dest_addr_ton=1, dest_addr_npi=1,
            registered_delivery=registered_delivery, short_message=text.encode("ascii"),
        )
        header, raw = await self.request("submit_sm", **(submit | fields))
        assert header.command == "submit_sm_resp"
        resp = decode(raw)
        return header, resp.message_id.decode() if resp.message_id else None

    async def next_deliver(self, ack: bool = True) -> bytes:
        raw = await self.recv(lambda h: h.command == "deliver_sm")
        header = read_header(raw)
        if ack:
            await self.send(encode("deliver_sm_resp", header.sequence))
        return raw

    async def assert_silent(self) -> None:
        """Nothing but the answer to a probe arrives: no stray receipt is on its way."""
        header, _ = await self.request("enquire_link")
        assert header.command == "enquire_link_resp"
        assert not self.inbox

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


async def start(**config: object) -> SmscSimulator:
    sim = SmscSimulator(SimulatorConfig(**config))  # type: ignore[arg-type]
    await sim.start()
    return sim


@pytest.fixture
async def sim() -> AsyncIterator[SmscSimulator]:
    simulator = await start(receipt_delay=0.01)
    yield simulator
    await simulator.stop()


@pytest.fixture
async def esme(sim: SmscSimulator) -> AsyncIterator[RawEsme]:
    client = await RawEsme.connect(sim)
    yield client
    await client.close()


async def eventually(predicate, timeout: float = TIMEOUT) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


# --- binds ---------------------------------------------------------------------------


@pytest.mark.integration
async def test_bind_ok(sim: SmscSimulator, esme: RawEsme) -> None:
    sequence = esme.next_sequence()
    await esme.send(encode("bind_transceiver", sequence, system_id="smppd",
                                 password="secret", system_type="", interface_version=0x34))
    raw = await esme.recv()
    resp = decode(raw)
    assert (resp.command, resp.sequence, resp.status) == ("bind_transceiver_resp", sequence, 0)
    assert resp.system_id == b"SIMSMSC" and resp.sc_interface_version == 0x34
    assert sim.binds == 1


@pytest.mark.integration
@pytest.mark.parametrize(
    ("system_id", "password", "status"),
    [("smppd", "wrong", ESME_RINVPASWD), ("nobody", "secret", ESME_RINVSYSID)],
)
async def test_bind_refused(sim: SmscSimulator, esme: RawEsme, system_id: str, password: str,
                            status: int) -> None:
    header = await esme.bind(system_id=system_id, password=password)
    assert header.status == status and header.length == 16  # no body on error
    assert sim.binds == 0


@pytest.mark.integration
async def test_second_bind_on_one_connection_is_already_bound(esme: RawEsme) -> None:
    assert (await esme.bind()).status == 0
    assert (await esme.bind()).status == ESME_RALYBND


@pytest.mark.integration
async def test_submit_before_bind_is_invalid_bind_status(esme: RawEsme) -> None:
    header, smsc_id = await esme.submit()
    assert header.status == ESME_RINVBNDSTS and smsc_id is None


@pytest.mark.integration
async def test_submit_on_a_receiver_bind_is_invalid_bind_status(esme: RawEsme) -> None:
    await esme.bind("bind_receiver")
    header, _ = await esme.submit()
    assert header.status == ESME_RINVBNDSTS


# --- submit and receipts ---------------------------------------------------------------


@pytest.mark.integration
async def test_submit_gets_an_id_then_a_receipt_with_tlvs_and_text(
    sim: SmscSimulator, esme: RawEsme,
) -> None:
    await esme.bind()
    header, smsc_id = await esme.submit("Hello world, this is a test")
    assert header.status == 0 and smsc_id == "5A000000"

    raw = await esme.next_deliver()
    dlr = decode(raw)
    assert dlr.esm_class == 0x04 and dlr.data_coding == 0
    assert (dlr.source_addr, dlr.destination_addr) == (b"375291234567", b"MyBrand")
    assert (dlr.source_addr_ton, dlr.dest_addr_ton) == (1, 5)
    assert dlr.receipted_message_id == b"5A000000" and dlr.message_state == 2
    text = dlr.short_message.decode()
    assert text.startswith("id:5A000000 sub:001 dlvrd:001 submit date:")
    assert " stat:DELIVRD err:000 text:Hello world, this is" in text
    assert parse_tlvs(raw)[TAG_RECEIPTED_MESSAGE_ID] == b"5A000000\0"

    receipt = parse_receipt(raw)
    assert receipt is not None
    assert (receipt.smsc_id, receipt.state, receipt.stat) == ("5A000000", 2, "DELIVRD")
    assert len(receipt.submit_date or "") == 10 and len(receipt.done_date or "") == 10

    await eventually(lambda: sim.receipts_acked == 1)
    assert sim.receipts_sent == 1
    [sm] = sim.submitted
    assert (sm.smsc_id, sm.system_id, sm.sequence) == ("5A000000", "smppd", header.sequence)
    assert (sm.source_addr, sm.source_addr_ton, sm.source_addr_npi) == ("MyBrand", 5, 0)
    assert (sm.destination_addr, sm.registered_delivery) == ("375291234567", 1)
    assert sm.text == "Hello world, this is a test"
    assert read_header(sm.raw).command == "submit_sm"


@pytest.mark.integration
async def test_smsc_ids_are_unique_and_decimal_when_asked() -> None:
    sim = await start(id_format="dec", receipt_tlvs=False, receipt_delay=0)
    esme = await RawEsme.connect(sim)
    try:
        await esme.bind()
        ids = [(await esme.submit(registered_delivery=0))[1] for _ in range(3)]
        assert ids == [str(0x5A000000 + i) for i in range(3)]
        _, smsc_id = await esme.submit()
        raw = await esme.next_deliver()
        assert parse_tlvs(raw) == {}  # text only
        receipt = parse_receipt(raw, id_base="dec")
        assert receipt is not None and receipt.raw_smsc_id == smsc_id
        assert receipt.state is None and receipt.stat == "DELIVRD"
    finally:
        await esme.close()
        await sim.stop()


@pytest.mark.integration
async def test_ucs2_long_message_part_and_sar_fields_are_recorded(
    sim: SmscSimulator, esme: RawEsme,
) -> None:
    await esme.bind()
    udh = b"\x05\x00\x03\x2A\x02\x01"
    body = udh + "Ваш код 1234".encode("utf-16-be")
    await esme.submit(short_message=body, esm_class=0x40, data_coding=0x08)
    await esme.submit(short_message=b"part", sar_msg_ref_num=7, sar_total_segments=2,
                      sar_segment_seqnum=2, registered_delivery=0)
    ucs2, sar = sim.submitted
    assert (ucs2.esm_class, ucs2.data_coding, ucs2.short_message) == (0x40, 0x08, body)
    assert ucs2.text == "Ваш код 1234"
    assert (sar.sar_msg_ref_num, sar.sar_total_segments, sar.sar_segment_seqnum) == (7, 2, 2)
    receipt = decode(await esme.next_deliver()).short_message
    assert receipt.endswith(b"text:??? ??? 1234")  # receipt texts are ASCII


@pytest.mark.integration
async def test_outcome_mix_is_reproducible_with_a_seed() -> None:
    outcomes = {"DELIVRD": 2.0, "UNDELIV": 1.0, "EXPIRED": 1.0, "REJECTD": 1.0}
    seen = []
    for _ in range(2):
        sim = await start(outcomes=outcomes, seed=42, receipt_delay=0)
        esme = await RawEsme.connect(sim)
        try:
            await esme.bind()
            ids = [(await esme.submit())[1] for _ in range(30)]
            stats = {}
            for _ in ids:
                receipt = parse_receipt(await esme.next_deliver(), id_base="hex")
                assert receipt is not None
                stats[receipt.raw_smsc_id] = (receipt.stat, receipt.state)
            chosen = [sim.outcome_of(i) for i in ids if i]
            assert [stats[i][0] for i in ids] == chosen  # the receipt tells the chosen outcome
            states = {"DELIVRD": 2, "UNDELIV": 5, "EXPIRED": 3, "REJECTD": 8}
            assert all(state == states[stat] for stat, state in stats.values())
            seen.append(chosen)
        finally:
            await esme.close()
            await sim.stop()
    assert seen[0] == seen[1]
    assert set(seen[0]) == {"DELIVRD", "UNDELIV", "EXPIRED", "REJECTD"}


@pytest.mark.integration
async def test_registered_delivery_decides_which_receipts_come() -> None:
    sim = await start(outcomes={"UNDELIV": 1.0}, receipt_delay=0)
    esme = await RawEsme.connect(sim)
    try:
        await esme.bind()
        await esme.submit(registered_delivery=0)
        await asyncio.sleep(0.02)
        await esme.assert_silent()
        _, smsc_id = await esme.submit(registered_delivery=2)  # failures only: UNDELIV qualifies
        receipt = parse_receipt(await esme.next_deliver())
        assert receipt is not None and receipt.raw_smsc_id == smsc_id
        assert receipt.stat == "UNDELIV" and receipt.error == "003"
        sim.config.outcomes = {"DELIVRD": 1.0}
        await esme.submit(registered_delivery=2)  # a success is not reported
        await asyncio.sleep(0.02)
        await esme.assert_silent()
    finally:
        await esme.close()
        await sim.stop()


@pytest.mark.integration
async def test_receipt_goes_to_the_receiver_of_a_tx_rx_pair(sim: SmscSimulator) -> None:
    tx, rx = await RawEsme.connect(sim), await RawEsme.connect(sim)
    try:
        await tx.bind("bind_transmitter")
        await rx.bind("bind_receiver")
        assert sim.binds == 2
        _, smsc_id = await tx.submit()
        receipt = parse_receipt(await rx.next_deliver())
        assert receipt is not None and receipt.raw_smsc_id == smsc_id
        await tx.assert_silent()
    finally:
        await tx.close()
        await rx.close()


@pytest.mark.integration
async def test_receipt_waits_for_a_receiver_and_unacked_ones_come_again(
    sim: SmscSimulator,
) -> None:
    tx = await RawEsme.connect(sim)
    await tx.bind("bind_transmitter")
    _, first = await tx.submit()
    await asyncio.sleep(0.05)  # the receipt is due, but nobody can take it
    assert sim.receipts_sent == 0

    rx = await RawEsme.connect(sim)
    await rx.bind("bind_receiver")
    raw = await rx.next_deliver(ack=False)  # taken, never acknowledged
    assert decode(raw).receipted_message_id == first.encode()  # type: ignore[union-attr]
    await rx.close()

    rx = await RawEsme.connect(sim)
    await rx.bind("bind_receiver")
    again = decode(await rx.next_deliver())
    assert again.receipted_message_id == first.encode()  # type: ignore[union-attr]
    await eventually(lambda: sim.receipts_acked == 1)
    assert sim.receipts_sent == 2
    await tx.close()
    await rx.close()


@pytest.mark.integration
async def test_policy_hook_rejects_or_drops_a_submit(sim: SmscSimulator, esme: RawEsme) -> None:
    class Throttle(SubmitPolicy):
        def decide(self, sm: SubmittedSm) -> SubmitVerdict:
            if sm.destination_addr.endswith("9"):
                return SubmitVerdict(respond=False)
            return SubmitVerdict(status=ESME_RTHROTTLED)

    await esme.bind()
    sim.policy = Throttle()
    header, smsc_id = await esme.submit()
    assert header.status == ESME_RTHROTTLED and smsc_id is None and header.length == 16
    await esme.send(encode("submit_sm", esme.next_sequence(), destination_addr="375291234569",
                                 short_message=b"x"))
    await esme.assert_silent()  # swallowed: no resp
    assert sim.submitted == [] and [s for _, s in sim.rejected] == [ESME_RTHROTTLED]
    sim.policy = SubmitPolicy()
    header, smsc_id = await esme.submit(registered_delivery=0)
    assert header.status == 0 and smsc_id == "5A000000"


@pytest.mark.integration
async def test_empty_destination_is_refused(esme: RawEsme) -> None:
    await esme.bind()
    header, _ = await esme.submit(destination_addr="")
    assert header.status == ESME_RINVDSTADR


@pytest.mark.integration
async def test_deliver_mo(sim: SmscSimulator, esme: RawEsme) -> None:
    await esme.bind("bind_receiver")
    await sim.deliver_mo("smppd", "375291234567", "MyBrand", "Да".encode("utf-16-be"), data_coding=8)
    mo = parse_deliver(await esme.next_deliver())
    assert parse_receipt(encode("deliver_sm", 1, short_message=mo.short_message)) is None
    assert (mo.source_addr, mo.data_coding, mo.short_message) == ("375291234567", 8, "Да".encode("utf-16-be"))
    assert sim.receipts_sent == 0


# --- keep-alive, unbind, errors ------------------------------------------------------


@pytest.mark.integration
async def test_enquire_link(esme: RawEsme) -> None:
    header, raw = await esme.request("enquire_link")
    assert (header.command, header.status, len(raw)) == ("enquire_link_resp", 0, 16)
    await esme.bind()
    header, _ = await esme.request("enquire_link")
    assert header.command == "enquire_link_resp"


@pytest.mark.integration
async def test_unbind_answers_and_closes(sim: SmscSimulator, esme: RawEsme) -> None:
    await esme.bind()
    header, _ = await esme.request("unbind")
    assert (header.command, header.status) == ("unbind_resp", 0)
    with pytest.raises(EOFError):
        await esme.recv()
    await eventually(lambda: sim.binds == 0)


@pytest.mark.integration
async def test_smsc_initiated_unbind(sim: SmscSimulator, esme: RawEsme) -> None:
    await esme.bind()
    task = asyncio.create_task(sim.unbind_all())
    raw = await esme.recv()
    header = read_header(raw)
    assert header.command == "unbind"
    await esme.send(encode("unbind_resp", header.sequence))
    await asyncio.wait_for(task, TIMEOUT)
    with pytest.raises(EOFError):
        await esme.recv()


@pytest.mark.integration
@pytest.mark.parametrize("command_id", [0x00000099, 0x00000007, 0x00000103])
async def test_unknown_or_unserved_command_is_nacked(esme: RawEsme, command_id: int) -> None:
    await esme.send(struct.pack(">LLLL", 16, command_id, 0, 31))
    header = read_header(await esme.recv())
    assert header == Header(16, GENERIC_NACK, ESME_RINVCMDID, 31)


@pytest.mark.integration
async def test_malformed_submit_is_nacked_with_its_sequence(esme: RawEsme) -> None:
    await esme.bind()
    raw = encode("submit_sm", 44, short_message=b"hello")[:-2]
    await esme.send(struct.pack(">L", len(raw)) + raw[4:])
    header = read_header(await esme.recv())
    assert (header.command, header.sequence, header.status) == ("generic_nack", 44, ESME_RINVMSGLEN)


@pytest.mark.integration
async def test_framing_error_drops_the_connection(esme: RawEsme) -> None:
    await esme.send(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(EOFError):
        await esme.recv()


@pytest.mark.integration
async def test_stop_closes_every_bind() -> None:
    sim = await start()
    esme = await RawEsme.connect(sim)
    await esme.bind()
    await sim.stop()
    with pytest.raises((EOFError, ConnectionError)):
        await esme.recv()
    assert sim.binds == 0
    await esme.close()


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="outcomes"):
        SimulatorConfig(outcomes={"DELIVERED": 1.0})
    with pytest.raises(ValueError, match="id_format"):
        SimulatorConfig(id_format="oct")


def test_queue_full_bursts_block_for_the_given_time() -> None:
    from smppd.sims.smpp_policy import QueueFullBursts

    now = [0.0]
    policy = QueueFullBursts(every=3, blocked=0.5, clock=lambda: now[0])
    sm = SubmittedSm(raw=b"", sequence=1, system_id="s", service_type="", source_addr="A", source_addr_ton=5,
                     source_addr_npi=0, destination_addr="1", dest_addr_ton=1, dest_addr_npi=1, esm_class=0,
                     data_coding=0, registered_delivery=1, short_message=b"x")
    statuses = []
    for t in (0.0, 0.1, 0.2, 0.3, 0.69, 0.71, 0.8, 0.9):
        now[0] = t
        statuses.append(policy.decide(sm).status)
    assert statuses == [0, 0, 0x14, 0x14, 0x14, 0, 0, 0x14]
    assert policy.bursts == 2


def test_part_of_reads_udh_and_sar() -> None:
    from smppd.sims.smpp_policy import part_of

    base = dict(raw=b"", sequence=1, system_id="s", service_type="", source_addr="A", source_addr_ton=5,
                source_addr_npi=0, destination_addr="1", dest_addr_ton=1, dest_addr_npi=1, data_coding=0,
                registered_delivery=1)
    udh8 = SubmittedSm(esm_class=0x40, short_message=bytes([5, 0, 3, 7, 3, 2]) + b"text", **base)
    udh16 = SubmittedSm(esm_class=0x40, short_message=bytes([6, 8, 4, 0, 7, 3, 3]) + b"text", **base)
    sar = SubmittedSm(esm_class=0, short_message=b"text", sar_total_segments=4, sar_segment_seqnum=1, **base)
    whole = SubmittedSm(esm_class=0, short_message=b"text", **base)
    assert [part_of(s) for s in (udh8, udh16, sar, whole)] == [(3, 2), (3, 3), (4, 1), None]


@pytest.mark.integration
async def test_stale_session_refuses_binds_then_accepts() -> None:
    sim = SmscSimulator(SimulatorConfig(stale_session=0.3))
    await sim.start()
    try:
        first = await RawEsme.connect(sim)
        assert (await first.bind()).status == ESME_RALYBND
        await asyncio.sleep(0.35)
        second = await RawEsme.connect(sim)
        assert (await second.bind()).status == ESME_ROK
        assert sim.bind_attempts == 2
        for e in (first, second):
            e.writer.close()
    finally:
        await sim.stop()
