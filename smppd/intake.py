"""Intake: a HANDLER post that the shim checked becomes a stored message.

Authenticity of the portal is decided here, not in the shim, because the
portal's application_token lives in the daemon's store (it changes on every
app update) and the shim keeps no state.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import structlog

from . import metrics, phone, text
from .config import Config
from .rpc import RpcError
from .store import IntakeResult, NewMessage, OpenMessage, PortalRecord, Store

log = structlog.get_logger(__name__)

MESSAGE_ID_RE = re.compile(r"^[0-9a-f]{32}$")
MAX_TEXT = 10_000  # far above anything Bitrix24 sends; protects the store from junk


@dataclass(frozen=True)
class IntakeRequest:
    member_id: str | None
    application_token: str | None
    code: str
    message_id: str
    to: str
    text: str
    module_id: str

    @classmethod
    def from_params(cls, p: Mapping[str, Any]) -> "IntakeRequest":
        def field(name: str, *, optional: bool = False) -> Any:
            v = p.get(name)
            if v is None and optional:
                return None
            if not isinstance(v, str):
                raise RpcError("bad_request", f"{name}: must be a string")
            return v

        req = cls(
            member_id=field("member_id", optional=True),
            application_token=field("application_token", optional=True),
            code=field("code"),
            message_id=field("message_id").lower(),
            to=field("to"),
            text=field("text"),
            module_id=field("module_id", optional=True) or "",
        )
        if not MESSAGE_ID_RE.match(req.message_id):
            raise RpcError("bad_request", "message_id: must be 32 hex characters")
        if not req.text or len(req.text) > MAX_TEXT:
            raise RpcError("bad_request", f"text: must be 1 to {MAX_TEXT} characters")
        return req


class Intake:
    def __init__(self, config: Config, store: Store, portals: Callable[[], Mapping[str, PortalRecord]],
                 dispatch: Callable[[OpenMessage], None]) -> None:
        self.config = config
        self.store = store
        self._portals = portals
        self._dispatch = dispatch

    async def __call__(self, params: Mapping[str, Any]) -> dict[str, Any]:
        req = IntakeRequest.from_params(params)
        sender = self.config.senders.get(req.code)
        if sender is None:
            raise RpcError("unknown_code", f"no sender with code {req.code!r}")
        portal = self._authenticate(req, sender.portal)
        message = self._prepare(req, portal.member_id, sender.route, sender.sender_id)
        result: IntakeResult = await self.store.intake(message)
        log.info(
            "message_received", id=result.id, b24_id=req.message_id, code=req.code, route=sender.route,
            to=phone.mask(message.phone or req.to), segments=message.segments, status=str(result.status),
            duplicate=result.duplicate, reason=message.reason,
        )
        metrics.message_received(sender.route, str(result.status), message.segments, duplicate=result.duplicate)
        if not result.duplicate and message.reason is None:
            assert message.phone is not None
            self._dispatch(OpenMessage(result.id, sender.route, sender.sender_id, message.phone, req.text,
                                       tuple(range(message.segments))))
        return {"id": result.id, "status": str(result.status), "duplicate": result.duplicate,
                "reason": message.reason}

    def _authenticate(self, req: IntakeRequest, owner: str | None) -> PortalRecord:
        """The portal this post comes from, or RpcError("forbidden").

        A post without an auth block (a message with no author) is accepted only
        when the CODE leaves no doubt about the portal (bitrix24.md §5).
        """
        portals = self._portals()
        if req.member_id is None:
            candidates = [owner] if owner else list(portals)
            if len(candidates) != 1 or candidates[0] not in portals:
                raise RpcError("forbidden", "no auth block and the portal is ambiguous")
            return portals[candidates[0]]
        portal = portals.get(req.member_id)
        if portal is None:
            raise RpcError("forbidden", "unknown portal")
        if owner is not None and owner != req.member_id:
            raise RpcError("forbidden", "this code belongs to another portal")
        token = req.application_token or ""
        if not hmac.compare_digest(token.encode(), portal.application_token.encode()):
            raise RpcError("forbidden", "application_token does not match")
        return portal

    def _prepare(self, req: IntakeRequest, member_id: str, route: str, sender_id: str) -> NewMessage:
        try:
            encoded = text.encode(req.text)
        except ValueError as e:  # a lone surrogate, or more than 255 segments
            raise RpcError("bad_request", f"text: cannot be sent as SMS ({e})") from None
        reason = None
        number = None
        try:
            number = phone.normalize(req.to)
        except phone.InvalidNumber as e:
            reason = f"invalid number: {e.reason}"
        return NewMessage(
            member_id=member_id, b24_id=req.message_id, code=req.code, route=route, sender=sender_id,
            phone=number, text=req.text, encoding=encoded.encoding, segments=encoded.segments,
            module_id=req.module_id, reason=reason,
        )
