"""App lifecycle events: ONAPPINSTALL, ONAPPUPDATE, ONAPPUNINSTALL (bitrix24.md §11).

Bitrix24 posts each event once and never reads our answer, so an event is **stored first
and answered 200**, then proven and applied in the background (`EventQueue`), retried on
its own back-off for as long as the portal or the OAuth server needs. Nothing about a
portal changes until its event is proven. What each proof rests on:

* **install / update** carry an ``access_token`` and a ``refresh_token``. Every HANDLER post
  carries an author's access token and the ``application_token`` (so anyone who saw one
  post has both), but never a refresh token. The proof therefore **spends the event's
  refresh token** at the OAuth server of the configured ``[[app]]`` (``server_endpoint``
  from the config, never from the event) with our ``client_id`` and ``client_secret``: only
  a refresh token issued to our app answers, and its answer names the ``member_id`` and the
  ``client_endpoint`` we compare. Refresh tokens are single-use, so the fresh pair is
  stored in the event before anything else. Then ``user.admin`` with the fresh access token,
  through the portal's own REST client (its rate budget, the pusher waits), must answer
  true: the token is an administrator's, as ``messageservice.sender.*`` needs (§1).
  The event's endpoints must also equal the configured ones.
* **uninstall** carries no token. It is applied when its ``application_token`` is the
  stored one *and* an outside check agrees: ``app.info`` with our own stored tokens
  answers ``INSTALLED: false``, or the portal no longer accepts them (``NO_AUTH_FOUND``,
  ``invalid_token``; a refresh ``invalid_grant``/``invalid_client``).
* **unknown domains** (no ``[[app]]`` and no ``[[portal]]`` for them yet; Bitrix24 installs a
  local app before its client_id/secret can be copied into the config) wait, unproven,
  until the config names them: at most ``[app_events] max_unknown`` of them, none older than
  ``unknown_max_age``.
"""

from __future__ import annotations

import asyncio
import enum
import hmac
import math
import time
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

import aiohttp
import structlog

from ..ops import metrics
from ..backoff import backoff
from ..config import AppConfig, Config, PortalConfig, normalize_domain
from ..rpc import RpcError
from ..model import PortalRecord, StoredAppEvent
from .rest import RestClient, RestError, refresh_tokens

log = structlog.get_logger(__name__)

EVENTS = ("ONAPPINSTALL", "ONAPPUPDATE", "ONAPPUNINSTALL")
_TOKEN_KEYS = ("access_token", "refresh_token")
_ALWAYS_KEYS = ("member_id", "domain", "application_token", "client_endpoint", "server_endpoint")
#: Answers that mean "this token is not (or no longer) one the portal or OAuth server accepts".
_AUTH_REFUSED = frozenset({"invalid_grant", "invalid_client", "member_mismatch", "NO_AUTH_FOUND", "invalid_token",
                           "ACCESS_DENIED", "PAYMENT_REQUIRED", "insufficient_scope", "invalid_scope",
                           "invalid_request", "unsupported_grant_type", "wrong_client"})
#: An uninstalled app's tokens get these (bitrix24.md §10: invalid_client = app not installed).
_APP_GONE = frozenset({"NO_AUTH_FOUND", "invalid_token", "invalid_grant", "invalid_client"})
RETRY_MIN, RETRY_MAX = 1.0, 60.0  # at most one try a minute: the portal's budget is the pusher's too


@dataclass(frozen=True)
class AppEvent:
    """One lifecycle event as posted (``event`` + the ``auth[...]`` block)."""

    event: str
    member_id: str
    domain: str
    application_token: str = field(repr=False)
    client_endpoint: str
    server_endpoint: str
    access_token: str = field(default="", repr=False)
    refresh_token: str = field(default="", repr=False)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> AppEvent:
        """Validate what the shim forwarded; every refusal names the form field."""
        event = params.get("event")
        if not isinstance(event, str) or event.upper() not in EVENTS:
            raise RpcError("bad_request", f"event: must be one of {', '.join(EVENTS)}", field="event")
        event = event.upper()
        auth = params.get("auth")
        if not isinstance(auth, Mapping):
            raise RpcError("bad_request", "auth: missing", field="auth")
        needed = _ALWAYS_KEYS + (_TOKEN_KEYS if event != "ONAPPUNINSTALL" else ())
        values: dict[str, str] = {}
        for key in needed:
            value = auth.get(key)
            if not isinstance(value, str) or not value or len(value) > 1000:
                raise RpcError("bad_request", f"auth[{key}]: missing", field=f"auth[{key}]")
            values[key] = value
        domain = normalize_domain(values["domain"])
        if domain is None:
            raise RpcError("bad_request", "auth[domain]: must be host[:port]", field="auth[domain]")
        values["domain"] = domain
        for key in ("client_endpoint", "server_endpoint"):
            if not values[key].startswith(("https://", "http://")):
                raise RpcError("bad_request", f"auth[{key}]: must be an http(s) URL", field=f"auth[{key}]")
            if not values[key].endswith("/"):
                values[key] += "/"
        return cls(event=event, **values)

    @classmethod
    def from_stored(cls, e: StoredAppEvent) -> AppEvent:
        a = e.auth
        return cls(event=e.event, member_id=e.member_id, domain=e.domain,
                   application_token=a.get("application_token", ""), client_endpoint=a.get("client_endpoint", ""),
                   server_endpoint=a.get("server_endpoint", ""), access_token=a.get("access_token", ""),
                   refresh_token=a.get("refresh_token", ""))

    def auth(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in _ALWAYS_KEYS + _TOKEN_KEYS if getattr(self, k)}


#: Our app's credentials, endpoints and REST budget on one portal: an ``[[app]]``, or a
#: ``[[portal]]``, which carries the same fields (and the tokens an event would bring).
Credentials = AppConfig | PortalConfig


def credentials(config: Config, member_id: str, domain: str) -> Credentials | None:
    """What makes us trust an event for this portal: its ``[[app]]`` by domain, or a
    hand-written ``[[portal]]`` for its member_id (which then completes a pending install)."""
    app = config.apps.get(domain)
    if app is not None:
        return app
    p = config.portals.get(member_id)
    return p if p is not None and p.domain == domain else None


class Verdict(enum.Enum):
    APPLY = "applied"
    REFUSE = "refused"
    RETRY = "retry"  # the portal or the OAuth server could not answer: try again later
    WAIT = "waiting_config"  # no [[app]] for the domain yet


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    reason: str = ""
    record: PortalRecord | None = None
    version: str | None = None  # app.info VERSION seen with the proven token


def retry_delay(attempts: int) -> float:
    """Capped, so an outage of any length is waited out; bounds read at call time (tests shorten them)."""
    return backoff(attempts, RETRY_MIN, RETRY_MAX)


class PortalHost(Protocol):
    """What the queue needs of the served portals (``portals.LivePortals`` is one)."""

    def portals(self) -> Mapping[str, PortalRecord]: ...

    def rest_client(self, member_id: str, app: Credentials | None = None,
                    record: PortalRecord | None = None) -> RestClient | None:
        """The portal's shared REST client (its budget); with ``app`` and ``record``, made if it does not exist yet."""
        ...

    def hold_pusher(self, member_id: str, held: bool) -> None: ...

    async def installed(self, record: PortalRecord, event: str) -> None: ...

    async def uninstalled(self, member_id: str) -> None: ...


class EventStore(Protocol):
    async def add_app_event(self, event: str, member_id: str, domain: str,
                            auth: Mapping[str, str]) -> StoredAppEvent: ...

    async def app_events(self) -> list[StoredAppEvent]: ...

    async def update_app_event(self, e: StoredAppEvent) -> None: ...

    async def delete_app_events(self, ids: list[int]) -> None: ...

    async def set_app_version(self, member_id: str, version: str) -> None: ...

    async def app_version(self, member_id: str) -> str | None: ...

    @property
    def app_event_turn(self) -> Callable[[StoredAppEvent], AbstractAsyncContextManager[
        tuple[bool, StoredAppEvent | None]]] | None:
        """Claims an event for one node while it is proven (several nodes on one database), or None."""


class Prover:
    """The proofs of the module docstring, one attempt each; the queue decides what follows."""

    def __init__(self, config: Config, http: aiohttp.ClientSession, host: PortalHost, store: EventStore) -> None:
        self.config = config
        self._http = http
        self._host = host
        self._store = store

    async def attempt(self, e: StoredAppEvent) -> Outcome:
        if e.event == "ONAPPUNINSTALL":
            return await self._uninstall(e)
        return await self._install(e)

    async def _install(self, e: StoredAppEvent) -> Outcome:
        event = AppEvent.from_stored(e)
        app = credentials(self.config, e.member_id, e.domain)
        if app is None:
            return Outcome(Verdict.WAIT, "no [[app]] for this domain")
        for key in ("client_endpoint", "server_endpoint"):
            if getattr(event, key) != getattr(app, key):
                return Outcome(Verdict.REFUSE, f"{key} differs from the configured one")
        known = self._host.portals().get(e.member_id)
        if known is not None and known.domain != e.domain:
            return Outcome(Verdict.REFUSE, "this member_id is installed under another domain")
        # The record the proof will store: the configured [[app]]'s endpoints and credentials,
        # the event's tokens (the ones held in ``e``: a spent refresh token's successors).
        record = PortalRecord(member_id=e.member_id, domain=e.domain, client_endpoint=app.client_endpoint,
                              server_endpoint=app.server_endpoint, client_id=app.client_id,
                              client_secret=app.client_secret, application_token=event.application_token,
                              access_token=event.access_token, refresh_token=event.refresh_token)
        if e.stage == "received":
            spent = await self._spend(e, record, app)
            if spent is not None:
                return spent
            record = record.with_tokens(e.auth["access_token"], e.auth["refresh_token"])
        client = self._host.rest_client(e.member_id, app, record)
        assert client is not None
        try:
            admin = await client.call_as(record.access_token, "user.admin")
        except RestError as exc:
            if exc.code == "expired_token":  # waited past the hour: spend the refresh token we hold
                spent = await self._spend(e, record, app)
                return spent or Outcome(Verdict.RETRY, "expired_token")
            if exc.code in _AUTH_REFUSED:
                return Outcome(Verdict.REFUSE, f"user.admin: {exc.code}")
            return Outcome(Verdict.RETRY, f"user.admin: {exc.code}")
        except Exception as exc:  # the transport of a REST call: retried like a network error
            return Outcome(Verdict.RETRY, f"user.admin: {type(exc).__name__}")
        if admin is not True:
            return Outcome(Verdict.REFUSE, "the event's user is not a portal administrator")
        try:
            info = await client.call_as(record.access_token, "app.info")
        except Exception as exc:
            return Outcome(Verdict.RETRY, f"app.info: {getattr(exc, 'code', type(exc).__name__)}")
        code = info.get("CODE") if isinstance(info, Mapping) else None
        if not isinstance(code, str) or not hmac.compare_digest(code.encode(), app.client_id.encode()):
            return Outcome(Verdict.REFUSE, "app.info names another application")
        return Outcome(Verdict.APPLY, version=str(info.get("VERSION", "")), record=record)

    async def _spend(self, e: StoredAppEvent, record: PortalRecord, app: Credentials) -> Outcome | None:
        """Spend the refresh token held in ``e`` and store its successor; None when that worked."""
        try:
            fresh = await refresh_tokens(self._http, record, timeout=aiohttp.ClientTimeout(total=30))
        except RestError as exc:
            if exc.code in _AUTH_REFUSED:
                return Outcome(Verdict.REFUSE, f"refresh: {exc.code}")
            return Outcome(Verdict.RETRY, f"refresh: {exc.code}")
        e.auth.update(access_token=fresh.access_token, refresh_token=fresh.refresh_token)
        e.stage = "refreshed"
        await self._store.update_app_event(e)  # the only copy of a valid refresh token now
        if fresh.client_endpoint != app.client_endpoint:
            return Outcome(Verdict.REFUSE, "the OAuth server names another portal endpoint")
        return None

    async def _uninstall(self, e: StoredAppEvent) -> Outcome:
        known = self._host.portals().get(e.member_id)
        if known is None:
            return Outcome(Verdict.REFUSE, "unknown portal")
        token = e.auth.get("application_token", "")
        if not hmac.compare_digest(token.encode(), known.application_token.encode()):
            return Outcome(Verdict.REFUSE, "application_token does not match")
        client = self._host.rest_client(e.member_id, None, None)
        if client is None:
            return Outcome(Verdict.RETRY, "no REST client for the portal yet")
        try:
            info = await client.call("app.info")
        except RestError as exc:
            if exc.code in _APP_GONE:
                return Outcome(Verdict.APPLY, f"the portal refuses our tokens: {exc.code}")
            return Outcome(Verdict.RETRY, f"app.info: {exc.code}")
        if isinstance(info, Mapping) and info.get("INSTALLED") is False:
            return Outcome(Verdict.APPLY, "app.info: not installed")
        return Outcome(Verdict.REFUSE, "app.info says the app is still installed")


class EventQueue:
    """Stored app events, proven one at a time in the order they came, per portal.

    An event waits for the ones of its portal received before it (an update is never
    applied before the install it follows). A portal whose proof must wait does not hold
    up the others.
    """

    def __init__(self, config: Config, store: EventStore, prover: Prover, host: PortalHost, *,
                 clock: Callable[[], float] = time.time,
                 delay: Callable[[int], float] = retry_delay) -> None:
        self.config = config
        self._store = store
        self._prover = prover
        self._host = host
        self._clock = clock
        self._delay = delay
        self.events: list[StoredAppEvent] = []
        self._wake = asyncio.Event()
        self.outcomes: dict[str, int] = {}  # verdict value -> events, since start

    async def load(self) -> None:
        """The events a previous run left; one summary line, however many there are."""
        self.events = await self._store.app_events()
        self._prune(self._clock())
        waiting = sum(1 for e in self.events if self._unknown(e))
        if self.events:
            log.info("bitrix24.app_events.loaded", pending=len(self.events) - waiting, waiting_config=waiting)
        for e in self.events:
            e.next_at = min(e.next_at, self._clock())  # a restart is a fresh chance

    def reconfigure(self, config: Config) -> None:
        """A reloaded config: an event waiting for its [[app]] may be provable now."""
        self.config = config
        self._prover.config = config
        self.rescan()

    def figures(self) -> tuple[int, float, int]:
        """(unproven events of configured portals, age of the oldest in seconds, events waiting for config)."""
        now = self._clock()
        known = [e for e in self.events if not self._unknown(e)]
        oldest = max((now - e.received_at for e in known), default=0.0)
        return len(known), oldest, len(self.events) - len(known)

    def _unknown(self, e: StoredAppEvent) -> bool:
        return credentials(self.config, e.member_id, e.domain) is None and e.member_id not in self._host.portals()

    async def receive(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The RPC ``app_event``: validate, store, answer. Nothing is proven or applied here."""
        event = AppEvent.from_params(params)
        stored = await self._store.add_app_event(event.event, event.member_id, event.domain, event.auth())
        self.events.append(stored)
        unknown = self._unknown(stored)
        log.info("bitrix24.app_event.stored", event_name=event.event, domain=event.domain,
                 member_id=event.member_id, unknown_domain=unknown)
        if unknown:
            log.warning("bitrix24.app_event.waiting_config", event_name=event.event, domain=event.domain,
                        hint=f'add an [[app]] with domain = "{event.domain}" and its client_id and client_secret,'
                             " then restart or reload smppd")
            await self._bound_unknown()
        self._wake.set()
        return {"event": event.event, "member_id": event.member_id, "stored": True}

    def _prune(self, now: float) -> list[StoredAppEvent]:
        """Unknown-domain events past their age; returns them (removed from ``events``)."""
        old = [e for e in self.events
               if self._unknown(e) and now - e.received_at > self.config.app_events.unknown_max_age]
        self.events = [e for e in self.events if e not in old]
        return old

    async def _bound_unknown(self) -> None:
        dropped = self._prune(self._clock())
        unknown = [e for e in self.events if self._unknown(e)]
        excess = len(unknown) - self.config.app_events.max_unknown
        if excess > 0:
            dropped += unknown[:excess]  # the oldest go: a genuine install is usually the latest
            self.events = [e for e in self.events if e not in dropped]
        if dropped:
            await self._store.delete_app_events([e.id for e in dropped])
            metrics.app_events_done("dropped", len(dropped))
            log.warning("bitrix24.app_event.dropped", events=len(dropped), reason="unknown domain, too many or too old",
                        keep=self.config.app_events.max_unknown)

    def rescan(self) -> None:
        """The config changed: events waiting for an [[app]] get a new chance."""
        now = self._clock()
        for e in self.events:
            e.next_at = min(e.next_at, now)
        self._wake.set()

    def _due(self, now: float) -> tuple[StoredAppEvent | None, float]:
        """The next event to try and the time the next one comes due (inf: none)."""
        first_of_member: dict[str, StoredAppEvent] = {}
        for e in self.events:
            first_of_member.setdefault(e.member_id, e)
        heads = sorted(first_of_member.values(), key=lambda e: (e.next_at, e.id))
        for e in heads:
            if e.next_at <= now:
                return e, now
        return None, heads[0].next_at if heads else math.inf

    async def run(self) -> None:
        while True:
            now = self._clock()
            event, when = self._due(now)
            if event is None:
                self._wake.clear()
                timeout = None if when == math.inf else max(0.0, when - now)
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except asyncio.TimeoutError:
                    pass
                continue
            await self._step(event)

    async def _step(self, e: StoredAppEvent) -> None:
        turn = self._store.app_event_turn
        if turn is None:
            await self._prove(e)
            return
        async with turn(e) as (claimed, stored):
            if not claimed:  # another node proves this portal's events now: look again later
                e.next_at = self._clock() + self._delay(e.attempts + 1)
                return
            if stored is None:  # another node proved it (and applied or refused it)
                log.info("bitrix24.app_event.proven_elsewhere", event_name=e.event, domain=e.domain)
                self.events = [x for x in self.events if x.id != e.id]
                return
            # What another node's attempt learned (a spent refresh token's successor, its attempts).
            e.auth, e.stage, e.attempts, e.last_error = stored.auth, stored.stage, stored.attempts, stored.last_error
            await self._prove(e)

    async def _prove(self, e: StoredAppEvent) -> None:
        self._host.hold_pusher(e.member_id, True)  # the pusher yields the portal's budget
        try:
            outcome = await self._prover.attempt(e)
        except Exception as exc:  # a bug or the store: keep the event, try later
            log.error("bitrix24.app_event.error", event_name=e.event, domain=e.domain, error=repr(exc))
            outcome = Outcome(Verdict.RETRY, type(exc).__name__)
        finally:
            self._host.hold_pusher(e.member_id, False)
        now = self._clock()
        if outcome.verdict in (Verdict.RETRY, Verdict.WAIT):
            e.attempts += outcome.verdict is Verdict.RETRY
            e.last_error = outcome.reason
            e.next_at = now + self._delay(e.attempts) if outcome.verdict is Verdict.RETRY else math.inf
            await self._store.update_app_event(_finite(e))
            if outcome.verdict is Verdict.RETRY:
                log.info("bitrix24.app_event.retry", event_name=e.event, domain=e.domain, reason=outcome.reason,
                         attempt=e.attempts, retry_in=round(e.next_at - now, 1))
            return
        if outcome.verdict is Verdict.APPLY:
            if outcome.record is not None:
                await self._host.installed(outcome.record, e.event)
                if outcome.version:
                    await self._store.set_app_version(e.member_id, outcome.version)
            else:
                await self._host.uninstalled(e.member_id)
            log.info("bitrix24.app_event", event_name=e.event, domain=e.domain, member_id=e.member_id,
                     outcome="applied", proof=outcome.reason or "refresh token spent, user.admin true",
                     after_seconds=round(now - e.received_at, 1))
        else:
            log.warning("bitrix24.app_event.refused", event_name=e.event, domain=e.domain, member_id=e.member_id,
                        reason=outcome.reason)
        self.outcomes[outcome.verdict.value] = self.outcomes.get(outcome.verdict.value, 0) + 1
        metrics.app_events_done(outcome.verdict.value)
        await self._store.delete_app_events([e.id])
        self.events = [x for x in self.events if x.id != e.id]


def _finite(e: StoredAppEvent) -> StoredAppEvent:
    """``next_at`` as stored: a waiting event (inf in memory) is tried again at the next start."""
    if e.next_at != math.inf:
        return e
    return StoredAppEvent(**{**e.__dict__, "next_at": e.received_at})


__all__ = ["AppEvent", "EVENTS", "EventQueue", "Outcome", "PortalHost", "Prover", "Verdict", "credentials",
           "retry_delay"]
