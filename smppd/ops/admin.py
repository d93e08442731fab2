"""The daemon's admin methods, called by ``smppd send/status/retry/cancel``.

They run inside the daemon because they must act on its live state: a test
message has to take the real path (intake, store, the route's queue), and a
retried segment must not be queued twice.  The RPC socket already admits
only root, the daemon's user and the socket's group (SO_PEERCRED), so these
methods need no authentication of their own.
"""

from __future__ import annotations

import uuid
from typing import Any, Mapping, Protocol

import structlog

from .. import phone
from ..config import Config
from ..rules.holds import HoldWorker
from ..model import OPEN as OPEN_STATUSES, Status
from ..routes.base import Route
from ..rpc import RpcError
from ..store import PortalRecord, Store

log = structlog.get_logger(__name__)


class AdminHost(Protocol):
    """The live daemon as the admin methods act on it; the daemon hands in a view of itself.

    A protocol, not the daemon's class: the daemon wires the parts, so no part
    imports it (tests/test_structure.py holds that).
    """

    @property
    def config(self) -> Config: ...
    @property
    def store(self) -> Store: ...
    @property
    def routes(self) -> Mapping[str, Route]: ...
    @property
    def holds(self) -> HoldWorker: ...
    @property
    def portals(self) -> Mapping[str, PortalRecord]: ...

    async def intake(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """A HANDLER post's parameters through intake, as the shim would send them."""
        ...

    async def status(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The daemon's ``status`` RPC answer: routes, pushers, store counts, rules."""
        ...

OPEN = tuple(s.value for s in Status if s in OPEN_STATUSES)  # words, as the store binds them
CANCELLED = "cancelled by admin"
MAX_SELECT = 10_000  # one retry/cancel call touches at most this many messages


class Admin:
    def __init__(self, daemon: AdminHost) -> None:
        self.daemon = daemon

    def methods(self) -> dict[str, Any]:
        return {"send": self.send, "message": self.message, "stuck": self.stuck,
                "retry": self.retry, "cancel": self.cancel, "status": self.status}

    # --- status ---------------------------------------------------------------------

    async def status(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The daemon's status plus the figures an admin asks for next: window, binds, outbox per portal."""
        out = await self.daemon.status(params)
        # A full disk: the read could wait behind held writes; the status above already says why.
        by_portal = {} if self.daemon.store.unavailable is not None else await self.daemon.store.outbox_by_portal()
        now = self.daemon.store.clock()
        outbox = {m: {"updates": n, "oldest_seconds": round(now - oldest, 1)} for m, (n, oldest) in by_portal.items()}
        for member_id, p in out["pushers"].items():
            p.update(outbox.get(member_id, {"updates": 0, "oldest_seconds": 0.0}))
        return out

    # --- send -----------------------------------------------------------------------

    async def send(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """A test message through intake, exactly as if its portal had posted it.

        It gets a fresh Bitrix24-style id that the portal does not know, so
        the status updates for it end as ERROR_MESSAGE_NOT_FOUND, which the
        pusher drops (one wasted command in a batch, nothing else).
        """
        code, to, text = (_field(params, k) for k in ("code", "to", "text"))
        sender = self.daemon.config.senders.get(code)
        if sender is None:
            raise RpcError("unknown_code", f"no sender with code {code!r}", field="code")
        portals = self.daemon.portals
        member_id = sender.portal or (next(iter(portals)) if len(portals) == 1 else None)
        if member_id is None or member_id not in portals:
            raise RpcError("bad_request", f"sender.{code}.portal: set it, the portal of this code is ambiguous",
                           field="code")
        portal = portals[member_id]
        b24_id = uuid.uuid4().hex
        result = await self.daemon.intake({
            "member_id": member_id, "application_token": portal.application_token, "code": code,
            "b24_id": b24_id, "to": to, "text": text, "module_id": "smppd-cli",
        })
        log.info("admin_send", id=result["id"], b24_id=b24_id, code=code, route=sender.route, to=phone.mask(to))
        return {**result, "b24_id": b24_id, "route": sender.route}

    # --- reading --------------------------------------------------------------------

    async def message(self, params: Mapping[str, Any]) -> dict[str, Any]:
        mid = _id(params.get("id"))
        row = await self.daemon.store.message(mid)
        if row is None:
            raise RpcError("not_found", f"no message {mid}")
        return {
            "id": row["id"], "b24_id": row["b24_id"], "code": row["code"], "route": row["route"],
            "to": phone.mask(row["phone"] or ""), "status": row["status"], "reason": row["reason"],
            "segments": [{"seq": s["seq"], "smsc_id": s["smsc_id"], "status": s["status"],
                          "error": s["error"]} for s in row["segment_rows"]],
            "created_at": row["created_at"], "updated_at": row["updated_at"],
        }

    async def stuck(self, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Messages not final, unchanged for ``older_than`` seconds (optionally on one route),
        each with why it waits: an admin acts on the reason, not on the age."""
        rows = await self._select(params)
        return [{"id": i, "route": r, "status": s, "age_seconds": round(a, 1),
                 "waiting": self._why(r, s, member_id, hold, hold_until)}
                for i, r, s, a, member_id, hold, hold_until in rows]

    def _why(self, route_name: str, status: str, member_id: str, hold: str | None, hold_until: float | None) -> str:
        if hold is not None:
            return self.daemon.holds.why(member_id, hold, hold_until)
        route = self.daemon.routes.get(route_name)
        if status == "accepted":
            return "the operator took it; waiting for its receipt"
        if route is not None and not route.up:
            return f"route {route_name} is down" + (f": {route.trouble}" if route.trouble else "")
        if status == "submitted":
            return "sent; waiting for the operator's answer"
        return f"queued on route {route_name}"

    # --- acting ---------------------------------------------------------------------

    async def retry(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Queue again the segments of stuck messages that the operator never took.

        Only ``queued``/``submitted`` segments that are neither in the route's
        queue nor awaiting a resp: an ``accepted`` segment is with the operator,
        and sending it again would be a duplicate SMS.  ``outbox: true`` also
        makes every pending Bitrix24 update due now (after fixing tokens).
        """
        outbox = 0
        if params.get("outbox"):
            outbox = await self.daemon.store.outbox_due_now()
            self.daemon.store.outbox_changed.set()
        if not _selects(params) and not params.get("outbox"):
            raise RpcError("bad_request", "name message ids, older_than or outbox", field="ids")
        selected = {i for i, *_ in await self._select(params)} if _selects(params) else set()
        requeued: list[int] = []
        for route in self.daemon.routes.values():
            busy = route.busy_segments()
            for m in await self.daemon.store.open_messages(route.name):
                if m.id not in selected:
                    continue
                free = tuple(s for s in m.open_segments if (m.id, s) not in busy)
                if free:
                    # replace(): the resent parts keep the message's concatenation reference
                    route.enqueue(m._replace(open_segments=free))
                    requeued.append(m.id)
        requeued.sort()
        log.info("admin_retry", messages=requeued, selected=len(selected), outbox=outbox)
        return {"selected": len(selected), "requeued": requeued, "outbox": outbox}

    async def cancel(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Fail stuck messages for good: out of the queue, ``failed`` in the store and in Bitrix24.

        A resp or receipt that comes later is recorded and not applied: the
        status never moves backwards.
        """
        if not _selects(params):
            raise RpcError("bad_request", "name message ids or older_than", field="ids")
        rows = await self._select(params)
        ids = {i for i, *_ in rows}
        for route in self.daemon.routes.values():
            route.cancel(ids)

        # A held message (consent, quiet hours) leaves its hold first, so the hold worker
        # can never release what the admin ended.
        await self.daemon.store.unhold(ids)
        for mid, seq in await self.daemon.store.open_segments(ids, OPEN):
            await self.daemon.store.segment_failed(mid, seq, Status.FAILED, CANCELLED)
        cancelled = sorted(ids)
        log.warning("admin_cancel", messages=cancelled)
        return {"cancelled": cancelled}

    async def _select(self, params: Mapping[str, Any]) -> list[tuple[int, str, str, float, str, str | None,
                                                                       float | None]]:
        """Open messages by ``ids`` and/or ``older_than`` seconds since their last change, ``route``."""
        ids = params.get("ids") or []
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise RpcError("bad_request", "ids: must be a list of message ids", field="ids")
        older = params.get("older_than")
        if older is not None and (not isinstance(older, (int, float)) or older < 0):
            raise RpcError("bad_request", "older_than: must be seconds ≥ 0", field="older_than")
        route = params.get("route")
        if route is not None and route not in self.daemon.routes:
            raise RpcError("bad_request", f"route: no route named {route!r}", field="route")
        return await self.daemon.store.select_messages(OPEN, ids=ids, older_than=older, route=route,
                                                       limit=MAX_SELECT)


def _selects(params: Mapping[str, Any]) -> bool:
    return bool(params.get("ids")) or params.get("older_than") is not None


def _field(params: Mapping[str, Any], name: str) -> str:
    v = params.get(name)
    if not isinstance(v, str) or not v:
        raise RpcError("bad_request", f"{name}: must be a non-empty string", field=name)
    return v


def _id(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise RpcError("bad_request", "id: must be a message id (an integer)", field="id")
    return v

