"""The asyncio shell around one SMPP session: a socket, a timer, reconnects.

All protocol decisions live in ``session.Session``; this module only moves
bytes between the transport and the session, arms the one timer the session
asks for, and reconnects with exponential backoff and jitter when the
connection ends.  Events go to the owner (the route) synchronously, in the
order the session produced them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Callable, Sequence, cast

import structlog

from ..ops import metrics
from ..config import SmppRouteConfig
from .events import BindRejected, Bound, Terminated
from .reconnect import Outcome, ReconnectBackoff
from .pdu import CREDENTIAL_STATUSES, status_name
from .session import BindMode, Session, SessionConfig, Submit

log = structlog.get_logger(__name__)

EventSink = Callable[["Connection", Sequence[object]], None]

_LIFECYCLE = (Bound, BindRejected, Terminated)  # the events this shell acts on itself


class _Protocol(asyncio.Protocol):
    def __init__(self, session: Session, sink: Callable[[Sequence[object]], None]) -> None:
        self.session = session
        self._sink = sink
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._flush_pending = False
        self.closed: asyncio.Future[str] = self._loop.create_future()

    # transport callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's TCPTransport quacks like one without
        # subclassing asyncio.Transport, and the assert made every bind fail silently on it.
        self._transport = cast(asyncio.Transport, transport)
        self.session.start(self._loop.time())
        self._flush()
        self._arm()

    def data_received(self, data: bytes) -> None:
        self._handle(self.session.receive_data(data, self._loop.time()))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer:
            self._timer.cancel()
        events = self.session.connection_lost()
        if events:
            self._sink(events)
        if not self.closed.done():
            self.closed.set_result(str(exc) if exc else "closed")

    # calls from the route

    def submit(self, item: Submit) -> int:
        now = self._loop.time()
        seq = self.session.submit(item, now)
        self._schedule_flush()
        # Every state change re-arms, so the timer is never later than the session's next
        # deadline; a submit adds only its own resp deadline. A timer due by then is still
        # right, and the per-submit next_deadline() is skipped (the usual case in a burst).
        timer = self._timer
        if timer is None or timer.when() > now + self.session.config.response_timeout:
            self._arm()
        return seq

    def acknowledge(self, sequence: int, status: int = 0) -> None:
        self.session.acknowledge(sequence, status)
        self._schedule_flush()

    def query(self, ref: Hashable, smsc_id: str, source_addr: str, ton: int, npi: int) -> None:
        self.session.query(ref, smsc_id, source_addr, ton, npi, self._loop.time())
        self._schedule_flush()
        self._arm()

    def unbind(self) -> None:
        self.session.unbind(self._loop.time())
        self._flush()
        self._arm()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # internals

    def _handle(self, events: Sequence[object]) -> None:
        if events:
            self._sink(events)
        self._flush()
        if any(isinstance(e, (Terminated, BindRejected)) for e in events):
            self.abort()
        else:
            self._arm()

    def _on_timer(self) -> None:
        self._timer = None
        self._handle(self.session.handle_timers(self._loop.time()))

    def _arm(self) -> None:
        deadline = self.session.next_deadline()
        if self._timer is not None:
            if deadline is not None and self._timer.when() <= deadline:
                return
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _schedule_flush(self) -> None:
        # Submits issued in one loop iteration leave in one write.
        if not self._flush_pending:
            self._flush_pending = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        data = self.session.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)


class Connection:
    """One bind to an SMSC, kept up for as long as the route runs."""

    def __init__(self, name: str, host: str, port: int, session_config: SessionConfig, sink: EventSink, *,
                 reconnect_min: float, reconnect_max: float, bind_retry_min: float) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.session_config = session_config
        self._sink = sink
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self._protocol: _Protocol | None = None
        self._bound = False
        self._stopping = False
        self._stop_requested = asyncio.Event()  # cuts a reconnect backoff short
        self.binds = 0  # successful binds so far, for status and tests
        self.bind_failures = 0  # bind_resp refusals, for status and metrics
        self.connect_attempts = 0
        # RALYBND, RBINDFAIL: the refused-bind clock, never below reconnect_min
        self.backoff = ReconnectBackoff(reconnect_min, reconnect_max, max(reconnect_min, bind_retry_min))
        self._outcome = Outcome.CONNECT_FAILED  # how the current attempt ended, set by _on_events
        self._unacked_drained = asyncio.Event()
        self._window: int | None = None  # AIMD override of session_config.window

    @property
    def bound(self) -> bool:
        return self._bound and self._protocol is not None

    def can_submit(self) -> bool:
        return self.bound and self._protocol is not None and self._protocol.session.can_submit()

    @property
    def outstanding(self) -> int:
        return self._protocol.session.outstanding if self._protocol is not None else 0

    def set_window(self, window: int) -> None:
        """The route's AIMD window; kept for the sessions of later reconnects too."""
        self._window = window
        if self._protocol is not None:
            self._protocol.session.window = window

    def submit(self, item: Submit) -> int:
        assert self._protocol is not None
        return self._protocol.submit(item)

    def query(self, ref: Hashable, smsc_id: str, source_addr: str, ton: int, npi: int) -> None:
        """query_sm for a part with no receipt; the answer comes as an event to the sink."""
        assert self._protocol is not None
        self._protocol.query(ref, smsc_id, source_addr, ton, npi)

    def acknowledge(self, sequence: int, status: int = 0) -> None:
        """Answer a deliver_sm, if the session that received it is still up.

        A non-zero ``status`` (ESME_RX_T_APPN) asks the SMSC to deliver it again later.
        """
        if self._protocol is not None and not self._protocol.closed.done():
            self._protocol.acknowledge(sequence, status)

    async def run(self) -> None:
        while not self._stopping:
            reason, outcome = await self._once()
            if self._stopping:
                break
            wait = self.backoff.next_delay(outcome)
            metrics.RECONNECTS.labels(self.name).inc()
            log.warning("smpp_reconnect", route=self.name, reason=reason, after=outcome.value,
                        in_seconds=round(wait, 2))
            try:
                await asyncio.wait_for(self._stop_requested.wait(), wait)
            except asyncio.TimeoutError:
                pass

    async def _once(self) -> tuple[str, Outcome]:
        loop = asyncio.get_running_loop()
        session = Session(self.session_config)
        if self._window is not None:
            session.window = self._window
        self.connect_attempts += 1
        self._outcome = Outcome.CONNECT_FAILED

        def factory() -> _Protocol:
            # Known before create_connection returns: the bind_resp (and the
            # route's first submit) can arrive before this task resumes.
            self._protocol = _Protocol(session, self._on_events)
            return self._protocol

        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(factory, self.host, self.port),
                timeout=self.session_config.response_timeout,
            )
        except (OSError, asyncio.TimeoutError) as e:
            self._protocol = None
            return f"connect failed: {e or type(e).__name__}", Outcome.CONNECT_FAILED
        if self._stopping:  # stop() came while we were connecting
            protocol.abort()
        try:
            # shielded: cancelling this task must not cancel the future stop() is waiting on
            reason = await asyncio.shield(protocol.closed)
        except asyncio.CancelledError:
            # A cancelled route must not leave a live bind behind: the SMSC
            # would keep sending it receipts that nobody stores or answers.
            protocol.abort()
            raise
        finally:
            self._protocol = None
            self._bound = False
        # Read from _outcome, set when the Bound / BindRejected event came: _bound itself is
        # already cleared by the Terminated event that ended the session (issue 14.1).
        return reason, self._outcome

    def _on_events(self, events: Sequence[object]) -> None:
        for e in events:
            if not isinstance(e, _LIFECYCLE):
                continue  # submit results, receipts: the route's business, most events
            if isinstance(e, Bound):
                self._bound = True
                self._outcome = Outcome.WAS_BOUND
                self.binds += 1
                log.info("smpp.bound", route=self.name, smsc=e.system_id, mode=str(self.session_config.bind_mode))
            elif isinstance(e, BindRejected):
                self.bind_failures += 1
                self._outcome = Outcome.CREDENTIALS if e.status in CREDENTIAL_STATUSES else Outcome.BIND_REFUSED
                log.error("smpp.bind_rejected", route=self.name, status=status_name(e.status),
                          attempt=self.connect_attempts, failures=self.bind_failures)
            elif isinstance(e, Terminated):
                self._bound = False
                level = log.info if self._stopping else log.warning
                level("smpp.terminated", route=self.name, reason=e.reason)
        self._sink(self, events)

    async def stop(self, timeout: float = 10.0) -> None:
        """Unbind politely, wait (bounded) for the SMSC's unbind_resp, close."""
        self._stopping = True
        self._stop_requested.set()
        protocol = self._protocol
        if protocol is None:
            return
        if self._bound:
            # Every deliver_sm already received is answered before the unbind (issue 14.4):
            # its store write is under way, and after the unbind_resp the answer could no
            # longer go out (the SMSC would deliver it again). Bounded: a store that never
            # answers must not keep the daemon from stopping.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout / 2
            while (protocol.session.unacknowledged and not protocol.closed.done()
                   and loop.time() < deadline):
                await asyncio.sleep(0.01)
            if protocol.session.unacknowledged:
                log.warning("smpp_stop_unanswered_deliver_sm", route=self.name,
                            count=protocol.session.unacknowledged)
            protocol.unbind()
        else:
            protocol.abort()
        try:
            await asyncio.wait_for(asyncio.shield(protocol.closed), timeout)
        except asyncio.TimeoutError:
            protocol.abort()


def session_config_for(cfg: SmppRouteConfig, bind_mode: str | None = None) -> SessionConfig:
    """``bind_mode`` overrides the route's, for each half of a transmitter + receiver pair."""
    return SessionConfig(
        system_id=cfg.system_id,
        password=cfg.password,
        system_type=cfg.system_type,
        bind_mode=BindMode(bind_mode or cfg.bind_mode),
        window=cfg.window,
        enquire_link_interval=cfg.enquire_link_interval,
        response_timeout=cfg.response_timeout,
        # auto: both ids read as-is here; the route then tries the hex<->dec readings (issue 14.6)
        receipt_id_base="as-is" if cfg.receipt_id_base == "auto" else cfg.receipt_id_base,
        resp_id_base=cfg.resp_id_base,
    )
