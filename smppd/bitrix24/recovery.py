"""Learning an application_token from a post after a missed ONAPPUPDATE (issue 18 §2).

Bitrix24 posts ONAPPUPDATE once; if it is lost (the shim down, a network cut), every later
HANDLER post carries the new ``application_token`` and is refused, and nobody reads the
403. A post's own fields cannot prove the new token: anyone who saw one post has an
author's access token and can write any ``application_token``. So the token is learned
only when all of these hold, and then once:

1. the post's ``auth[access_token]`` answers ``app.info`` on the portal's configured
   endpoint with our ``client_id``: the post comes from a user of our app on that portal;
2. the portal is proven again with what only we hold: our stored tokens (refreshed by the
   shared client if expired, which spends our refresh token at the OAuth server) answer
   ``user.admin`` true and ``app.info`` with our ``client_id``, ``INSTALLED`` true;
3. that ``app.info`` shows a ``VERSION`` other than the one the last proven event showed:
   an update really happened that we did not apply. The new version is recorded with the
   token, so a second unknown token for the same version is refused ("once").

What stays open: between a missed update and the first genuine post, an attacker holding a
captured post could be first and teach their token; genuine posts would then be refused
until the next update event. The warning log line names every token learned this way.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import Any, Callable, Mapping, Protocol

import structlog

from ..model import PortalRecord
from .rest import RestClient, RestError

log = structlog.get_logger(__name__)

#: A failed recovery is not tried again for the same portal sooner (a burst of posts).
RETRY_AFTER = 2.0
#: Our own ``app.info`` is asked at most this often per portal: while no update was missed,
#: a stream of forged posts costs the portal one request per this many seconds.
VERSION_TTL = 30.0
#: How long a post waits for the recovery before it is answered (it goes on in the background).
WAIT = 10.0


class RecoveryHost(Protocol):
    def portals(self) -> Mapping[str, PortalRecord]: ...

    def rest_client(self, member_id: str) -> RestClient | None: ...

    async def app_version(self, member_id: str) -> str | None: ...

    async def learned(self, member_id: str, application_token: str, version: str) -> None:
        """Store the new token and version, serve with it, register the providers again
        (on the portal's current tokens: the proof may have rotated them)."""
        ...


class TokenRecovery:
    """``await recovery(member_id, application_token, access_token)``: True when the token was
    learned (now or by a recovery already running); the post can then be accepted."""

    def __init__(self, host: RecoveryHost, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._host = host
        self._clock = clock
        self._running: dict[str, asyncio.Task[bool]] = {}
        self._failed_at: dict[str, float] = {}
        self._ours: dict[str, tuple[float, Any]] = {}  # member_id -> (when, our app.info answer)
        self.learned = 0

    async def __call__(self, member_id: str, application_token: str, access_token: str) -> bool:
        task = self._running.get(member_id)
        if task is None:
            failed = self._failed_at.get(member_id)
            if failed is not None and self._clock() - failed < RETRY_AFTER:
                return False
            task = asyncio.create_task(self._recover(member_id, application_token, access_token))
            self._running[member_id] = task
            task.add_done_callback(lambda t: self._done(member_id, t))
        try:
            learned = await asyncio.wait_for(asyncio.shield(task), WAIT)
        except asyncio.TimeoutError:
            return False
        portal = self._host.portals().get(member_id)
        return learned and portal is not None and hmac.compare_digest(application_token.encode(),
                                                                     portal.application_token.encode())

    def _done(self, member_id: str, task: asyncio.Task[bool]) -> None:
        self._running.pop(member_id, None)
        if task.cancelled() or task.exception() is not None or not task.result():
            self._failed_at[member_id] = self._clock()

    async def _recover(self, member_id: str, application_token: str, access_token: str) -> bool:
        portal = self._host.portals().get(member_id)
        client = self._host.rest_client(member_id)
        if portal is None or client is None or not access_token:
            return False
        try:
            refusal, version = await self._prove(portal, client, access_token)
        except RestError as exc:
            refusal, version = f"REST error {exc.code}", ""
        except Exception as exc:  # the transport: refused this time, tried again after RETRY_AFTER
            refusal, version = type(exc).__name__, ""
        if refusal:
            log.info("bitrix24.token_recovery.refused", domain=portal.domain, member_id=member_id, reason=refusal)
            return False
        await self._host.learned(member_id, application_token, version)
        self.learned += 1
        log.warning("bitrix24.token_recovery.learned", domain=portal.domain, member_id=member_id, version=version,
                    hint="a post taught a new application_token after a missed ONAPPUPDATE: the app's version"
                         " moved and our own tokens re-proved the portal")
        return True

    async def _prove(self, portal: PortalRecord, client: RestClient, access_token: str) -> tuple[str, str]:
        """('', version) when the three conditions of the module docstring hold, else (why not, '').

        The cheapest refusal first: while the version has not moved (every forged post when
        no update was missed), our cached ``app.info`` answers and the post costs nothing."""
        recorded = await self._host.app_version(portal.member_id)
        if recorded is None:
            return "no proven app version recorded for this portal: wait for the next update event", ""
        when, ours = self._ours.get(portal.member_id, (-VERSION_TTL, None))
        if self._clock() - when >= VERSION_TTL:
            ours = await client.call("app.info")
            self._ours[portal.member_id] = (self._clock(), ours)
        if not _is_ours(ours, portal.client_id) or ours.get("INSTALLED") is False:
            return "app.info with our own token does not show our app installed", ""
        version = str(ours.get("VERSION", ""))
        if version == recorded:
            return "the app's version did not change: no update was missed", ""
        theirs = await client.call_as(access_token, "app.info")
        if not _is_ours(theirs, portal.client_id):
            return "the post's access token is not one of our app on this portal", ""
        if await client.call("user.admin") is not True:
            return "our stored token is no longer an administrator's", ""
        return "", version


def _is_ours(info: Any, client_id: str) -> bool:
    code = info.get("CODE") if isinstance(info, Mapping) else None
    return isinstance(code, str) and hmac.compare_digest(code.encode(), client_id.encode())


__all__ = ["RecoveryHost", "TokenRecovery"]
