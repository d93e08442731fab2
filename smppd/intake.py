"""Intake: a HANDLER post that the shim checked becomes a stored message.

Authenticity of the portal is decided here, not in the shim, because the
portal's application_token lives in the daemon's store (it changes on every
app update) and the shim keeps no state.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Container, Mapping, NamedTuple, Sequence

import structlog

from . import metrics, phone, rules, text
from .config import Config, SenderConfig
from .rpc import RpcError
from .smpp.segments import route_encoding
from .store import IntakeResult, NewMessage, OpenMessage, PortalRecord, Store

log = structlog.get_logger(__name__)

MESSAGE_ID_RE = re.compile(r"[0-9a-f]{32}")  # fullmatch: "$" would let a trailing newline through
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
    bindings: Any = None  # as the shim forwarded them; rules.entities() reads them defensively
    document_id: Any = None

    @classmethod
    def from_params(cls, p: Mapping[str, Any]) -> "IntakeRequest":
        """Checked in the order of the form, so the first wrong field is the one named."""
        member_id = _optional_string(p, "member_id")
        application_token = _optional_string(p, "application_token")
        code = _string(p, "code")
        message_id = _string(p, "message_id").lower()
        to = _string(p, "to")
        body = _string(p, "text")
        module_id = _optional_string(p, "module_id") or ""
        if not MESSAGE_ID_RE.fullmatch(message_id):
            raise RpcError("bad_request", "message_id: must be 32 hex characters")
        if not body or len(body) > MAX_TEXT:
            raise RpcError("bad_request", f"text: must be 1 to {MAX_TEXT} characters")
        return cls(member_id, application_token, code, message_id, to, body, module_id,
                   p.get("bindings"), p.get("document_id"))


class _Post(NamedTuple):
    """A post that passed the checks, between ``Intake._accept`` and ``Intake._finish``."""

    req: IntakeRequest
    sender: SenderConfig
    marketing: bool
    message: NewMessage


def _string(p: Mapping[str, Any], name: str) -> str:
    value = p.get(name)
    if not isinstance(value, str):
        raise RpcError("bad_request", f"{name}: must be a string")
    return value


def _optional_string(p: Mapping[str, Any], name: str) -> str | None:
    value = p.get(name)
    return None if value is None else _string(p, name)


class SegmentWarnings:
    """When to warn that a CODE's texts cost more than one SMS: once per CODE per ``every``
    seconds, with the number of such messages since the last warning. A personalised template
    differs in every message, so once per text was a warning per message (193 of 400 in the
    demo); once per CODE tells the admin the same thing. Sans-I/O: ``now`` is given."""

    def __init__(self, every: float = 3600.0, max_codes: int = 10_000) -> None:
        self.every = every
        self._max_codes = max_codes
        self._due: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def note(self, code: str, now: float) -> int | None:
        """Count one message over a segment; the count to warn with, or None for no warning now."""
        if code not in self._due and len(self._due) >= self._max_codes:
            self._due.clear()
            self._count.clear()
        self._count[code] = self._count.get(code, 0) + 1
        if now < self._due.get(code, float("-inf")):
            return None
        self._due[code] = now + self.every
        return self._count.pop(code)


class Intake:
    def __init__(self, config: Config, store: Store, portals: Callable[[], Mapping[str, PortalRecord]],
                 dispatch: Callable[[OpenMessage], None], *, rules_: rules.Rules | None = None,
                 stoplist: Container[str] = frozenset(), on_held: Callable[[], None] = lambda: None) -> None:
        self.config = config
        self.store = store
        self._portals = portals
        self._dispatch = dispatch
        self.rules = rules_ or rules.Rules(config.rules)
        self._stoplist = stoplist
        self._on_held = on_held
        self._segment_warnings = SegmentWarnings()

    async def __call__(self, params: Mapping[str, Any]) -> dict[str, Any]:
        post = self._accept(params)
        return self._finish(post, await self.store.intake(post.message))

    async def many(self, batch: Sequence[Mapping[str, Any]]) -> list[dict[str, Any] | Exception]:
        """The RPC batch of ``__call__``: one outcome per post, in order, its
        answer or its own error (``rpc.BatchHandler``).

        Each post is checked as ``__call__`` checks it; the ones accepted are
        stored by one ``Store.intake_many``, so the batch pays for one future
        and one commit-wait instead of one per post. If that raises, each
        post is stored on its own, so one message the store refuses never
        costs the others their place.
        """
        outcomes: list[Any] = []
        accepted: list[_Post] = []
        for params in batch:
            try:
                post = self._accept(params)
            except Exception as e:  # an RpcError is the post's answer; anything else is an internal error
                outcomes.append(e)
            else:
                outcomes.append(post)
                accepted.append(post)
        if not accepted:
            return outcomes
        messages = [post.message for post in accepted]
        results: list[Any]
        try:
            results = await self.store.intake_many(messages)
        except Exception as e:
            log.warning("intake_batch_failed", error=type(e).__name__, messages=len(messages))
            results = await asyncio.gather(*(self.store.intake(m) for m in messages), return_exceptions=True)
        stored = iter(results)
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, _Post):
                result = next(stored)
                try:
                    outcomes[i] = result if isinstance(result, BaseException) else self._finish(outcome, result)
                except Exception as e:
                    outcomes[i] = e
        return outcomes

    def _accept(self, params: Mapping[str, Any]) -> _Post:
        """The checks before the store: the post's message, or its RpcError."""
        req = IntakeRequest.from_params(params)
        sender = self.config.senders.get(req.code)
        if sender is None:
            raise RpcError("unknown_code", f"no sender with code {req.code!r}")
        portal = self._authenticate(req, sender.portal)
        marketing = rules.is_marketing(sender, req.module_id)
        return _Post(req, sender, marketing, self._prepare(req, portal.member_id, sender, marketing))

    def _finish(self, post: _Post, result: IntakeResult) -> dict[str, Any]:
        """What follows a stored message: its log line, metrics, rule counters,
        dispatch to its route, and the answer to the shim."""
        req, sender, marketing, message = post
        held = message.hold if result.reason is None and result.duplicate_of is None else None
        status = str(result.status)
        log.info(
            "message_received", id=result.id, b24_id=req.message_id, code=req.code, route=sender.route,
            to=phone.mask(message.phone or req.to), segments=message.segments, status=status,
            duplicate=result.duplicate, reason=result.reason, marketing=marketing, held=held,
            repeat_of=result.duplicate_of,
        )
        metrics.message_received(sender.route, status, message.segments, duplicate=result.duplicate)
        if result.duplicate:  # an idempotent re-post: the first post already did everything
            return self._answer(result, None)
        self._count(req, result, held, message.segments)
        if held is not None:
            self._on_held()
        elif result.reason is None and result.duplicate_of is None:
            assert message.phone is not None
            self._dispatch(OpenMessage(result.id, sender.route, message.sender, message.phone, req.text,
                                       tuple(range(message.segments)), result.concat_ref, req.message_id))
        return self._answer(result, held)

    @staticmethod
    def _answer(result: IntakeResult, held: str | None) -> dict[str, Any]:
        return {"id": result.id, "status": str(result.status), "duplicate": result.duplicate,
                "reason": result.reason, "held": held, "repeat_of": result.duplicate_of}

    def _count(self, req: IntakeRequest, result: IntakeResult, held: str | None, segments: int) -> None:
        """Rule counters and the one-per-template warning for texts that cost more than one SMS."""
        stats = self.rules.stats
        if result.reason is not None:
            stats.refuse(result.reason)
            if not result.reason.startswith("invalid number"):
                log.info("message_refused", id=result.id, code=req.code, reason=result.reason)
        if result.duplicate_of is not None:
            stats.duplicates += 1
            log.info("message_repeat_not_sent", id=result.id, code=req.code, repeat_of=result.duplicate_of)
        if held is not None:
            stats.hold(held)
        if segments > 1:
            stats.multi_segment += 1
            count = self._segment_warnings.note(req.code, time.monotonic())
            if count is not None:  # never the text, nor the characters that force UCS-2: they are the text's
                cost = text.cost(req.text)
                log.warning("template_over_one_segment", code=req.code, count=count, segments=cost.segments,
                            encoding=cost.encoding, ucs2_forced_by=len(cost.ucs2_chars),
                            every_s=int(self._segment_warnings.every))

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

    def _prepare(self, req: IntakeRequest, member_id: str, sender: SenderConfig, marketing: bool) -> NewMessage:
        route = self.config.routes.get(sender.route)
        try:
            encoded = route_encoding(route, req.text)
        except ValueError as e:  # a lone surrogate, or more than 255 segments
            raise RpcError("bad_request", f"text: cannot be sent as SMS ({e})") from None
        reason = None
        number = None
        hold = None
        entities = None
        try:
            number = phone.normalize(req.to, allowed_regions=getattr(route, "countries", None))
        except phone.InvalidNumber as e:
            reason = f"invalid number: {e.reason}"
        if reason is None and marketing:
            bound = rules.entities(req.bindings, req.document_id)
            if number in self._stoplist:
                reason = rules.REASON_STOPLIST
            else:  # consent is read after the answer; unbound posts are matched by number
                hold = rules.HOLD_CONSENT
                entities = json.dumps([[e.type_id, e.id] for e in bound])
        cfg = self.config.rules
        return NewMessage(
            member_id=member_id, b24_id=req.message_id, code=req.code, route=sender.route,
            sender=sender.sender_for(marketing), phone=number, text=req.text, encoding=encoded.encoding,
            segments=encoded.segments, module_id=req.module_id, reason=reason, hold=hold, entities=entities,
            duplicate_window=cfg.duplicate_window, duplicate_fails=cfg.duplicate_outcome == "failed",
        )
