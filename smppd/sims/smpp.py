"""An SMSC on loopback, for the demo and the tests.

It speaks SMPP 3.4 on a real socket, built only from our codec (``smppd.smpp.pdu``,
``encode``, and so from smpplib's encoder), because it is used to show that our ESME works against real
SMSCs: binds with a password check, ``submit_sm`` answered with a fresh
message id, delivery receipts in the common text form (Appendix B) plus the
``receipted_message_id`` / ``message_state`` TLVs, ``enquire_link``, ``unbind``,
``generic_nack`` for what it does not serve.

Like a real SMSC it routes a receipt to any receiver-capable bind of the same
account, keeps receipts while no such bind exists, and delivers again the
receipts whose ``deliver_sm_resp`` never came when a bind drops.

Fault modes (throttling, drops, slow resps, queue-full bursts) go into a
``SubmitPolicy``; the default accepts everything. The bind and receipt faults of
issue 14 are ``SimulatorConfig`` fields (``smpp_policy``), each modelled on what the peers' trackers
and reference §4/§8 describe, not on our code: a stale session that answers
``ESME_RALYBND`` for a while after a crash, periodic SMSC unbinds (maintenance,
load balancers), hex resp ids with decimal receipt ids (Nexmo), one receipt per
long message for its first or last part (Jasmin #1123, #1136, go-smpp #74), no
receipt at all, and ``query_sm`` answered from the SMSC's own state.

The decisions (verdicts, fault policies, which outcome gets a receipt) are in
``smpp_policy``; this module frames, routes and times them.
"""

from __future__ import annotations

import asyncio
import hmac
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Final

import structlog

from ..smpp.encode import encode, generic_nack
from ..smpp.pdu import (
    BIND_RECEIVER,
    BIND_TRANSCEIVER,
    BIND_TRANSMITTER,
    COMMAND_IDS,
    ENQUIRE_LINK,
    ESME_RALYBND,
    ESME_RINVBNDSTS,
    ESME_RINVCMDID,
    ESME_RINVDSTADR,
    ESME_RINVPASWD,
    ESME_RINVSYSID,
    ESME_ROK,
    Framer,
    FramingError,
    Header,
    MAX_SEQUENCE,
    PduDecodeError,
    SUBMIT_SM,
    UNBIND,
    decode,
    read_header,
    status_name,
)
from .smpp_policy import (
    MESSAGE_STATES,
    SimulatorConfig,
    SubmitPolicy,
    SubmittedSm,
    SubmitVerdict,
    _submitted_sm,
    _wants_receipt,
    part_of,
    receipt_fields,
)

QUERY_SM: Final = COMMAND_IDS["query_sm"]

log = structlog.get_logger(__name__)

_BIND_COMMANDS: Final = {
    BIND_TRANSMITTER: "bind_transmitter",
    BIND_RECEIVER: "bind_receiver",
    BIND_TRANSCEIVER: "bind_transceiver",
}
_DELIVER_SM_RESP: Final = COMMAND_IDS["deliver_sm_resp"]
_UNBIND_RESP: Final = COMMAND_IDS["unbind_resp"]


@dataclass
class _Outbound:
    """A deliver_sm waiting for a receiver-capable bind of ``system_id``."""

    system_id: str
    fields: dict[str, Any]
    is_receipt: bool


class _EsmeConnection:
    """One TCP connection from an ESME: its bind state and the receipts in flight on it."""

    def __init__(self, sim: SmscSimulator, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.sim = sim
        self.reader = reader
        self.writer = writer
        self.framer = Framer()
        self.peer = writer.get_extra_info("peername")
        self.system_id: str | None = None
        self.bind_command: int | None = None
        self.in_flight: dict[int, _Outbound] = {}
        self.unbound: asyncio.Future[None] | None = None
        self.closing = False
        self._sequence = 0

    @property
    def bound(self) -> bool:
        return self.bind_command is not None

    @property
    def can_receive(self) -> bool:
        return self.bind_command in (BIND_RECEIVER, BIND_TRANSCEIVER) and not self.closing

    @property
    def can_transmit(self) -> bool:
        return self.bind_command in (BIND_TRANSMITTER, BIND_TRANSCEIVER)

    def next_sequence(self) -> int:
        self._sequence = self._sequence % MAX_SEQUENCE + 1
        return self._sequence

    def send(self, raw: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(raw)

    def close(self) -> None:
        self.closing = True
        self.writer.close()

    async def run(self) -> None:
        try:
            while not self.closing:
                data = await self.reader.read(65536)
                if not data:
                    break
                for raw in self.framer.feed(data):
                    self.sim._handle(self, raw)
                    if self.closing:
                        break
                await self.writer.drain()
        except FramingError as exc:
            log.warning("smsc.framing_error", smsc=self.sim.config.system_id, error=str(exc))
        except ConnectionError:
            pass
        finally:
            self.sim._connection_lost(self)
            self.close()


class SmscSimulator:
    """An SMSC for loopback use: ``await start()``, point an ESME at ``port``, ``await stop()``."""

    def __init__(self, config: SimulatorConfig, host: str = "127.0.0.1", port: int = 0,
                 *, policy: SubmitPolicy | None = None) -> None:
        self.config = config
        self.host = host
        self.port = port
        self.policy = policy or SubmitPolicy()
        self.submitted: list[SubmittedSm] = []
        self.rejected: list[tuple[SubmittedSm, int]] = []
        self.receipts_sent = 0
        self.receipts_acked = 0
        self.bind_attempts = 0
        self.submits_unbound = 0  # submit_sm on a connection that is not bound (must stay 0)
        self.unbinds_sent = 0
        self.queries = 0
        # deliver_sm still unanswered when an ESME's unbind arrived (must stay 0, issue 14.4)
        self.unanswered_at_unbind = 0
        self._started_at = 0.0
        self._unbinder: asyncio.Task[Any] | None = None
        self._rng = random.Random(config.seed)
        self._next_id = config.first_smsc_id
        self._outcomes: dict[str, str] = {}
        self._connections: set[_EsmeConnection] = set()
        self._waiting: dict[str, deque[_Outbound]] = {}
        self._serving: set[asyncio.Task[Any]] = set()  # one per connection
        self._timers: set[asyncio.Task[Any]] = set()  # receipts due later
        self._server: asyncio.Server | None = None
        self._stopping = False
        self.frozen = False  # set to stop answering anything (half-dead link), clear to recover

    # --- life cycle -------------------------------------------------------------

    async def start(self) -> None:
        """Listen; after stop() this is the operator coming back, on the same port."""
        self._stopping = False
        self._started_at = time.monotonic()
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        if self.config.unbind_every > 0 and self._unbinder is None:
            self._unbinder = asyncio.get_running_loop().create_task(self._unbind_periodically())
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("smsc.listening", smsc=self.config.system_id, host=self.host, port=self.port)

    async def stop(self) -> None:
        """Close the listener and every bind at once, without unbind (a crashed SMSC)."""
        self._stopping = True
        if self._unbinder is not None:
            self._unbinder.cancel()
            await asyncio.gather(self._unbinder, return_exceptions=True)
            self._unbinder = None
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.close()
        for task in self._timers:
            task.cancel()
        # the connection tasks end on their own once their sockets are closed; cancelling
        # them would make asyncio's start_server log the CancelledError as an error
        tasks = [*self._timers, *self._serving]
        if self._serving:
            _, late = await asyncio.wait(set(self._serving), timeout=1.0)
            for task in late:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def unbind_all(self, timeout: float = 1.0) -> None:
        """SMSC-initiated unbind of every bind (maintenance), then close them."""
        loop = asyncio.get_running_loop()
        waits = []
        for conn in [c for c in self._connections if c.bound]:
            conn.unbound = loop.create_future()
            conn.send(encode("unbind", conn.next_sequence()))
            self.unbinds_sent += 1
            waits.append(conn.unbound)
        if waits:
            await asyncio.wait(waits, timeout=timeout)
        for conn in [c for c in self._connections if c.unbound is not None]:
            conn.close()

    async def _unbind_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.config.unbind_every)
            await self.unbind_all()

    @property
    def binds(self) -> int:
        return sum(1 for c in self._connections if c.bound and not c.closing)

    def outcome_of(self, smsc_id: str) -> str:
        """The stat word chosen for an accepted message (KeyError for an unknown id)."""
        return self._outcomes[smsc_id]

    async def deliver_mo(self, system_id: str, source_addr: str, destination_addr: str,
                         short_message: bytes, *, data_coding: int = 0,
                         esm_class: int = 0) -> None:
        """A mobile-originated message to a receiver-capable bind of ``system_id``."""
        fields = dict(
            service_type="", source_addr_ton=1, source_addr_npi=1, source_addr=source_addr,
            dest_addr_ton=0, dest_addr_npi=0, destination_addr=destination_addr,
            esm_class=esm_class, data_coding=data_coding, short_message=short_message,
        )
        self._deliver(_Outbound(system_id, fields, is_receipt=False))

    # --- connections ------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _EsmeConnection(self, reader, writer)
        if self._stopping:
            conn.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._serving.add(task)
        self._connections.add(conn)
        log.info("smsc.connected", smsc=self.config.system_id, peer=conn.peer)
        try:
            await conn.run()
        finally:
            self._serving.discard(task)

    def _connection_lost(self, conn: _EsmeConnection) -> None:
        self._connections.discard(conn)
        log.info("smsc.disconnected", smsc=self.config.system_id, system_id=conn.system_id,
                 unacked=len(conn.in_flight))
        if conn.unbound is not None and not conn.unbound.done():
            conn.unbound.set_result(None)
        in_flight, conn.in_flight = list(conn.in_flight.values()), {}
        if not self._stopping:
            for outbound in in_flight:  # like a real SMSC: unacked deliver_sm are delivered again
                self._deliver(outbound)

    def _handle(self, conn: _EsmeConnection, raw: bytes) -> None:
        if self.frozen:
            return  # a hung SMSC: the TCP connection stays up, nothing is answered
        header = read_header(raw)
        if header.is_response:
            self._on_response(conn, header)
            return
        handler = {
            BIND_TRANSMITTER: self._on_bind,
            BIND_RECEIVER: self._on_bind,
            BIND_TRANSCEIVER: self._on_bind,
            SUBMIT_SM: self._on_submit,
            ENQUIRE_LINK: self._on_enquire_link,
            UNBIND: self._on_unbind,
            QUERY_SM: self._on_query,
        }.get(header.command_id)
        if header.command_id == QUERY_SM and not self.config.query_sm:
            handler = None
        if handler is None:  # data_sm, query_sm, replace_sm, ... and unknown ids
            conn.send(generic_nack(header.sequence, ESME_RINVCMDID))
            return
        try:
            pdu = decode(raw)
        except PduDecodeError as exc:
            log.warning("smsc.bad_pdu", smsc=self.config.system_id, error=str(exc))
            conn.send(generic_nack(exc.sequence, exc.nack_status))
            return
        handler(conn, header, pdu, raw)

    def _on_response(self, conn: _EsmeConnection, header: Header) -> None:
        if header.command_id == _UNBIND_RESP and conn.unbound is not None:
            if not conn.unbound.done():
                conn.unbound.set_result(None)
            return
        outbound = conn.in_flight.pop(header.sequence, None)
        if outbound is None:
            if header.command_id != COMMAND_IDS["enquire_link_resp"]:
                log.warning("smsc.stray_response", smsc=self.config.system_id,
                            command=header.command, sequence=header.sequence)
            return
        if header.command_id == _DELIVER_SM_RESP and header.status == ESME_ROK:
            if outbound.is_receipt:
                self.receipts_acked += 1
        else:
            log.warning("smsc.deliver_refused", smsc=self.config.system_id,
                        command=header.command, status=status_name(header.status))

    def _on_enquire_link(self, conn: _EsmeConnection, header: Header, pdu: Any,
                         raw: bytes) -> None:
        # answered in any state: ESMEs probe links before binding, and SMSCs tolerate it
        conn.send(encode("enquire_link_resp", header.sequence))

    def _on_unbind(self, conn: _EsmeConnection, header: Header, pdu: Any,
                   raw: bytes) -> None:
        if not conn.bound:
            conn.send(encode("unbind_resp", header.sequence, status=ESME_RINVBNDSTS))
            return
        self.unanswered_at_unbind += len(conn.in_flight)
        conn.send(encode("unbind_resp", header.sequence))
        log.info("smsc.unbound", smsc=self.config.system_id, system_id=conn.system_id)
        conn.close()

    def _on_bind(self, conn: _EsmeConnection, header: Header, pdu: Any,
                 raw: bytes) -> None:
        command = _BIND_COMMANDS[header.command_id]
        system_id = (pdu.system_id or b"").decode("latin-1")
        status = self._check_bind(conn, system_id, (pdu.password or b"").decode("latin-1"))
        if status != ESME_ROK:
            log.info("smsc.bind_refused", smsc=self.config.system_id, system_id=system_id,
                     bind=command, status=status_name(status))
            conn.send(encode(f"{command}_resp", header.sequence, status=status))
            return
        conn.system_id, conn.bind_command = system_id, header.command_id
        conn.send(encode(f"{command}_resp", header.sequence,
                               system_id=self.config.system_id, sc_interface_version=0x34))
        log.info("smsc.bound", smsc=self.config.system_id, system_id=system_id, bind=command)
        if conn.can_receive:
            self._flush_waiting(system_id)

    def _check_bind(self, conn: _EsmeConnection, system_id: str, password: str) -> int:
        self.bind_attempts += 1
        if conn.bound:
            return ESME_RALYBND
        if time.monotonic() - self._started_at < self.config.stale_session:
            return ESME_RALYBND  # the ESME's previous session is still held here
        if self.config.bind_refusals:
            return self.config.bind_refusals.pop(0)
        expected = self.config.accounts.get(system_id)
        if expected is None:
            return ESME_RINVSYSID
        if not hmac.compare_digest(password.encode("latin-1"), expected.encode("latin-1")):
            return ESME_RINVPASWD
        return ESME_ROK

    # --- submit_sm and receipts ------------------------------------------------------

    def _on_submit(self, conn: _EsmeConnection, header: Header, pdu: Any,
                   raw: bytes) -> None:
        if not conn.can_transmit:
            if not conn.bound:
                self.submits_unbound += 1
            conn.send(encode("submit_sm_resp", header.sequence, status=ESME_RINVBNDSTS))
            return
        assert conn.system_id is not None
        sm = _submitted_sm(raw, pdu, conn.system_id)
        verdict = self.policy.decide(sm)
        if verdict.status == ESME_ROK and not sm.destination_addr:
            verdict = SubmitVerdict(status=ESME_RINVDSTADR)
        if verdict.disconnect:
            log.info("smsc.drop_connection", smsc=self.config.system_id, sequence=header.sequence)
            conn.close()
            return
        if not verdict.respond:
            log.info("smsc.submit_dropped", smsc=self.config.system_id, sequence=header.sequence)
            return
        if verdict.status != ESME_ROK or verdict.nack:
            self.rejected.append((sm, verdict.status))
            if verdict.nack:
                resp = generic_nack(header.sequence, verdict.status)
            else:
                resp = encode("submit_sm_resp", header.sequence, status=verdict.status)
            self._answer(conn, resp, verdict.delay)
            return
        sm.smsc_id = self._new_smsc_id()
        outcome = self._rng.choices(list(self.config.outcomes),
                                    weights=list(self.config.outcomes.values()))[0]
        self._outcomes[sm.smsc_id] = outcome
        self.submitted.append(sm)
        resp = encode("submit_sm_resp", header.sequence,
                            message_id="0" * self.config.id_leading_zeros + sm.smsc_id)
        wants = _wants_receipt(sm.registered_delivery, outcome) and self._receipt_for_part(sm)
        if wants and self.config.receipt_first:
            self._deliver(_Outbound(sm.system_id, receipt_fields(sm, outcome, self.config), is_receipt=True))
            wants = False
        self._answer(conn, resp, verdict.delay)
        if wants:
            self._spawn(self._receipt_later(sm, outcome))

    def _receipt_for_part(self, sm: SubmittedSm) -> bool:
        if not self.config.receipts:
            return False
        part = part_of(sm)
        if part is None or self.config.long_receipts == "all":
            return True
        total, seq = part
        return seq == (1 if self.config.long_receipts == "first" else total)

    def _on_query(self, conn: _EsmeConnection, header: Header, pdu: Any, raw: bytes) -> None:
        """query_sm (SMPP 3.4 §4.8): the state the SMSC holds for a message id it issued."""
        self.queries += 1
        smsc_id = (pdu.message_id or b"").decode("latin-1")
        sm = next((m for m in self.submitted if m.smsc_id == smsc_id), None)
        if sm is None:
            conn.send(encode("query_sm_resp", header.sequence, status=0x0C))  # ESME_RINVMSGID
            return
        outcome = self._outcomes[smsc_id]
        done = time.time() - sm.submitted_at >= self.config.receipt_delay
        state = MESSAGE_STATES[outcome] if done else MESSAGE_STATES["ENROUTE"]
        conn.send(encode("query_sm_resp", header.sequence, message_id=smsc_id,
                               final_date="", message_state=state, error_code=0))

    def _answer(self, conn: _EsmeConnection, resp: bytes, delay: float) -> None:
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, conn.send, resp)
        else:
            conn.send(resp)

    def _new_smsc_id(self) -> str:
        number, self._next_id = self._next_id, self._next_id + 1
        return format(number, "X") if self.config.id_format == "hex" else str(number)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)

    async def _receipt_later(self, sm: SubmittedSm, outcome: str) -> None:
        await asyncio.sleep(self.config.receipt_delay)
        self._deliver(_Outbound(sm.system_id, receipt_fields(sm, outcome, self.config), is_receipt=True))

    def _deliver(self, outbound: _Outbound) -> None:
        """Send on a receiver-capable bind of the account, or keep it until one binds."""
        conn = next((c for c in self._connections
                     if c.can_receive and c.system_id == outbound.system_id), None)
        if conn is None:
            self._waiting.setdefault(outbound.system_id, deque()).append(outbound)
            return
        sequence = conn.next_sequence()
        conn.in_flight[sequence] = outbound
        conn.send(encode("deliver_sm", sequence, **outbound.fields))
        if outbound.is_receipt:
            self.receipts_sent += 1

    def _flush_waiting(self, system_id: str) -> None:
        waiting = self._waiting.pop(system_id, deque())
        while waiting:
            self._deliver(waiting.popleft())



__all__ = ["SimulatorConfig", "SmscSimulator"]
