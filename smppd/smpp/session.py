"""Sans-I/O SMPP 3.4 ESME session: a state machine, no sockets, no clock.

In the style of h11 and aioquic: the caller feeds the bytes it read and the
current time, and gets back events. It drains the bytes to write with
``data_to_send()``, and calls ``handle_timers(now)`` when ``now`` reaches
``next_deadline()``. Nothing here awaits, reads a clock or touches a socket.
``now`` is any monotonic float in seconds (``loop.time()``). It must never go
backwards.

What the session owns: the bind, sequence numbers, the submit window,
``enquire_link`` keep-alive, response and inactivity timeouts, and answering
every SMSC request. The caller owns persistence, retries, throttling and
reconnecting.

Usage by the asyncio shell (``connection.py``)::

    s = Session(cfg)
    s.start(now); write(s.data_to_send())
    on bytes:   events = s.receive_data(data, now); write(s.data_to_send())
    on timer:   events = s.handle_timers(now);      write(s.data_to_send())
    on EOF:     events = s.connection_lost()

After ``Terminated`` or ``BindRejected``, the caller writes what
``data_to_send()`` still holds (such as an ``unbind_resp``) and then closes the
socket. A new connection needs a new ``Session``.

Decisions, in the same order as Kannel's ``gw/smsc/smsc_smpp.c``
(``handle_pdu`` and ``io_thread``). Deviations from Kannel are marked.

* ``ESME_RALYBND`` (0x05) in a bind_resp is a bind failure (SMPP 3.4 §5.1.3,
  reference §4 "back off and retry"): ``BindRejected(0x05)``, and nothing is
  ever submitted on this connection. Deviation: Kannel takes it as success, and
  against an SMSC still holding our stale session that pushed a full window of
  submits into each closing socket (issue 14.2).
* ``ESME_RINVBNDSTS`` (0x04) in a submit_sm_resp or generic_nack means the SMSC
  does not consider us bound. That submit is reported as a *temporary*
  ``SubmitRejected`` (the part is requeued, as reference §4 says), and the
  session terminates so that the caller rebinds. Kannel treats 0x04 as a
  final error and keeps the connection.
* A deliver_sm or data_sm that the codec cannot decode is answered at once with
  its own response type, the header's sequence and an error status. No event is
  raised, and the raw PDU is logged. The status is the codec's
  ``PduDecodeError.nack_status``, which names the defect (RINVCMDLEN,
  RINVMSGLEN, RINVOPTPARSTREAM, or RSYSERR for a receipt without a usable id).
  Any other exception gives ``ESME_RSYSERR`` (0x08). This is what Kannel does
  for a deliver_sm it decoded but cannot use (``pdu_to_msg`` returns a reason,
  such as RINVSRCADR or RINVESMCLASS, in the deliver_sm_resp). For a PDU it
  cannot unpack at all, Kannel sends ``generic_nack(ESME_RINVCMDLEN)`` with
  sequence **0**, which no SMSC can match, so the SMSC redelivers only after
  its own timeout. We do not copy that: reference §8 says to answer by the
  header's sequence. A non-zero status also lets the SMSC redeliver later,
  for example after the codec is fixed, instead of losing the receipt
  silently.
* deliver_sm or data_sm on a transmitter bind, or before the bind completes, is
  answered with ``ESME_RINVBNDSTS`` and no event, so the SMSC can redeliver it
  on a proper bind. Kannel ignores it with no answer.
* ``query(...)`` sends a query_sm (issue 14.8: a part with no receipt); its answer is
  ``QueryAnswered`` or ``QueryFailed`` (error status, generic_nack or timeout). A
  query uses no window slot: the route paces queries with its throughput cap.
* Requests we do not serve (query_sm, replace_sm, cancel_sm, submit_sm,
  bind_*, outbind, unknown ids) get ``generic_nack(ESME_RINVCMDID)`` with
  their sequence, as in Kannel. ``alert_notification`` has no response in the
  spec and is only logged. Unknown *responses* are never nacked, only logged.
* ``enquire_link`` from the SMSC is answered in every state except CLOSED.
  Kannel ignores it before the bind. It harms nothing, and some SMSCs probe
  early.
* Receipts and MO are acknowledged only when the caller calls
  ``acknowledge()``, after storing them. A receipt that arrives just before the
  connection dies is therefore redelivered, not lost (at-least-once).
* A submit whose resp times out is ``SubmitUnconfirmed`` and frees its window
  slot, like Kannel's ``wait-ack-expire = 0x01`` (requeue, may duplicate). A
  late resp for it is logged with the original ref and smsc_id, for
  reconciliation, and otherwise ignored.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from types import MappingProxyType
from typing import Any

import structlog

from .encode import empty_id_resp, encode, generic_nack
from .events import (
    BindRejected,
    Bound,
    Event,
    MessageReceived,
    QueryAnswered,
    QueryFailed,
    ReceiptReceived,
    SubmitAccepted,
    SubmitRejected,
    SubmitUnconfirmed,
    Terminated,
)
from .pdu import (
    ALERT_NOTIFICATION,
    BIND_RECEIVER_RESP,
    BIND_TRANSCEIVER_RESP,
    BIND_TRANSMITTER_RESP,
    COMMAND_NAMES,
    DATA_SM,
    DELIVER_SM,
    ENQUIRE_LINK,
    ENQUIRE_LINK_RESP,
    ESME_RINVBNDSTS,
    ESME_RINVCMDID,
    ESME_ROK,
    ESME_RSYSERR,
    ESME_RX_T_APPN,
    GENERIC_NACK,
    HEADER,
    MAX_SEQUENCE,
    QUERY_SM_RESP,
    RESPONSE_BIT,
    SUBMIT_SM_RESP,
    UNBIND,
    UNBIND_RESP,
    Framer,
    FramingError,
    Header,
    decode,
    is_temporary,
    read_header,
    response_message_id,
    status_name,
)
from .receipts import canonical_smsc_id, parse_deliver, parse_receipt

log = structlog.get_logger(__name__)

__all__ = [
    "BindMode",
    "Session",
    "SessionConfig",
    "State",
    "Submit",
    "UNDECODABLE_DELIVER_STATUS",
]

_BIND_RESPS = frozenset({BIND_RECEIVER_RESP, BIND_TRANSMITTER_RESP, BIND_TRANSCEIVER_RESP})

# Status of the response to an undecodable deliver_sm/data_sm when the codec names none
# (see the module docstring).
UNDECODABLE_DELIVER_STATUS = ESME_RSYSERR

# How many timed-out submits to remember, so that a late resp can be logged with its ref.
_EXPIRED_MEMORY = 1024
# How much of an undecodable PDU to log, in bytes.
_LOG_RAW_BYTES = 512


class BindMode(StrEnum):
    TRANSCEIVER = "transceiver"
    TRANSMITTER = "transmitter"
    RECEIVER = "receiver"


_BIND_COMMAND = {
    BindMode.TRANSCEIVER: "bind_transceiver",
    BindMode.TRANSMITTER: "bind_transmitter",
    BindMode.RECEIVER: "bind_receiver",
}


class State(Enum):
    IDLE = "idle"  # created, start() not called yet
    BINDING = "binding"  # bind sent, waiting for bind_resp
    BOUND = "bound"
    UNBINDING = "unbinding"  # our unbind sent, waiting for unbind_resp
    CLOSED = "closed"  # terminal: the caller closes the transport


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """What one bind runs with. The daemon builds it from a validated ``SmppRouteConfig``
    (``connection.session_config_for``), so the route's keys have no default and no check
    here: both are written once, in ``smppd.config``. Only what no config key sets keeps a
    default of its own."""

    system_id: str
    password: str = field(repr=False)  # never in repr(), so never in a log line
    system_type: str
    bind_mode: BindMode
    window: int  # outstanding submit_sm
    enquire_link_interval: float  # sent when nothing has been sent for this long
    response_timeout: float  # bind_resp, enquire_link_resp, submit_sm_resp, unbind_resp
    receipt_id_base: str  # "as-is" | "hex" | "dec": passed to parse_receipt
    # Base of the message_id in submit_sm_resp, when it differs from the receipts'
    # (Kannel msg-id-type bit 0 vs bit 1, Jasmin dlr_msgid 1/2). None: same as receipt_id_base.
    resp_id_base: str | None
    addr_ton: int = 0
    addr_npi: int = 0
    address_range: str = ""
    inactivity_timeout: float = 300.0  # nothing received at all for this long -> terminate


_NO_TLVS: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Submit:
    """One segment, that is one submit_sm."""

    ref: Hashable  # the caller's key, returned in the events
    source_addr: str
    source_addr_ton: int
    source_addr_npi: int
    destination_addr: str  # digits, no '+'
    registered_delivery: int  # the route's (SmppRouteConfig.registered_delivery)
    dest_addr_ton: int = 1
    dest_addr_npi: int = 1
    esm_class: int = 0
    data_coding: int = 0
    short_message: bytes = b""
    # Extra fields for encode: sar_* TLVs, message_payload (then short_message must be
    # empty), validity_period, ...
    tlvs: Mapping[str, Any] = field(default_factory=lambda: _NO_TLVS)


@dataclass(slots=True)
class _Outstanding:
    ref: Hashable
    deadline: float


def _text(value: Any) -> str:
    """A parsed C-string (bytes from smpplib, or None) as str."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


# --- the session ------------------------------------------------------------------------------


class Session:
    """One SMPP bind over one transport connection. See the module docstring."""

    def __init__(
        self,
        config: SessionConfig,
        *,
        first_sequence: int = 1,
        logger: Any = None,
    ) -> None:
        if not 1 <= first_sequence <= MAX_SEQUENCE:
            raise ValueError(f"first_sequence must be in 1..{MAX_SEQUENCE:#x}")
        self._config = config
        self._log = (logger if logger is not None else log).bind(
            system_id=config.system_id, bind_mode=str(config.bind_mode)
        )
        self._state = State.IDLE
        self._framer = Framer()
        self._out: list[bytes] = []
        self._next_seq = first_sequence
        self._window = config.window
        self._can_transmit = config.bind_mode is not BindMode.RECEIVER
        self._can_receive = config.bind_mode is not BindMode.TRANSMITTER
        self._resp_id_base = (
            config.resp_id_base if config.resp_id_base is not None else config.receipt_id_base
        )
        # seq -> _Outstanding, in send order: deadlines ascend because ``now`` never goes back.
        self._submits: dict[int, _Outstanding] = {}
        self._queries: dict[int, _Outstanding] = {}  # query_sm awaiting query_sm_resp
        # Timed-out submits, seq -> ref, so a late resp can be logged meaningfully.
        self._expired: OrderedDict[int, Hashable] = OrderedDict()
        # deliver_sm/data_sm reported but not acknowledged yet: seq -> response command name.
        self._unacked: dict[int, str] = {}
        self._bind_seq: int | None = None
        self._bind_deadline = 0.0
        self._unbind_seq: int | None = None
        self._unbind_deadline = 0.0
        self._enquire_seq: int | None = None
        self._enquire_deadline = 0.0
        self._last_sent = 0.0
        self._last_received = 0.0

    # --- introspection ---------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def config(self) -> SessionConfig:
        return self._config

    @property
    def outstanding(self) -> int:
        """submit_sm sent and not yet answered (or timed out)."""
        return len(self._submits)

    @property
    def window(self) -> int:
        return self._window

    @window.setter
    def window(self, value: int) -> None:
        """The caller may lower or raise it at any time (AIMD). 0 pauses submitting.

        Lowering it below ``outstanding`` cancels nothing: it only blocks new submits until
        enough responses have come back.
        """
        if value < 0:
            raise ValueError(f"window must be >= 0, got {value}")
        self._window = value

    @property
    def unacknowledged(self) -> int:
        """deliver_sm/data_sm reported as events and not yet acknowledged."""
        return len(self._unacked)

    def can_submit(self) -> bool:
        return (
            self._state is State.BOUND
            and self._can_transmit
            and len(self._submits) < self._window
        )

    # --- caller actions --------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Queue the bind PDU for the configured mode. Call once the transport is connected."""
        if self._state is not State.IDLE:
            raise RuntimeError(f"start() in state {self._state.name}")
        cfg = self._config
        seq = self._allocate_sequence()
        self._queue(
            encode(
                _BIND_COMMAND[cfg.bind_mode],
                seq,
                system_id=cfg.system_id,
                password=cfg.password,
                system_type=cfg.system_type,
                interface_version=0x34,
                addr_ton=cfg.addr_ton,
                addr_npi=cfg.addr_npi,
                address_range=cfg.address_range,
            ),
            now,
        )
        self._bind_seq = seq
        self._bind_deadline = now + cfg.response_timeout
        self._last_received = now  # the inactivity clock starts with the connection
        self._state = State.BINDING
        self._log.info("smpp.bind_sent", sequence=seq)

    def submit(self, item: Submit, now: float) -> int:
        """Queue one submit_sm and return its sequence number."""
        if not self.can_submit():
            raise RuntimeError(
                f"cannot submit: state={self._state.name} mode={self._config.bind_mode} "
                f"outstanding={len(self._submits)} window={self._window}"
            )
        fields: dict[str, Any] = dict(item.tlvs)  # sar_* TLVs, message_payload, validity_period, ...
        if "message_payload" in fields:
            if item.short_message:
                raise ValueError("short_message and message_payload are mutually exclusive")
        else:
            fields["short_message"] = item.short_message
        seq = self._allocate_sequence()
        raw = encode(
            "submit_sm",
            seq,
            service_type="",
            source_addr_ton=item.source_addr_ton,
            source_addr_npi=item.source_addr_npi,
            source_addr=item.source_addr,
            dest_addr_ton=item.dest_addr_ton,
            dest_addr_npi=item.dest_addr_npi,
            destination_addr=item.destination_addr,
            esm_class=item.esm_class,
            registered_delivery=item.registered_delivery,
            data_coding=item.data_coding,
            **fields,
        )
        # Registered only once encoding succeeded: an encoding error raises and uses no slot.
        self._submits[seq] = _Outstanding(item.ref, now + self._config.response_timeout)
        self._queue(raw, now)
        return seq

    def query(self, ref: Hashable, smsc_id: str, source_addr: str, source_addr_ton: int,
              source_addr_npi: int, now: float) -> int:
        """Queue a query_sm for an id the SMSC issued; returns its sequence number."""
        if self._state is not State.BOUND or not self._can_transmit:
            raise RuntimeError(f"cannot query: state={self._state.name} mode={self._config.bind_mode}")
        seq = self._allocate_sequence()
        raw = encode("query_sm", seq, message_id=smsc_id, source_addr_ton=source_addr_ton,
                           source_addr_npi=source_addr_npi, source_addr=source_addr)
        self._queries[seq] = _Outstanding(ref, now + self._config.response_timeout)
        self._queue(raw, now)
        return seq

    def acknowledge(self, sequence: int, status: int = ESME_ROK) -> None:
        """Answer a reported deliver_sm/data_sm (deliver_sm_resp, empty message_id).

        ``status`` other than 0 asks the SMSC to redeliver later. Use ESME_RX_T_APPN (0x64)
        when the receipt could not be stored. Acknowledging after the session has ended
        is a no-op: the SMSC redelivers on the next bind.
        """
        if self._state in (State.IDLE, State.CLOSED):
            self._log.debug("smpp.ack_after_close", sequence=sequence)
            return
        command = self._unacked.pop(sequence, None)
        if command is None:
            self._log.warning("smpp.ack_unknown_sequence", sequence=sequence)
            return
        self._out.append(empty_id_resp(command, sequence, status))

    def unbind(self, now: float) -> None:
        """Graceful close: queue unbind and submit no more. Then Terminated on unbind_resp or timeout.

        Responses to submits still outstanding are matched until unbind_resp arrives. Those
        still open then are reported as SubmitUnconfirmed. For the fewest duplicates, wait for
        ``outstanding == 0`` (with a bound) before calling this.
        """
        if self._state in (State.UNBINDING, State.CLOSED):
            return
        if self._state is State.IDLE:
            self._state = State.CLOSED
            return
        seq = self._allocate_sequence()
        self._queue(encode("unbind", seq), now)
        self._unbind_seq = seq
        self._unbind_deadline = now + self._config.response_timeout
        self._enquire_seq = None  # keep-alive no longer matters
        self._state = State.UNBINDING
        self._log.info("smpp.unbind_sent", sequence=seq, outstanding=len(self._submits))

    def connection_lost(self) -> list[Event]:
        """The transport died. Every outstanding submit becomes SubmitUnconfirmed, state CLOSED."""
        if self._state is State.CLOSED:
            return []
        events: list[Event] = []
        self._close(events, "connection lost")
        self._log.warning("smpp.connection_lost", unconfirmed=len(events))
        return events

    def data_to_send(self) -> bytes:
        """Drain the queued outgoing bytes, coalesced into one write."""
        if not self._out:
            return b""
        data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        self._out.clear()
        return data

    # --- input -------------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        events: list[Event] = []
        if self._state is State.CLOSED:
            if data:
                self._log.debug("smpp.data_after_close", length=len(data))
            return events
        if not data:
            return events
        self._last_received = now
        try:
            pdus = self._framer.feed(data)
        except FramingError as exc:
            self._log.error("smpp.framing_error", error=str(exc))
            return self._terminate(events, f"framing error: {exc}")
        for raw in pdus:
            self._handle_pdu(raw, now, events)
            if self._state is State.CLOSED:
                break  # whatever follows an unbind or a terminal error is not ours to process
        error = self._framer.error
        if error is not None and self._state is not State.CLOSED:
            # The good PDUs before the garbage were handled above (their acks are queued).
            self._log.error("smpp.framing_error", error=str(error))
            return self._terminate(events, f"framing error: {error}")
        return events

    # --- timers ------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When to call handle_timers() next, or None while there is nothing to time."""
        state = self._state
        if state is State.IDLE or state is State.CLOSED:
            return None
        cfg = self._config
        deadline = self._last_received + cfg.inactivity_timeout
        if state is State.BINDING:
            deadline = min(deadline, self._bind_deadline)
        elif state is State.UNBINDING:
            deadline = min(deadline, self._unbind_deadline)
        elif self._enquire_seq is not None:
            deadline = min(deadline, self._enquire_deadline)
        else:
            deadline = min(deadline, self._last_sent + cfg.enquire_link_interval)
        if self._submits:
            deadline = min(deadline, next(iter(self._submits.values())).deadline)
        if self._queries:
            deadline = min(deadline, next(iter(self._queries.values())).deadline)
        return deadline

    def handle_timers(self, now: float) -> list[Event]:
        events: list[Event] = []
        state = self._state
        if state is State.IDLE or state is State.CLOSED:
            return events
        cfg = self._config
        if state is State.BINDING and now >= self._bind_deadline:
            self._log.error("smpp.bind_timeout", timeout=cfg.response_timeout)
            return self._terminate(events, "bind_resp timeout")
        if state is State.UNBINDING and now >= self._unbind_deadline:
            self._log.warning("smpp.unbind_timeout", timeout=cfg.response_timeout)
            return self._terminate(events, "unbind_resp timeout")
        if now >= self._last_received + cfg.inactivity_timeout:
            self._log.error("smpp.inactivity_timeout", idle=now - self._last_received)
            return self._terminate(events, "inactivity timeout")
        if self._enquire_seq is not None and now >= self._enquire_deadline:
            self._log.error("smpp.enquire_link_timeout", sequence=self._enquire_seq)
            return self._terminate(events, "enquire_link_resp timeout")

        submits = self._submits
        while submits:
            seq, entry = next(iter(submits.items()))
            if entry.deadline > now:
                break
            del submits[seq]
            self._remember_expired(seq, entry.ref)
            self._log.warning("smpp.submit_resp_timeout", sequence=seq, ref=entry.ref)
            events.append(SubmitUnconfirmed(entry.ref, "submit_sm_resp timeout"))
        queries = self._queries
        while queries:
            seq, entry = next(iter(queries.items()))
            if entry.deadline > now:
                break
            del queries[seq]
            events.append(QueryFailed(entry.ref, ESME_ROK))

        if (
            self._state is State.BOUND
            and self._enquire_seq is None
            and now >= self._last_sent + cfg.enquire_link_interval
        ):
            seq = self._allocate_sequence()
            self._queue(encode("enquire_link", seq), now)
            self._enquire_seq = seq
            self._enquire_deadline = now + cfg.response_timeout
            self._log.debug("smpp.enquire_link_sent", sequence=seq)
        return events

    # --- internals: output ------------------------------------------------------------------

    def _allocate_sequence(self) -> int:
        """1..0x7FFFFFFF, wrapping to 1, never 0, skipping numbers still outstanding."""
        while True:
            seq = self._next_seq
            self._next_seq = 1 if seq >= MAX_SEQUENCE else seq + 1
            if seq not in self._submits and seq not in self._queries:
                return seq

    def _queue(self, raw: bytes, now: float) -> None:
        """Queue a request of ours. It restarts the enquire_link idle clock.

        Responses (acks, enquire_link_resp, nacks) go straight to ``_out``: acknowledge() is
        not given a ``now``, and they do not restart the clock. At worst that costs one extra
        enquire_link per interval.
        """
        self._out.append(raw)
        self._last_sent = now

    def _generic_nack(self, sequence: int, status: int) -> None:
        self._out.append(generic_nack(sequence, status))

    # --- internals: termination -------------------------------------------------------------

    def _close(self, events: list[Event], reason: str) -> None:
        for entry in self._submits.values():
            events.append(SubmitUnconfirmed(entry.ref, reason))
        self._submits.clear()
        for entry in self._queries.values():
            events.append(QueryFailed(entry.ref, ESME_ROK))
        self._queries.clear()
        self._unacked.clear()
        self._enquire_seq = None
        self._state = State.CLOSED

    def _terminate(self, events: list[Event], reason: str) -> list[Event]:
        self._close(events, reason)
        events.append(Terminated(reason))  # logged by the caller, with the route (connection.py)
        return events

    def _remember_expired(self, seq: int, ref: Hashable) -> None:
        self._expired[seq] = ref
        if len(self._expired) > _EXPIRED_MEMORY:
            self._expired.popitem(last=False)

    # --- internals: input -------------------------------------------------------------------

    def _handle_pdu(self, raw: bytes, now: float, events: list[Event]) -> None:
        # The two PDUs of every message first, from the header's fields: a Header object
        # per PDU is a measurable share of the receive path.  The framer only hands over
        # whole PDUs, so the header is always there.
        _, cid, status, sequence = HEADER.unpack_from(raw)
        if cid == SUBMIT_SM_RESP:
            self._on_submit_resp(sequence, status, raw, events)
            return
        if cid == DELIVER_SM:
            self._on_deliver(cid, sequence, raw, events)
            return
        header = read_header(raw)
        if cid & RESPONSE_BIT:
            if cid == ENQUIRE_LINK_RESP:
                self._on_enquire_link_resp(header)
            elif cid == GENERIC_NACK:
                self._on_generic_nack(header, events)
            elif cid == QUERY_SM_RESP:
                self._on_query_resp(header, raw, events)
            elif cid in _BIND_RESPS:
                self._on_bind_resp(header, raw, events)
            elif cid == UNBIND_RESP:
                self._on_unbind_resp(header, events)
            else:
                self._log.warning(
                    "smpp.unexpected_response",
                    command=COMMAND_NAMES.get(cid, f"{cid:#010x}"),
                    sequence=header.sequence,
                    status=header.status,
                )
            return
        if cid == DATA_SM:
            self._on_deliver(cid, header.sequence, raw, events)
        elif cid == ENQUIRE_LINK:
            self._out.append(encode("enquire_link_resp", header.sequence))
        elif cid == UNBIND:
            self._out.append(encode("unbind_resp", header.sequence))
            self._log.warning("smpp.unbind_received", sequence=header.sequence)
            self._terminate(events, "unbound by SMSC")
        elif cid == ALERT_NOTIFICATION:
            self._log.info("smpp.alert_notification_ignored", sequence=header.sequence)
        else:
            self._log.warning(
                "smpp.unsupported_request",
                command=COMMAND_NAMES.get(cid, f"{cid:#010x}"),
                sequence=header.sequence,
            )
            self._generic_nack(header.sequence, ESME_RINVCMDID)

    def _on_bind_resp(self, header: Header, raw: bytes, events: list[Event]) -> None:
        if self._state is not State.BINDING:
            self._log.warning(
                "smpp.bind_resp_ignored", state=self._state.name, sequence=header.sequence
            )
            return
        if header.sequence != self._bind_seq:
            # Only one bind is ever in flight, so it is ours. Some SMSCs echo a wrong number.
            self._log.warning(
                "smpp.bind_resp_sequence_mismatch",
                expected=self._bind_seq,
                sequence=header.sequence,
            )
        status = header.status
        if status != ESME_ROK:
            self._close(events, "bind rejected")
            events.append(BindRejected(status))  # logged by the caller, with the route
            return
        system_id = ""
        try:
            system_id = _text(decode(raw).system_id)
        except Exception as exc:  # an unreadable body does not undo a successful bind
            self._log.warning("smpp.bind_resp_body_unreadable", error=repr(exc))
        self._state = State.BOUND
        self._bind_seq = None
        events.append(Bound(system_id, status))  # logged by the caller, with the route

    def _on_submit_resp(self, seq: int, status: int, raw: bytes, events: list[Event]) -> None:
        entry = self._submits.pop(seq, None)
        if entry is None:
            self._log_stray_submit_resp(read_header(raw), raw)
            return
        if status == ESME_ROK:
            raw_id = ""
            try:
                raw_id = response_message_id(raw)
            except Exception as exc:
                # Kannel: accepted without a message_id is still accepted. Requeueing would
                # send a duplicate. The receipt cannot be matched, and polling must settle it.
                self._log.error(
                    "smpp.submit_resp_body_unreadable",
                    sequence=seq,
                    ref=entry.ref,
                    error=repr(exc),
                    raw=raw[:_LOG_RAW_BYTES].hex(),
                )
            if not raw_id:
                self._log.error("smpp.submit_resp_without_message_id", sequence=seq, ref=entry.ref)
            events.append(SubmitAccepted(entry.ref, self._canonical_resp_id(raw_id), raw_id))
            return
        self._submit_failed(seq, entry.ref, status, events, source="submit_sm_resp")

    def _submit_failed(
        self, seq: int, ref: Hashable, status: int, events: list[Event], *, source: str
    ) -> None:
        if status == ESME_RINVBNDSTS:
            self._log.error("smpp.not_bound_per_smsc", sequence=seq, ref=ref, via=source)
            events.append(SubmitRejected(ref, status, True))
            self._terminate(events, "SMSC reports session not bound (ESME_RINVBNDSTS)")
            return
        # A generic_nack with status 0 is nonsense. It is still not an acceptance, so requeue.
        temporary = status == ESME_ROK or is_temporary(status)
        self._log.info(
            "smpp.submit_rejected",
            sequence=seq,
            ref=ref,
            status=status,
            status_name=status_name(status),
            temporary=temporary,
            via=source,
        )
        events.append(SubmitRejected(ref, status, temporary))

    def _log_stray_submit_resp(self, header: Header, raw: bytes) -> None:
        seq = header.sequence
        ref = self._expired.pop(seq, None)
        if ref is None:
            self._log.warning(
                "smpp.submit_resp_unknown_sequence", sequence=seq, status=header.status
            )
            return
        # Resp for a submit we already reported as unconfirmed: the requeued copy will be a
        # duplicate if this one was accepted. Log enough to reconcile.
        smsc_id = ""
        if header.status == ESME_ROK:
            try:
                smsc_id = response_message_id(raw)
            except Exception:
                pass
        self._log.warning(
            "smpp.submit_resp_late",
            sequence=seq,
            ref=ref,
            status=header.status,
            smsc_id=smsc_id,
        )

    def _canonical_resp_id(self, raw_id: str) -> str:
        if not raw_id:
            return ""
        try:
            return canonical_smsc_id(raw_id, self._resp_id_base)
        except ValueError:
            # e.g. base 16 configured but the SMSC sent something else: keep it comparable.
            self._log.warning("smpp.smsc_id_not_in_base", raw=raw_id, base=self._resp_id_base)
            return canonical_smsc_id(raw_id, "as-is")

    def _on_enquire_link_resp(self, header: Header) -> None:
        if self._enquire_seq is not None and header.sequence == self._enquire_seq:
            self._enquire_seq = None
            if header.status != ESME_ROK:
                # Kannel logs and carries on: the SMSC answered, so the link is alive.
                self._log.warning("smpp.enquire_link_resp_error", status=header.status)
            return
        self._log.debug("smpp.enquire_link_resp_unexpected", sequence=header.sequence)

    def _on_unbind_resp(self, header: Header, events: list[Event]) -> None:
        if self._state is State.UNBINDING and header.sequence == self._unbind_seq:
            self._log.info("smpp.unbound", status=header.status)
            self._terminate(events, "unbound")
            return
        self._log.warning(
            "smpp.unbind_resp_unexpected", sequence=header.sequence, state=self._state.name
        )

    def _on_query_resp(self, header: Header, raw: bytes, events: list[Event]) -> None:
        entry = self._queries.pop(header.sequence, None)
        if entry is None:
            self._log.warning("smpp.query_sm_resp_unknown_sequence", sequence=header.sequence)
            return
        if header.status != ESME_ROK:
            events.append(QueryFailed(entry.ref, header.status))
            return
        try:
            pdu = decode(raw)
            events.append(QueryAnswered(entry.ref, int(pdu.message_state or 0), int(pdu.error_code or 0)))
        except Exception as exc:
            self._log.warning("smpp.query_sm_resp_unreadable", error=repr(exc), raw=raw[:_LOG_RAW_BYTES].hex())
            events.append(QueryFailed(entry.ref, ESME_RSYSERR))

    def _on_generic_nack(self, header: Header, events: list[Event]) -> None:
        seq, status = header.sequence, header.status
        entry = self._submits.pop(seq, None)
        if entry is not None:
            self._submit_failed(seq, entry.ref, status, events, source="generic_nack")
            return
        query = self._queries.pop(seq, None)
        if query is not None:
            events.append(QueryFailed(query.ref, status or ESME_RSYSERR))
            return
        if self._state is State.BINDING and seq == self._bind_seq:
            self._log.error("smpp.bind_nacked", status=status)
            self._close(events, "bind rejected")
            events.append(BindRejected(status if status else ESME_RSYSERR))
            return
        if self._state is State.UNBINDING and seq == self._unbind_seq:
            self._log.warning("smpp.unbind_nacked", status=status)
            self._terminate(events, "unbound")
            return
        if self._enquire_seq is not None and seq == self._enquire_seq:
            # The SMSC answered, so it is alive, even if it dislikes our enquire_link.
            self._enquire_seq = None
            self._log.warning("smpp.enquire_link_nacked", status=status)
            return
        # Unknown sequence (or a nack for an ack we sent): log, keep the bind (reference §3).
        self._log.error(
            "smpp.generic_nack",
            sequence=seq,
            status=status,
            status_name=status_name(status),
        )

    def _on_deliver(self, command_id: int, seq: int, raw: bytes, events: list[Event]) -> None:
        resp = "deliver_sm_resp" if command_id == DELIVER_SM else "data_sm_resp"
        if self._state is State.UNBINDING:
            # Our unbind is out: the answer could not wait for a store write (the unbind_resp
            # may come first), so the SMSC is asked to deliver it again on the next bind.
            self._log.info("smpp.deliver_while_unbinding", sequence=seq)
            self._out.append(encode(resp, seq, status=ESME_RX_T_APPN, message_id=""))
            return
        if self._state is not State.BOUND:
            self._log.warning("smpp.deliver_before_bound", sequence=seq, state=self._state.name)
            self._out.append(encode(resp, seq, status=ESME_RINVBNDSTS, message_id=""))
            return
        if not self._can_receive:
            self._log.warning("smpp.deliver_on_transmitter", sequence=seq)
            self._out.append(encode(resp, seq, status=ESME_RINVBNDSTS, message_id=""))
            return
        event: Event
        try:
            receipt = parse_receipt(raw, id_base=self._config.receipt_id_base)
            if receipt is not None:
                event = ReceiptReceived(seq, receipt)
            else:
                event = MessageReceived(seq, parse_deliver(raw))
        except Exception as exc:
            # Not only PduDecodeError: whatever the codec trips over, the SMSC gets its answer.
            status = getattr(exc, "nack_status", None) or UNDECODABLE_DELIVER_STATUS
            self._log.error(
                "smpp.deliver_undecodable",
                command=resp[:-5],
                sequence=seq,
                error=str(exc),
                error_type=type(exc).__name__,
                answered_status=status_name(status),
                # the header only: the body holds the number and the text (issue 19 §6)
                header=raw[:16].hex(), length=len(raw),
            )
            self._out.append(encode(resp, seq, status=status, message_id=""))
            return
        if seq in self._unacked:
            self._log.warning("smpp.deliver_sequence_reused", sequence=seq)
        self._unacked[seq] = resp
        events.append(event)
