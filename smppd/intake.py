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
from typing import Any, Awaitable, Callable, Container, Mapping, NamedTuple, Sequence

import structlog
from structlog.typing import FilteringBoundLogger

from .ops import metrics
from . import phone, rules, text
from .ops.logs import LinePacer
from .config import SMSC_MAX_CHARS, Config, RouteConfig, SenderConfig, SmppRouteConfig, SmscRouteConfig
from .rpc import RpcError
from .smpp.segments import route_encoding
from .model import IntakeResult, NewMessage, OpenMessage, PortalRecord
from .store import Store, StoreUnavailable

log = structlog.get_logger(__name__)


B24_ID_RE = re.compile(r"[0-9a-f]{32}")  # fullmatch: "$" would let a trailing newline through
MAX_TEXT = 50_000  # far above anything an operator joins (255 parts); protects the store from junk


class IntakeRequest(NamedTuple):
    """One post's params, checked. A NamedTuple, not a frozen dataclass: built once per
    message, and the frozen ``__init__`` of these nine fields cost 1.0 µs against 0.2."""

    member_id: str | None
    application_token: str | None
    code: str
    b24_id: str
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
        b24_id = _string(p, "b24_id").lower()
        to = _string(p, "to")
        body = _string(p, "text")
        module_id = _optional_string(p, "module_id") or ""
        if not B24_ID_RE.fullmatch(b24_id):
            raise RpcError("bad_request", "b24_id: must be 32 hex characters")
        if not body or len(body) > MAX_TEXT:
            raise RpcError("bad_request", f"text: must be 1 to {MAX_TEXT} characters")
        return cls(member_id, application_token, code, b24_id, to, body, module_id,
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


class Intake:
    def __init__(self, config: Config, store: Store, portals: Callable[[], Mapping[str, PortalRecord]],
                 dispatch: Callable[[OpenMessage], None], *, rules_: rules.Rules | None = None,
                 stoplist: Container[str] = frozenset(), on_held: Callable[[], None] = lambda: None,
                 recover: Callable[[str, str, str], Awaitable[bool]] | None = None) -> None:
        self.config = config
        self.store = store
        self._portals = portals
        self._dispatch = dispatch
        self.rules = rules_ or rules.Rules(config.rules)
        self._stoplist = stoplist
        self._on_held = on_held
        self._segment_warnings = LinePacer(3600.0)  # once per CODE per hour, with the count
        self._no_auth_log = LinePacer(3600.0)  # once per portal per hour
        self._recover = recover  # bitrix24/recovery.py: a missed ONAPPUPDATE's token, learned once

    async def __call__(self, params: Mapping[str, Any]) -> dict[str, Any]:
        try:
            post = self._accept(params)
        except RpcError as e:
            if not await self._recovered(params, e):
                raise
            post = self._accept(params)
        try:
            stored = await self.store.intake(post.message)
        except StoreUnavailable as e:
            raise _unavailable(e) from None
        return self._finish(post, stored, log.bind())

    async def _recovered(self, params: Mapping[str, Any], error: Exception) -> bool:
        """A refused post of a known portal whose application_token is not the stored one:
        the token may come from an ONAPPUPDATE we missed. True when the recovery step
        (kept apart from ``_authenticate``, which decides alone) learned it."""
        if self._recover is None or not isinstance(error, RpcError) or error.code != "forbidden":
            return False
        member_id, token, access = (params.get("member_id"), params.get("application_token"),
                                    params.get("access_token"))
        if not (isinstance(member_id, str) and isinstance(token, str) and isinstance(access, str) and token):
            return False
        portal = self._portals().get(member_id)
        if portal is None or hmac.compare_digest(token.encode(), portal.application_token.encode()):
            return False
        return await self._recover(member_id, token, access)

    async def many(self, batch: Sequence[Mapping[str, Any]]) -> list[dict[str, Any] | Exception]:
        """``_many``, then the rare post refused for an unknown token gets its recovery step
        (after the others are stored: a recovery waits on the portal)."""
        outcomes = await self._many(batch)
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, RpcError) and await self._recovered(batch[i], outcome):
                try:
                    outcomes[i] = await self(batch[i])
                except Exception as e:
                    outcomes[i] = e
        return outcomes

    async def _many(self, batch: Sequence[Mapping[str, Any]]) -> list[dict[str, Any] | Exception]:
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
        except StoreUnavailable as e:  # one by one would be refused alike
            results = [_unavailable(e)] * len(messages)
        except Exception as e:
            log.warning("intake_batch_failed", error=type(e).__name__, messages=len(messages))
            results = await asyncio.gather(*(self.store.intake(m) for m in messages), return_exceptions=True)
        stored = iter(results)
        # one bound logger for the batch (structlog's advice for a logger used in a loop):
        # the module's lazy proxy costs ~0.6 µs a line to resolve, a line per message
        batch_log = log.bind()
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, _Post):
                result = next(stored)
                try:
                    outcomes[i] = (result if isinstance(result, BaseException)
                                   else self._finish(outcome, result, batch_log))
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

    def _finish(self, post: _Post, result: IntakeResult, line: FilteringBoundLogger) -> dict[str, Any]:
        """What follows a stored message: its log line, metrics, rule counters,
        dispatch to its route, and the answer to the shim."""
        req, sender, marketing, message = post
        held = message.hold if result.reason is None and result.duplicate_of is None else None
        status = str(result.status)
        line.info(
            "message_received", id=result.id, b24_id=req.b24_id, code=req.code, route=sender.route,
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
                                       tuple(range(message.segments)), result.concat_ref, req.b24_id))
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

        A post that carries an ``application_token`` is accepted only when the
        token is that of the portal it names, or, naming none, of exactly one
        installed portal (issue 18 §2): a token that opens no door must not
        fall through to "the only portal there is".  A post without an auth
        block (a message with no author) is accepted only when the CODE leaves
        no doubt about the portal (bitrix24.md §5) and ``[shim]
        posts_without_auth`` is "accept".
        """
        portals = self._portals()
        if req.member_id is None and req.application_token is not None:
            return self._by_token_alone(req.application_token, owner, portals)
        if req.member_id is None:
            candidates = [owner] if owner else list(portals)
            if len(candidates) != 1 or candidates[0] not in portals:
                raise RpcError("forbidden", "no auth block and the portal is ambiguous")
            self._without_auth(candidates[0], req.code)
            return portals[candidates[0]]
        portal = portals.get(req.member_id)
        if portal is None:
            raise RpcError("forbidden", "unknown portal")
        if owner is not None and owner != req.member_id:
            raise RpcError("forbidden", "this code belongs to another portal")
        token = req.application_token or ""
        # a portal with no token on record (a store row from an event that carried
        # none) must not be opened by a post that carries none either
        if not hmac.compare_digest(token.encode(), portal.application_token.encode()) or not token:
            raise RpcError("forbidden", "application_token does not match")
        return portal

    @staticmethod
    def _by_token_alone(token: str, owner: str | None, portals: Mapping[str, PortalRecord]) -> PortalRecord:
        """The one portal whose application_token this is (every portal compared,
        in constant time each, so the answer's time does not tell which)."""
        given = token.encode()
        matches = [p for p in portals.values()
                   if hmac.compare_digest(given, p.application_token.encode()) and p.application_token]
        if len(matches) != 1:
            raise RpcError("forbidden", "application_token does not match")
        if owner is not None and owner != matches[0].member_id:
            raise RpcError("forbidden", "this code belongs to another portal")
        return matches[0]

    def _without_auth(self, member_id: str, code: str) -> None:
        """A post with no auth block: counted, logged once per portal per hour,
        and refused when the admin chose so."""
        refused = self.config.shim.posts_without_auth == "refuse"
        metrics.post_without_auth(member_id, refused)
        if self._no_auth_log.note(member_id, time.monotonic()) is not None:
            log.warning("post_without_auth", member_id=member_id, code=code, refused=refused,
                        hint="Bitrix24 omits auth[] for a message without an author; "
                             "[shim] posts_without_auth decides (once per portal per hour)")
        if refused:
            raise RpcError("forbidden", "no auth block ([shim] posts_without_auth = refuse)")

    def _prepare(self, req: IntakeRequest, member_id: str, sender: SenderConfig, marketing: bool) -> NewMessage:
        route = self.config.routes.get(sender.route)
        reason = None
        try:
            encoded = route_encoding(route, req.text)
        except ValueError as e:  # a lone surrogate, or more than 255 segments
            try:  # the text is sound, only too long to join: stored and failed with the reason
                encoded = text.encode(req.text, split=False)
            except ValueError:
                raise RpcError("bad_request", f"text: cannot be sent as SMS ({e})") from None
            reason = f"text too long: {e}"
        number = None
        hold = None
        entities = None
        try:
            number, verdict = phone.normalize_verdict(
                req.to, allowed_regions=route.countries if route is not None else None,
                strict=route is not None and route.strict_numbers)
        except phone.InvalidNumber as e:
            reason = f"invalid number: {e.reason}"
        else:
            if verdict is not None:  # sent on its mobile shape; the library's refusal is kept as a count
                metrics.NUMBERS_OUTSIDE_METADATA.labels(sender.route, verdict).inc()
        if reason is None:
            reason = too_long(route, sender.route, req.text, encoded.segments)
        if reason is None and marketing:
            bound = rules.entities(req.bindings, req.document_id)
            if number in self._stoplist:
                reason = rules.REASON_STOPLIST
            else:  # consent is read after the answer; unbound posts are matched by number
                hold = rules.HOLD_CONSENT
                entities = json.dumps([[e.type_id, e.id] for e in bound])
        cfg = self.config.rules
        return NewMessage(
            member_id=member_id, b24_id=req.b24_id, code=req.code, route=sender.route,
            sender=sender.sender_for(marketing), phone=number, text=req.text, encoding=encoded.encoding,
            segments=encoded.segments, module_id=req.module_id, reason=reason, hold=hold, entities=entities,
            duplicate_window=cfg.duplicate_window, duplicate_fails=cfg.duplicate_outcome == "failed",
        )


def too_long(route: RouteConfig | None, name: str, body: str, segments: int) -> str | None:
    """Why ``body`` is longer than ``route`` takes (issue 19 item 7), or None.

    Stored and failed with this reason, not refused: Bitrix24 never reads our answer,
    so only a ``failed`` status tells the manager. ``segments`` is what the route sends;
    a ``message_payload`` route sends one submit_sm, but the handset is billed the parts
    of the usual split.
    """
    if route is None:
        return None
    if isinstance(route, SmscRouteConfig) and len(body) > SMSC_MAX_CHARS:
        return f"text too long: {len(body)} characters, SMSC.ru takes at most {SMSC_MAX_CHARS}"
    if isinstance(route, SmppRouteConfig) and route.long_method == "payload" and segments == 1:
        segments = text.count_segments(body)
    if segments > route.max_parts:
        return f"text too long: {segments} parts, route {name} takes at most {route.max_parts} (max_parts)"
    return None


def _unavailable(e: StoreUnavailable) -> RpcError:
    """The RPC answer to a post the store cannot take now (a full disk).

    ``unavailable`` is the code the shim answers 503 for (and its spool keeps the post);
    the store's log line says why, once, so the answer does not repeat it.
    """
    return RpcError("unavailable", "the store cannot write now; try again later")
