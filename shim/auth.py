"""The one door check of the shim: every path (``/bitrix24/{code}``, ``/bitrix24-app``,
``/dlr/{route}``) asks ``Doors`` and nothing else.

Why one object: the URL keys, the Bitrix24 address list and the ``ts`` window are
read from config in one place and replaced in one assignment on SIGHUP, so no door can
keep an old key after a rotation (issue 18 §5: before, only ``/bitrix24/`` rotated).
The keys are compared with ``hmac.compare_digest`` on bytes, so the time a refusal
takes does not tell how much of a guessed key was right.

The policy part (``Doors.check_*``, ``ts_fresh``, ``peer_address``) is sans-I/O: it takes
what the request said and ``now`` and returns a ``Refusal`` or None; the handlers turn a
refusal into an answer with ``error_response``, the one JSON error shape of the shim
(``{"error": <word>, "field": <form or query field>, "message": ...}``).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web

from smppd.config import Config, HttpRouteConfig, IPNetwork
from smppd.ops.logs import LinePacer

__all__ = ["DoorConfig", "Doors", "Refusal", "error_response", "peer_address", "ts_fresh"]

PREVIOUS_KEY_LOG_EVERY = 600.0  # seconds between two door.previous_key_used lines
log = structlog.get_logger(__name__)
_JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8"}
_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


@dataclass(frozen=True)
class Refusal:
    """Why a door said no: the HTTP status, the error word, the field it is about."""

    status: int
    error: str
    field: str | None = None
    message: str | None = None

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.error}
        if self.field is not None:
            out["field"] = self.field
        if self.message is not None:
            out["message"] = self.message
        return out


UNAUTHORIZED = Refusal(401, "unauthorized", "key")
NOT_ALLOWED = Refusal(403, "address_not_allowed", None, "this address is not on [shim] allow_from")


def error_response(refusal: Refusal) -> web.Response:
    """The JSON error every door answers with."""
    return web.Response(body=json.dumps(refusal.body()).encode(), status=refusal.status,
                        headers=_JSON_HEADERS)


@dataclass(frozen=True)
class DoorConfig:
    """What the doors check, as one value: a SIGHUP swaps the whole of it at once."""

    handler_key: str = field(repr=False)
    route_keys: Mapping[str, str] = field(default_factory=dict, repr=False)  # /dlr/{route} -> its callback_key
    keyless_routes: frozenset[str] = frozenset()  # HTTP routes without a callback_key: their /dlr/ is closed
    allow_from: tuple[IPNetwork, ...] = ()  # Bitrix24's queue servers; () = any address
    ts_window: float | None = None  # seconds either side of now; None or 0 = not checked
    previous_key: str = field(default="", repr=False)  # a rotation's old handler key, accepted until removed

    @classmethod
    def from_config(cls, cfg: Config, route_keys: Mapping[str, str]) -> "DoorConfig":
        shim = cfg.shim
        keyless = frozenset(name for name, r in cfg.routes.items()
                            if isinstance(r, HttpRouteConfig) and name not in route_keys)
        return cls(handler_key=shim.handler_key, route_keys=dict(route_keys), keyless_routes=keyless,
                   allow_from=tuple(shim.allow_from), ts_window=shim.ts_window or None,
                   previous_key=shim.handler_key_previous)


def _key_matches(given: str | None, expected: bytes) -> bool:
    # compare_digest on str refuses non-ASCII; bytes it compares in constant time.
    return given is not None and hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected)


def peer_address(remote: str | None, headers: Mapping[str, str]) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address the post came from.

    Behind the reference nginx (``proxy_set_header X-Forwarded-For
    $proxy_add_x_forwarded_for``, deploy/nginx/smppd.conf) the shim's peer is
    loopback and the client is the *last* ``X-Forwarded-For`` entry, the one
    nginx appended itself; the entries before it are whatever the client sent,
    so they are never read.  The header is believed only from a loopback peer,
    so a client talking to the shim directly cannot name itself.
    """
    try:
        peer = ipaddress.ip_address(remote) if remote else None
    except ValueError:
        return None
    if peer is not None and any(peer in net for net in _LOOPBACK):
        forwarded = headers.get("X-Forwarded-For")
        if forwarded:
            try:
                return ipaddress.ip_address(forwarded.rsplit(",", 1)[-1].strip())
            except ValueError:
                return None
    return peer


def ts_fresh(ts: int | None, now: float, window: float | None) -> Refusal | None:
    """A HANDLER post's ``ts`` (Unix seconds, always sent: bitrix24.md §4) against the window.

    Bitrix24 sets ``ts = time()`` when its queue agent hands the message to our
    HANDLER (messageservice ``Sender\\Sms\\Rest::sendMessage``), not when the message
    was created: a message its daily limit deferred to the next day still posts a
    fresh ``ts``, and the REST queue delivers within seconds and never retries.  So
    a ``ts`` a day away is a replay or a forgery, never a late genuine post.
    A refused genuine post is lost for good (Bitrix24 never retries), so a ``ts``
    in milliseconds is read as such rather than refused.
    """
    if not window:
        return None
    if ts is None:
        return Refusal(400, "bad_request", "ts", "missing")
    if ts > 100_000_000_000:  # milliseconds (year 5138 in seconds): read, not refused, should the core ever switch
        ts //= 1000
    if abs(ts - now) > window:
        return Refusal(403, "stale", "ts", f"more than {int(window)} s from now")
    return None


class Doors:
    """The door check shared by every handler of one shim."""

    def __init__(self, config: DoorConfig) -> None:
        self.previous_key_posts = 0  # requests let in by handler_key_previous, since start
        self._previous_log = LinePacer(PREVIOUS_KEY_LOG_EVERY)
        self.rotate(config)

    def rotate(self, config: DoorConfig) -> None:
        """SIGHUP: new keys, addresses and window apply to every door's next request together.

        A rotation without losing posts: the old key goes to ``handler_key_previous``
        (still accepted on the Bitrix24 doors, never on ``/dlr/``) until ``smppd
        register --update`` has given Bitrix24 the new HANDLER URL, then is removed."""
        if not config.handler_key:
            raise ValueError("handler_key must not be empty")
        self._handler_key = config.handler_key.encode()
        self._previous_key = config.previous_key.encode() if config.previous_key else None
        self._route_keys = {route: key.encode() for route, key in config.route_keys.items() if key}
        self._nobody = secrets.token_bytes(32)
        self.config = config

    @property
    def ts_window(self) -> float | None:
        return self.config.ts_window

    def _allowed(self, request: web.BaseRequest) -> bool:
        networks = self.config.allow_from
        if not networks:
            return True
        address = peer_address(request.remote, request.headers)
        return address is not None and any(address in net for net in networks)

    def check_bitrix24(self, request: web.BaseRequest) -> Refusal | None:
        """``/bitrix24/{code}`` and ``/bitrix24-app``: Bitrix24's address list, then the handler key.

        The address is checked first so that nobody outside the list learns
        anything, not even whether a key is right.
        """
        if not self._allowed(request):
            return NOT_ALLOWED
        given = request.query.get("key")
        if _key_matches(given, self._handler_key):
            return None
        if self._previous_key is not None and _key_matches(given, self._previous_key):
            self._previous_used()
            return None
        return UNAUTHORIZED

    def _previous_used(self) -> None:
        """A post with the rotated-out key: kept (Bitrix24 never resends it), and the
        admin told, a line per ten minutes, that Bitrix24 still has the old URL."""
        self.previous_key_posts += 1
        if self._previous_log.note(None, time.monotonic()) is not None:
            log.warning("door.previous_key_used", posts=self.previous_key_posts,
                        hint="Bitrix24 still calls with [shim] handler_key_previous: run `smppd register "
                             "--update` and update the app's handler path, then remove handler_key_previous")

    def check_route(self, request: web.BaseRequest, route: str) -> Refusal | None:
        """``/dlr/{route}``: the route's own ``callback_key``, and nothing else.

        Never the handler key: every captured HANDLER post carries it in its URL,
        and SMSC.ru's callbacks are not signed, so with it anyone could mark any
        message delivered (issue 18).  A route without a ``callback_key`` has no
        callback door at all (its statuses come by polling), and a route that
        does not exist is refused like a wrong key, so route names cannot be
        probed.  Providers call from their own addresses, so ``allow_from``
        (Bitrix24's) does not apply here.
        """
        expected = self._route_keys.get(route)
        # a closed or unknown route is compared too (against a key nobody has), so it takes as long
        if not _key_matches(request.query.get("key"), expected or self._nobody) or expected is None:
            return UNAUTHORIZED
        return None
